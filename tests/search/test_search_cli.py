"""`partdist index` / `partdist search`: a folder of images + a checkpoint -> index -> results,
equal to the API; under torchrun (2 gloo processes) equal to one process; clear errors."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from partdist.cli import main
from partdist.search import GalleryIndex

TIMEOUT_S = 180


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from partdist.data import SyntheticReID, market1501
    from partdist.train import TrainConfig, build_model

    root = tmp_path_factory.mktemp("cli")
    SyntheticReID(str(root / "data"), num_ids=6, num_cams=2, imgs_per_id_cam=2, height=64, width=32,
                  seed=5).generate()
    splits = market1501(str(root / "data"))
    cfg = TrainConfig(model="aligned", backbone="compact", height=64, width=32, out=str(root / "train"))
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    ckpt = root / "ckpt.pt"
    torch.save({"config": dataclasses.asdict(cfg), "num_classes": 3, "model": model.state_dict()}, ckpt)
    gallery = os.path.dirname(splits.gallery[0][0])
    query = os.path.dirname(splits.query[0][0])
    idx_path = root / "gallery.idx"
    assert main(["index", "--images", gallery, "--checkpoint", str(ckpt), "--out", str(idx_path),
                 "--dtype", "float32", "--no-progress"]) == 0
    return {"root": root, "ckpt": str(ckpt), "gallery": gallery, "query": query, "index": str(idx_path),
            "splits": splits, "model": model, "cfg": cfg}


def test_index_holds_the_features_of_the_eval_code(setup):
    from partdist.eval.evaluate import features_for

    idx = GalleryIndex.load(setup["index"])
    f = features_for(setup["model"].eval(), setup["splits"].gallery, 64, 32)
    assert len(idx) == len(setup["splits"].gallery) and idx.paths == [p for p, _, _ in setup["splits"].gallery]
    torch.testing.assert_close(idx.global_features, f["global"])
    torch.testing.assert_close(idx.local_features, f["local"])
    assert torch.equal(idx.pids, f["pids"]) and idx.meta["checkpoint"] == setup["ckpt"]


def test_search_cli_equals_api(setup, capsys):
    from partdist.eval.evaluate import features_for

    out = setup["root"] / "res.json"
    assert main(["search", "--index", setup["index"], "--queries", setup["query"], "--k", "5", "--mode", "exact",
                 "--out", str(out), "--evaluate", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "searched" in printed
    res = json.loads(out.read_text())
    q = features_for(setup["model"].eval(), setup["splits"].query, 64, 32)
    api = GalleryIndex.load(setup["index"]).search(q["global"], q["local"], 5)
    assert [r["ids"] for r in res["results"]] == api.ids.tolist()
    paths = [p for p, _, _ in setup["splits"].gallery]
    assert res["results"][0]["paths"] == [paths[i] for i in api.ids[0].tolist()]
    assert 0 <= res["metrics"]["mAP"] <= 1


@pytest.mark.slow  # multi-process
def test_search_under_torchrun_equals_one_process(setup):
    """`torchrun --nproc_per_node 2 -m partdist.cli search` (gloo): each rank holds half the
    index; the JSON equals the single-process run's."""
    one, two = setup["root"] / "one.json", setup["root"] / "two.json"
    common = ["search", "--index", setup["index"], "--query-index", setup["index"], "--k", "3", "--mode",
              "two-stage", "--shortlist", "4", "--no-progress"]
    assert main(common + ["--out", str(one)]) == 0
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node", "2",
           "-m", "--", "partdist.cli"] + common + ["--out", str(two)]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("searched") == 1  # rank 0 prints
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert_same_results(a["results"], b["results"], gemm_tolerance(GalleryIndex.load(setup["index"])))


