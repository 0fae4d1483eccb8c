"""Cross-rank mining: 2 processes, gloo backend on CPU, localhost only, bounded by a timeout.

Each rank holds a shard of one global batch (7 and 5 rows: unequal shards) and calls the
losses with ``all_ranks=True``. The loss on every rank must equal the single-process
loss on the concatenated batch, and the gradient of each rank's shard must equal the
corresponding rows of the single-process gradient.
"""

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import run_gloo  # tests/ is on sys.path under pytest

TIMEOUT_S = 120
LABELS = torch.tensor([3, 0, 0, 1, 3, 2, 0, 3, 1, 5, 3, 4])
SHARDS = [(0, 7), (7, 12)]


def global_batch():
    g = torch.Generator().manual_seed(0)
    gf = torch.randn(12, 16, generator=g, dtype=torch.float64)
    lf = torch.randn(12, 4, 8, generator=g, dtype=torch.float64)
    return gf, lf


def compute(gf, lf, labels, all_ranks):
    """Losses and gradients (w.r.t. the given features) of every loss under test."""
    from partdist.losses import AlignedTripletLoss, TripletLoss

    res = {}
    x = gf.clone().requires_grad_()
    loss = TripletLoss(0.3, all_ranks=all_ranks)(x, labels)
    loss.backward()
    res["triplet"] = (loss.detach(), x.grad)

    x = gf.clone().requires_grad_()
    loss = TripletLoss(None, normalize_feature=True, all_ranks=all_ranks)(x, labels)
    loss.backward()
    res["triplet_soft"] = (loss.detach(), x.grad)

    for own in (False, True):
        a, b = gf.clone().requires_grad_(), lf.clone().requires_grad_()
        r = AlignedTripletLoss(0.3, own_hard_samples=own, all_ranks=all_ranks)(a, labels, b)
        (r.global_loss + 2.0 * r.local_loss).backward()
        res[f"aligned_own{own}"] = (torch.stack([r.global_loss, r.local_loss]).detach(), a.grad, b.grad)
    return res


def rank_results(rank):
    """What one rank computes on its shard, with ``all_ranks=True``."""
    from partdist.distributed import all_gather_with_grad

    gf, lf = global_batch()
    s, e = SHARDS[rank]
    res = compute(gf[s:e], lf[s:e], LABELS[s:e], all_ranks=True)
    # the gather itself: the local shard gets exactly its slice of the gradient
    x = gf[s:e].clone().requires_grad_()
    w = torch.arange(12 * 16, dtype=torch.float64).reshape(12, 16)
    y = all_gather_with_grad(x)
    (y * w).sum().backward()
    res["gather"] = (y.detach(), x.grad)
    res["gather_labels"] = (all_gather_with_grad(LABELS[s:e]),)
    return res


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("dist"))
    return run_gloo(rank_results, (), out_dir, world=2, timeout=TIMEOUT_S, what="distributed workers")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["triplet", "triplet_soft", "aligned_ownFalse", "aligned_ownTrue"])
def test_cross_rank_loss_and_grads_equal_single_process(results, key):
    gf, lf = global_batch()
    single = compute(gf, lf, LABELS, all_ranks=False)[key]
    for rank, res in enumerate(results):
        loss, *grads = res[key]
        torch.testing.assert_close(loss, single[0])  # the global loss on every rank
        s, e = SHARDS[rank]
        for g, g_single in zip(grads, single[1:]):
            torch.testing.assert_close(g, g_single[s:e])
    # the test is not vacuous: both ranks' shards receive gradient
    assert all(res[key][1].abs().sum() > 0 for res in results)


@pytest.mark.slow
def test_all_gather_with_grad(results):
    gf, _ = global_batch()
    w = torch.arange(12 * 16, dtype=torch.float64).reshape(12, 16)
    for rank, res in enumerate(results):
        y, gx = res["gather"]
        torch.testing.assert_close(y, gf)
        s, e = SHARDS[rank]
        torch.testing.assert_close(gx, w[s:e])
        assert torch.equal(res["gather_labels"][0], LABELS)


def test_all_ranks_without_process_group_is_local():
    from partdist.losses import TripletLoss

    gf, _ = global_batch()
    assert not dist.is_initialized()
    torch.testing.assert_close(TripletLoss(all_ranks=True)(gf, LABELS), TripletLoss()(gf, LABELS))
