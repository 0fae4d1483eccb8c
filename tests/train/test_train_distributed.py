"""Data-parallel training (DDP) on the CPU: 2 gloo processes against the single-process run.

BatchNorm in training mode normalizes with per-rank batch statistics, so a DDP step differs
from the single-process step by design (SyncBatchNorm, which would fix that, is CUDA-only).
The equivalence tests therefore train with ``freeze_bn`` (BN uses its running statistics):
then a 2-rank step equals the single-process step on the same global batch up to float
summation order. They use SGD: Adam divides each gradient by its own running magnitude, so
float-noise-level gradients (~1e-9, which differ with the summation order) become steps of
order ``lr`` and 4 Adam steps already differ by ~1e-3 (the Adam run is compared on its
logged losses only). Without ``freeze_bn`` the test only checks that the ranks stay identical.
"""

import datetime
import os
import subprocess
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
from test_distributed import run_ranks  # shared helper (tests/ is on sys.path under pytest)

TIMEOUT_S = 180
VENV_BIN = os.path.dirname(sys.executable)


def _cfg(out, **kw):
    from partdist.train import TrainConfig

    base = dict(model="aligned", backbone="compact", height=64, width=32, p=4, k=2, epochs=2, iters_per_epoch=2,
                optimizer="sgd", lr=0.01, warmup_epochs=0, out=str(out), progress=False, seed=0, freeze_bn=True)
    base.update(kw)
    return TrainConfig(**base)


def _splits(root):
    from partdist.data import market1501

    return market1501(root)


def _fit(cfg, train_items, resume=False):
    from partdist.train import Trainer, make_batches

    num_classes = len({p for _, p, _ in train_items})
    tr = Trainer(cfg, num_classes, make_batches(train_items, cfg), log=lambda *a: None)
    if resume:
        tr.resume()
    tr.fit()
    return tr


def worker(rank, port, root, out_dir):
    err = os.path.join(out_dir, f"rank{rank}.err")
    try:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        train = _splits(root).train
        res = {}
        # 2 epochs straight (frozen BN: comparable with the single-process run)
        tr = _fit(_cfg(os.path.join(out_dir, "ddp")), train)
        res["straight"] = {k: v.clone() for k, v in tr.model.state_dict().items()}
        res["history"] = tr.history
        # 1 epoch, then a new Trainer resumes from the checkpoint (rank 0 wrote it) for the 2nd
        _fit(_cfg(os.path.join(out_dir, "resumed"), epochs=1), train)
        tr = _fit(_cfg(os.path.join(out_dir, "resumed")), train, resume=True)
        res["resumed"] = {k: v.clone() for k, v in tr.model.state_dict().items()}
        # plain BatchNorm: per-rank statistics; the ranks must still hold identical parameters
        tr = _fit(_cfg(os.path.join(out_dir, "bn"), epochs=1, freeze_bn=False), train)
        res["bn_params"] = [p.detach().clone() for p in tr.model.parameters()]
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
    except Exception:  # report to the parent instead of hanging it
        with open(err, "w") as f:
            f.write(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from partdist.data import SyntheticReID

    root = tmp_path_factory.mktemp("synthetic")
    SyntheticReID(str(root), num_ids=8, num_cams=2, imgs_per_id_cam=2, height=64, width=32, seed=3).generate()
    return str(root)


@pytest.fixture(scope="module")
def single(data_root, tmp_path_factory):
    return _fit(_cfg(tmp_path_factory.mktemp("single")), _splits(data_root).train)


@pytest.fixture(scope="module")
def ddp_results(data_root, tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    procs, hung = run_ranks(worker, (data_root, out_dir), timeout=TIMEOUT_S)
    errors = [f"rank {r}:\n" + open(os.path.join(out_dir, f"rank{r}.err")).read()
              for r in range(2) if os.path.exists(os.path.join(out_dir, f"rank{r}.err"))]
    assert not hung, f"DDP workers did not finish within {TIMEOUT_S} s\n" + "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), "\n".join(errors) or [p.exitcode for p in procs]
    return out_dir, [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(2)]


def _assert_close_state(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


@pytest.mark.slow
def test_two_ranks_equal_single_process(ddp_results, single):
    out_dir, (r0, r1) = ddp_results
    # both ranks hold the same weights, and they are the single-process weights
    _assert_close_state(r0["straight"], r1["straight"], rtol=0, atol=0)
    _assert_close_state(r0["straight"], single.model.state_dict(), rtol=1e-4, atol=1e-5)
    # training moved the weights (the comparison is not vacuous)
    from partdist.train import build_model

    torch.manual_seed(0)
    init = build_model(single.cfg, single.num_classes).state_dict()
    assert any(not torch.allclose(init[k].float(), v.float(), atol=1e-4) for k, v in r0["straight"].items())
    # the logged losses are those of the global batch (the first step's to float precision; the
    # local DMLI distances of this barely trained model are ~1e-4, so after a step the local term
    # reflects weight differences of ~1e-6 at the 1e-4 level)
    for a, b in zip(r0["history"], single.history):
        for key in ("loss", "id", "global", "local"):
            assert a[key] == pytest.approx(b[key], abs=5e-4), key
    # rank 0 alone wrote the checkpoint and one metrics line per epoch
    ckpt = torch.load(os.path.join(out_dir, "ddp", "checkpoint.pt"), weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["world_size"] == 2
    _assert_close_state(ckpt["model"], r0["straight"], rtol=0, atol=0)
    with open(os.path.join(out_dir, "ddp", "metrics.jsonl")) as f:
        assert len(f.readlines()) == 2


@pytest.mark.slow
def test_ddp_resume_is_exact(ddp_results):
    _, (r0, r1) = ddp_results
    for r in (r0, r1):
        _assert_close_state(r["resumed"], r0["straight"], rtol=0, atol=0)


@pytest.mark.slow
def test_ddp_with_batchnorm_statistics_keeps_ranks_identical(ddp_results):
    _, (r0, r1) = ddp_results
    for a, b in zip(r0["bn_params"], r1["bn_params"]):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_cli_under_torchrun(data_root, single, tmp_path):
    """`torchrun --nproc_per_node 2 -m partdist.cli train ...` on the CPU (gloo): the checkpoint
    equals the single-process run's weights."""
    out = tmp_path / "torchrun"
    cmd = [os.path.join(VENV_BIN, "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "partdist.cli",
           "train", "--data", data_root, "--backbone", "compact", "--height", "64", "--width", "32",
           "--p", "4", "--k", "2", "--epochs", "2", "--iters-per-epoch", "2", "--lr", "0.01",
           "--warmup-epochs", "0", "--seed", "0", "--freeze-bn", "--optimizer", "sgd", "--progress", "false", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("checkpoint:") == 1  # rank 0 only
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["config"]["distributed"]
    _assert_close_state(ckpt["model"], single.model.state_dict(), rtol=1e-4, atol=1e-5)
    with open(out / "metrics.jsonl") as f:
        assert len(f.readlines()) == 2


def test_distributed_flag_without_torchrun_environment_is_explained(data_root, tmp_path, monkeypatch):
    from partdist.cli import main

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="launch with `torchrun"):
        main(["train", "--data", data_root, "--distributed", "--out", str(tmp_path)])