def gemm_tolerance(idx):
    """How far two runs' distances of one pair may lie apart when their GEMMs block or thread
    differently (another shard shape, another thread count, another BLAS).

    A distance is computed in the GEMM form ``sqrt(|a|^2 + |b|^2 - 2 a.b)``; a float32 dot product
    of length D is off by at most ``D * eps`` times the sum of its terms' magnitudes, so ``d^2`` is
    off by at most ``e = 4 D eps M`` (``M``: the largest squared norm) in each run and
    ``|d1 - d2| <= sqrt(|d1^2 - d2^2|) <= sqrt(2 e)``. A local (DMLI) distance sums at most
    ``H + H - 1`` stripe cells, each ``tanh(d / 2)``-normalized (slope <= 1/2)."""
    eps = torch.finfo(torch.float32).eps
    g = torch.nn.functional.normalize(idx.global_features.float(), dim=1) if idx.normalize else idx.global_features
    loc = idx.local_features.float()
    tol_g = math.sqrt(2 * 4 * g.shape[1] * eps * float(g.pow(2).sum(1).max()))
    tol_s = math.sqrt(2 * 4 * loc.shape[2] * eps * float(loc.pow(2).sum(2).max()))
    return tol_g + idx.lam * (2 * loc.shape[1] - 1) * 0.5 * tol_s


def assert_same_results(ra, rb, tol):
    """The same neighbours at distances within ``tol`` of each other: ids must agree at every rank
    whose distance is more than ``2 tol`` from its neighbours' (near-ties may swap; a near-tie at the
    k-th place may bring in another item)."""
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert x["query"] == y["query"] and len(x["ids"]) == len(y["ids"])
        da, db = torch.tensor(x["distances"], dtype=torch.float64), torch.tensor(y["distances"], dtype=torch.float64)
        torch.testing.assert_close(da, db, rtol=0, atol=tol + 1e-6)  # + the JSON's 6 decimals
        for i, (ia, ib) in enumerate(zip(x["ids"], y["ids"])):
            near = [j for j in (i - 1, i + 1) if 0 <= j < len(da) and abs(float(da[j] - da[i])) <= 2 * tol + 2e-6]
            if not near and i < len(da) - 1:
                assert ia == ib, (x["query"], i, x["ids"], y["ids"], x["distances"], y["distances"])


