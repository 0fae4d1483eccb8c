"""Training, resume, evaluation and the demo on tiny synthetic data."""

import json
import os

import pytest
import torch

from partdist.data import market1501
from partdist.eval.evaluate import evaluate_model, format_table
from partdist.train import TrainConfig, Trainer, build_model, make_batches


@pytest.fixture(scope="module")
def tiny_set(tiny_reid_root):
    return market1501(tiny_reid_root)


def _cfg(tmp_path, **kw):
    base = dict(model="aligned", backbone="compact", height=64, width=32, p=2, k=2, epochs=1, iters_per_epoch=2,
                lr=1e-3, warmup_epochs=0, out=str(tmp_path), progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["aligned", "pcb", "pcb_rpp", "icnn"])
def test_two_iteration_training_smoke(tiny_set, tmp_path, model):
    cfg = _cfg(tmp_path, model=model, last_stride=1)
    num_classes = len({p for _, p, _ in tiny_set.train})
    tr = Trainer(cfg, num_classes, make_batches(tiny_set.train, cfg), log=lambda *a: None)
    before = [p.detach().clone() for p in tr.model.parameters()]
    hist = tr.fit()
    assert len(hist) == 1 and hist[0]["iters"] == 2 and torch.isfinite(torch.tensor(hist[0]["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    assert os.path.exists(tr.ckpt_path)
    with open(tr.metrics_path) as f:
        assert json.loads(f.readline())["epoch"] == 1


@pytest.mark.slow
def test_icnn_outputs_and_cli_eval(tiny_set, tmp_path, capsys):
    from partdist.cli import main

    cfg = _cfg(tmp_path, model="icnn", last_stride=1)
    num_classes = len({p for _, p, _ in tiny_set.train})
    tr = Trainer(cfg, num_classes, make_batches(tiny_set.train, cfg), log=lambda *a: None)
    images, pids = next(iter(tr.batches(0)))
    out = tr.model.train()(images)
    n, d = images.shape[0], tr.model.base.out_channels
    assert out["global"].shape == (n, d) and out["local"].shape == (n, 6, 256)
    assert len(out["logits"]) == 6 and out["global_logits"].shape == (n, num_classes)
    _, parts = tr.loss(images, pids)
    assert set(parts) == {"id", "id_global", "global"}
    tr.fit()
    # the checkpoint evaluates with the eval code (global, DMLI on the parts, fused, re-ranked)
    data_root = os.path.dirname(os.path.dirname(tiny_set.train[0][0]))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", tr.ckpt_path, "--data", data_root]) == 0
    table = capsys.readouterr().out
    assert "| icnn compact epoch 1 | global + DMLI |" in table


@pytest.mark.slow
def test_make_batches_rank_shares_are_whole_identities(tiny_set, tmp_path):
    """Under DDP each rank loads its share of the global P x K batch: whole identities, and the
    shares in rank order are exactly the single-process batch (same images, same augmentation)."""
    cfg = _cfg(tmp_path, p=4, k=2)
    single = list(make_batches(tiny_set.train, cfg, rank=0, world_size=1)(1))
    shares = [list(make_batches(tiny_set.train, cfg, rank=r, world_size=2)(1)) for r in range(2)]
    assert len(single) == len(shares[0]) == len(shares[1]) == 2
    for b, (images, pids) in enumerate(single):
        (i0, p0), (i1, p1) = shares[0][b], shares[1][b]
        assert torch.equal(torch.cat([i0, i1]), images) and torch.equal(torch.cat([p0, p1]), pids)
        assert len(set(p0.tolist())) == 2 and not set(p0.tolist()) & set(p1.tolist())
    with pytest.raises(ValueError, match="divide evenly among the 3 ranks"):
        make_batches(tiny_set.train, cfg, rank=0, world_size=3)


@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch(tiny_set, tmp_path):
    cfg = _cfg(tmp_path)
    num_classes = len({p for _, p, _ in tiny_set.train})
    tr = Trainer(cfg, num_classes, make_batches(tiny_set.train, cfg), log=lambda *a: None)
    images, pids = next(iter(tr.batches(0)))
    losses = []
    for _ in range(8):
        loss, _ = tr.loss(images, pids)
        tr.opt.zero_grad()
        loss.backward()
        tr.opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_resume_continues_exactly(tiny_set, tmp_path):
    num_classes = len({p for _, p, _ in tiny_set.train})
    quiet = lambda *a: None  # noqa: E731
    cfg_a = _cfg(tmp_path / "a", epochs=2)
    a = Trainer(cfg_a, num_classes, make_batches(tiny_set.train, cfg_a), log=quiet)
    a.fit()

    cfg_b1 = _cfg(tmp_path / "b", epochs=1)
    Trainer(cfg_b1, num_classes, make_batches(tiny_set.train, cfg_b1), log=quiet).fit()
    cfg_b2 = _cfg(tmp_path / "b", epochs=2)
    b = Trainer(cfg_b2, num_classes, make_batches(tiny_set.train, cfg_b2), log=quiet)
    assert b.resume() and b.epoch == 1
    b.fit()
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="model: expected one of"):
        _cfg(tmp_path, model="resnet").validate()
    with pytest.raises(ValueError, match="k: the triplet losses need at least 2"):
        _cfg(tmp_path, k=1).validate()


@pytest.mark.slow
def test_evaluation_table_trained_beats_nothing(tiny_set):
    torch.manual_seed(0)
    model = build_model(_cfg("/tmp/unused"), num_classes=4)
    res, dists = evaluate_model(model, tiny_set.query, tiny_set.gallery, 64, 32)
    assert set(res) >= {"global", "local (DMLI)", "global + DMLI", "local (unaligned)", "global + DMLI, re-ranked"}
    for r in res.values():
        assert 0 <= r["mAP"] <= 1 and 0 <= r["rank1"] <= 1
    assert dists["global"].shape == (len(tiny_set.query), len(tiny_set.gallery))
    assert "| untrained | global |" in format_table({"untrained": res})


@pytest.mark.slow
def test_demo_quick_writes_results_and_pictures(tmp_path):
    from partdist.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress", "--ids", "12"]) == 0
    with open(out / "results.json") as f:
        res = json.load(f)
    assert {"untrained", "trained"} <= set(res)
    for name in ("rank_list.png", "dmli_alignment.png", "training_curves.png"):
        assert (out / "pictures" / name).stat().st_size > 0


def test_new_run_refuses_an_existing_one_unless_overwrite(tiny_set, tmp_path):
    num_classes = len({p for _, p, _ in tiny_set.train})
    quiet = lambda *a: None  # noqa: E731
    cfg = _cfg(tmp_path, epochs=1)
    Trainer(cfg, num_classes, make_batches(tiny_set.train, cfg), log=quiet).fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(cfg, num_classes, make_batches(tiny_set.train, cfg), log=quiet).fit()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    Trainer(cfg, num_classes, make_batches(tiny_set.train, cfg), log=quiet, overwrite=True).fit()
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1]  # replaced, not appended to
