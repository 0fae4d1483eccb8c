"""No host synchronization in the training step: on a GPU every ``.item()``, ``bool(t)``,
``int(t)``, ``.tolist()`` or ``nonzero`` of a device tensor waits for the stream (and breaks
CUDA-graph capture). On the CPU the same Python calls are caught by making them raise while an
AlignedReID loss step (global TriHard + DMLI local loss, forward and backward, and the triplet
loss of partdist.losses) runs; the GPU runs of ``make gpu-check`` add
``torch.cuda.set_sync_debug_mode("error")`` and a CUDA-graph capture."""

import contextlib

import pytest
import torch

import partdist
from partdist.losses import AlignedTripletLoss, TripletLoss

SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy")


@contextlib.contextmanager
def host_syncs_raise():
    """Every host-synchronizing Tensor method and torch.nonzero raises inside the block."""
    saved = {name: getattr(torch.Tensor, name) for name in SYNCING}
    saved_nonzero = torch.nonzero

    def raiser(name):
        def f(*args, **kwargs):
            raise AssertionError(f"host synchronization: Tensor.{name}")
        return f

    try:
        for name in SYNCING:
            setattr(torch.Tensor, name, raiser(name))
        torch.nonzero = raiser("nonzero")
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.nonzero = saved_nonzero


def test_the_guard_catches_a_sync():
    t = torch.ones(3)
    with pytest.raises(AssertionError, match="item"), host_syncs_raise():
        t.sum().item()
    with pytest.raises(AssertionError, match="__bool__"), host_syncs_raise():
        if (t > 0).all():
            pass
    assert t.sum().item() == 3.0  # restored


@pytest.mark.parametrize("own_hard_samples", [False, True])
@pytest.mark.parametrize("margin", [0.3, None])
def test_aligned_loss_step_has_no_host_sync(margin, own_hard_samples):
    torch.manual_seed(0)
    N, m, C, D = 16, 8, 32, 64
    g = torch.randn(N, D, requires_grad=True)
    local = torch.randn(N, C, m).permute(0, 2, 1).requires_grad_()  # as a model hands it over
    labels = torch.arange(4).repeat_interleave(4)
    crit = AlignedTripletLoss(margin=margin, own_hard_samples=own_hard_samples)
    tri = TripletLoss(margin=0.3)
    with host_syncs_raise():
        res = crit(g, labels, local)
        loss = res.global_loss + res.local_loss + tri(g, labels)
        loss.backward()
    assert torch.isfinite(loss.detach()).all() and local.grad is not None and g.grad is not None


def test_training_ops_have_no_host_sync():
    torch.manual_seed(1)
    x = torch.randn(12, 8, 16, requires_grad=True)
    y = torch.randn(12, 8, 16, requires_grad=True)
    labels = torch.arange(3).repeat_interleave(4)
    with host_syncs_raise():
        d = partdist.batch_local_dist(x, y, gamma=0.1) + partdist.batch_local_dist(x, y)
        full = partdist.local_dist(x, y)
        loss = d.sum() + partdist.triplet_hard_loss(full, labels) + partdist.hard_example_mining(
            full, labels).dist_an.sum()
        loss.backward()
    assert x.grad is not None