@pytest.mark.slow  # multi-process
def test_index_under_torchrun_equals_one_process(setup, tmp_path):
    """`torchrun --nproc_per_node 2 -m partdist.cli index` (gloo): rank r writes OUT.part<r>-of-2
    with a contiguous half of the images; the two shards together are the single-process index
    (ids, labels, paths, features), and a search over the shard files equals one over that index."""
    out = tmp_path / "two.idx"
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node", "2",
           "-m", "--", "partdist.cli", "index", "--images", setup["gallery"], "--checkpoint", setup["ckpt"], "--out",
           str(out), "--dtype", "float32", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("indexed") == 1  # rank 0 prints
    assert not out.exists()
    one = GalleryIndex.load(setup["index"])
    parts = [GalleryIndex.load(f"{out}.part{r}-of-2") for r in range(2)]
    n = len(one)
    assert [len(p) for p in parts] == [n // 2, n - n // 2]
    assert [p.meta["shard"] for p in parts] == ["0/2", "1/2"] and parts[0].meta["gallery_size"] == n
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    assert torch.equal(cat("ids"), one.ids) and torch.equal(cat("pids"), one.pids)
    assert torch.equal(cat("camids"), one.camids) and parts[0].paths + parts[1].paths == one.paths
    # per-image features; a batch of other images may round differently in the convolutions
    torch.testing.assert_close(cat("global_features"), one.global_features)
    torch.testing.assert_close(cat("local_features"), one.local_features)
    a, b = tmp_path / "one.json", tmp_path / "two.json"
    common = ["search", "--query-index", setup["index"], "--k", "3", "--mode", "exact", "--no-progress"]
    assert main(common + ["--index", setup["index"], "--out", str(a)]) == 0
    assert main(common + ["--index", str(out), "--out", str(b)]) == 0
    ra, rb = json.loads(a.read_text())["results"], json.loads(b.read_text())["results"]
    assert [x["ids"] for x in ra] == [x["ids"] for x in rb] and [x["paths"] for x in ra] == [x["paths"] for x in rb]


def test_cli_errors_name_the_flag(setup, capsys, tmp_path):
    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "--overwrite" in err(["index", "--images", setup["gallery"], "--checkpoint", setup["ckpt"], "--out",
                                 setup["index"], "--no-progress"])
    assert "--images" in err(["index", "--images", str(tmp_path / "none"), "--checkpoint", setup["ckpt"], "--out",
                              str(tmp_path / "x.idx")])
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    assert "--checkpoint" in err(["index", "--images", setup["gallery"], "--checkpoint", str(bad_ckpt), "--out",
                                  str(tmp_path / "x.idx")])
    assert "no such index file" in err(["search", "--index", str(tmp_path / "none.idx"), "--query-index",
                                        setup["index"]])
    corrupt = tmp_path / "corrupt.idx"
    corrupt.write_bytes(open(setup["index"], "rb").read()[:300])
    assert "corrupt" in err(["search", "--index", str(corrupt), "--query-index", setup["index"]])
    assert "--k must be >= 1" in err(["search", "--index", setup["index"], "--query-index", setup["index"],
                                      "--k", "0"])
    for flag, value in (("--pooled-weight", "-1"), ("--target-recall", "2")):  # checked by SearchParams
        msg = err(["search", "--index", setup["index"], "--query-index", setup["index"], flag, value])
        assert msg.startswith(f"partdist search: error: {flag} must be") and msg.count("\n") == 1
    g = GalleryIndex()
    g.add(torch.randn(3, 5))
    g.save(tmp_path / "small.idx")
    msg = err(["search", "--index", setup["index"], "--query-index", str(tmp_path / "small.idx")])
    assert "D = 5" in msg and "same model" in msg
    idx = GalleryIndex.load(setup["index"])
    g = GalleryIndex()
    g.add(idx.global_features[:2])
    g.save(tmp_path / "noloc.idx")
    msg = err(["search", "--index", setup["index"], "--query-index", str(tmp_path / "noloc.idx")])
    assert "no local (stripe) features" in msg and "--lam 0" in msg
    assert main(["search", "--index", setup["index"], "--query-index", str(tmp_path / "noloc.idx"), "--lam", "0",
                 "--k", "2"]) == 0


def test_cli_pooled_shortlist_flags(setup, tmp_path):
    """--pooled-weight with --pooling halves and a shortlist covering the index: the exact
    search's results. FAISS flags reach the search (a bad parameter is a one-line error)."""
    a, b = tmp_path / "exact.json", tmp_path / "halves.json"
    common = ["search", "--index", setup["index"], "--query-index", setup["index"], "--k", "3", "--no-progress"]
    assert main(common + ["--mode", "exact", "--out", str(a)]) == 0
    n = len(GalleryIndex.load(setup["index"]))
    assert main(common + ["--mode", "two-stage", "--shortlist", str(n), "--pooled-weight", "4", "--pooling",
                          "halves", "--out", str(b)]) == 0
    ra, rb = json.loads(a.read_text())["results"], json.loads(b.read_text())["results"]
    assert [x["ids"] for x in ra] == [x["ids"] for x in rb]
    with pytest.raises(SystemExit):
        main(common + ["--pooling", "thirds"])
    pytest.importorskip("faiss")
    assert main(common + ["--mode", "two-stage", "--backend", "faiss", "--faiss-factory", "Flat", "--faiss-params",
                          "nprobe=4"]) == 2


def test_index_tunes_and_search_reports_the_tuning(setup, tmp_path, capsys):
    """`partdist index` saves the tuning; `partdist search` (two-stage by default) uses it without
    measuring again and reports the setting, its estimated recall and the sample in print and JSON;
    a fixed --shortlist is kept; --no-tune leaves it to the first search."""
    idx = GalleryIndex.load(setup["index"])
    assert idx.tuning is not None and idx.tuning.k == min(10, len(idx) - 1)
    out = tmp_path / "r.json"
    argv = ["search", "--index", setup["index"], "--query-index", setup["index"], "--k", "3", "--no-progress"]
    assert main(argv + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tuned two-stage search" in printed and "pseudo-queries" in printed and "not saved" not in printed
    st = json.loads(out.read_text())["settings"]
    assert st["tuning_sample"] == len(idx) and 0 < st["recall_estimate"] <= 1
    assert main(argv + ["--shortlist", "4", "--out", str(tmp_path / "s.json"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["settings"]["shortlist"] == 4
    capsys.readouterr()
    fresh = tmp_path / "fresh.idx"
    assert main(["index", "--images", setup["gallery"], "--checkpoint", setup["ckpt"], "--out", str(fresh),
                 "--no-tune", "--no-progress"]) == 0
    assert GalleryIndex.load(fresh).tuning is None
    assert main(["search", "--index", str(fresh), "--query-index", setup["index"], "--k", "3", "--no-progress"]) == 0
    assert "tuned for this search" in capsys.readouterr().out
