"""benchmarks/demo_seeds.py: the summary over seeds (mean, sample sd) and its checks, on
stand-in results (the demo itself runs in tests/test_cli.py)."""

import importlib.util
import json
import math
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ds():
    spec = importlib.util.spec_from_file_location("demo_seeds", os.path.join(ROOT, "benchmarks", "demo_seeds.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _results(r1, ap):
    row = {"rank1": r1, "mAP": ap, "rank5": 1.0, "mINP": 0.5}
    return {"trained": {name: dict(row) for name in ("global", "local (DMLI)", "global + DMLI",
                                                        "global + DMLI, re-ranked")}}


def _write(out, seed, res):
    os.makedirs(os.path.join(out, f"seed{seed}"))
    with open(os.path.join(out, f"seed{seed}", "results.json"), "w") as f:
        json.dump(res, f)


def test_summary_mean_and_sample_sd(ds, tmp_path, capsys):
    for s, (r1, ap) in enumerate([(0.80, 0.70), (0.82, 0.74), (0.84, 0.72)]):
        _write(tmp_path, s, _results(r1, ap))
    ds.main(["--out", str(tmp_path), "--summarize"])
    got = json.load(open(tmp_path / "summary.json"))
    g = got["percent"]["global + DMLI"]
    assert g["rank1"]["mean"] == pytest.approx(82.0)
    assert g["rank1"]["sd"] == pytest.approx(2.0)  # sample sd of 80, 82, 84
    assert g["mAP"]["mean"] == pytest.approx(72.0)
    assert g["mAP"]["sd"] == pytest.approx(2.0)
    assert "82.0 ± 2.0" in capsys.readouterr().out
    assert math.isnan(ds.mean_sd([1.0])[1])


def test_bad_arguments_name_the_flag(ds, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ds.main(["--out", str(tmp_path), "--seeds", "1"])
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ds.main(["--out", str(tmp_path), "--summarize"])
    assert "--summarize" in capsys.readouterr().err
    os.makedirs(tmp_path / "seed0")  # an unfinished run is not silently replaced
    with pytest.raises(SystemExit):
        ds.main(["--out", str(tmp_path), "--seeds", "0", "1", "--partdist", "false"])
    assert "--resume" in capsys.readouterr().err
