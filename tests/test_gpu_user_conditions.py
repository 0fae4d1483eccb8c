"""What a GPU user meets and the CPU suite cannot show (run by ``make gpu-check``'s test stage;
skipped without a GPU): tensors on a GPU that is not the current one, a non-default stream,
``torch.cuda.set_sync_debug_mode("error")`` over a training step, a whole AlignedReID loss step
captured in a CUDA graph and replayed with new inputs, ``torch.compile`` with inductor (default
and ``mode="reduce-overhead"``), and the kernel launches of a training step (torch.profiler)."""

import json
import os

import pytest
import torch

import partdist
from partdist.losses import AlignedTripletLoss

pytestmark = pytest.mark.cuda

TWO_GPUS = "needs 2 CUDA devices (one op on cuda:1 while cuda:0 is current)"


def _inputs(device, seed=0, N=16, m=8, C=32, D=64):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(N, D, generator=gen).to(device)
    local = torch.randn(N, C, m, generator=gen).to(device).permute(0, 2, 1)  # permuted, as from a model
    labels = (torch.arange(N) // 4).to(device)
    return g, local, labels


CRIT = AlignedTripletLoss(margin=0.3)


def _loss_step(g, local, labels):
    res = CRIT(g, labels, local)
    return res.global_loss + res.local_loss


def _grads(fn, g, local, labels):
    g, local = g.detach().clone().requires_grad_(), local.detach().clone().requires_grad_()
    loss = fn(g, local, labels)
    loss.backward()
    return loss.detach(), g.grad, local.grad


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=TWO_GPUS)
def test_cuda_ops_on_a_non_current_device():
    torch.cuda.set_device(0)
    x = torch.randn(6, 8, 16, dtype=torch.float64)
    y = torch.randn(6, 8, 16, dtype=torch.float64)
    want = partdist.local_dist(x, y)
    want_b = partdist.batch_local_dist(x, y)
    x1, y1 = x.to("cuda:1").requires_grad_(), y.to("cuda:1")
    got = partdist.local_dist(x1, y1)
    got_b = partdist.batch_local_dist(x1, y1)
    got_b.sum().backward()
    assert torch.cuda.current_device() == 0
    assert got.device == got_b.device == x1.grad.device == torch.device("cuda:1")
    torch.testing.assert_close(got.cpu(), want)
    torch.testing.assert_close(got_b.detach().cpu(), want_b)
    d = torch.rand(10, 10, device="cuda:1")
    assert partdist.triplet_hard_loss(d, torch.arange(10, device="cuda:1") // 2).device == torch.device("cuda:1")


def test_cuda_non_default_stream():
    g, local, labels = _inputs("cuda")
    want = _grads(_loss_step, g, local, labels)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = _grads(_loss_step, g, local, labels)
    torch.cuda.current_stream().wait_stream(s)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_cuda_training_step_has_no_host_sync():
    g, local, labels = _inputs("cuda")
    _grads(_loss_step, g, local, labels)  # warm-up (allocator, lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss, gg, gl = _grads(_loss_step, g, local, labels)
        x, y = local.detach().contiguous(), local.detach().flip(0).contiguous()
        partdist.local_dist(x, y)
        partdist.triplet_hard_loss(torch.cdist(g, g), labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert gl is not None


def test_cuda_graph_capture_of_a_loss_step():
    g0, l0, labels = _inputs("cuda", seed=1)
    sg, sl = g0.clone().requires_grad_(), l0.clone().requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            sg.grad = sl.grad = None
            _loss_step(sg, sl, labels).backward()
    torch.cuda.current_stream().wait_stream(side)
    sg.grad = sl.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _loss_step(sg, sl, labels)
        static_loss.backward()
    for seed in (2, 3):  # new inputs copied into the static ones, then replay
        g, local, _ = _inputs("cuda", seed=seed)
        with torch.no_grad():
            sg.copy_(g)
            sl.copy_(local)
        graph.replay()
        want = _grads(_loss_step, g, local, labels)
        torch.testing.assert_close(static_loss.detach(), want[0])
        torch.testing.assert_close(sg.grad, want[1])
        torch.testing.assert_close(sl.grad, want[2])


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_cuda_inductor_equals_eager(mode):
    torch._dynamo.reset()
    g, local, labels = _inputs("cuda", seed=4)
    compiled = torch.compile(_loss_step, mode=mode)
    want = _grads(_loss_step, g, local, labels)
    for _ in range(3):  # reduce-overhead records a CUDA graph after warm-up runs
        got = _grads(compiled, g, local, labels)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_cuda_kernel_launches_per_training_step():
    """Kernel launches of one DMLI training batch (256 pairs, 8x8, C = 128, forward + backward)
    and of one AlignedReID loss step; written to $GPU_CHECK_LAUNCHES_JSON for the report."""
    from torch.profiler import ProfilerActivity, profile

    def count(fn):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

    x = torch.randn(256, 8, 128, device="cuda", requires_grad=True)
    y = torch.randn(256, 8, 128, device="cuda", requires_grad=True)
    g, local, labels = _inputs("cuda", N=128, C=128, D=2048)
    counts = {
        "batch_local_dist fwd+bwd (256 pairs, 8x8, C=128)": count(
            lambda: partdist.batch_local_dist(x, y).sum().backward()),
        "AlignedReID loss step fwd+bwd (N=128)": count(lambda: _grads(_loss_step, g, local, labels)),
    }
    print("kernel launches:", counts)
    path = os.environ.get("GPU_CHECK_LAUNCHES_JSON")
    if path:
        with open(path, "w") as fh:
            json.dump(counts, fh, indent=1)
    assert all(n > 0 for n in counts.values())
