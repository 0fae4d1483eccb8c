"""Determinism, memory stability and thread safety of the ops."""

import gc
import os
import threading

import pytest
import torch

import partdist


def _inputs(seed=0, N=64, M=40, m=8, n=6, C=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, m, C, generator=g)
    y = torch.randn(N, n, C, generator=g)
    q = torch.randn(M, m, C, generator=g)
    d = torch.rand(N, m, n, generator=g)
    return x, y, q, d


def _run_all(x, y, q, d):
    """Forward and backward of every op; returns all results."""
    xr, yr, qr, dr = (t.clone().requires_grad_() for t in (x, y, q, d))
    N = x.shape[0]
    labels = torch.arange(N) % max(1, N // 4)
    dm = dr.reshape(N, -1)[:, :N] if dr[0].numel() >= N else dr.reshape(N, -1)
    fmap = xr[:, :4].unsqueeze(1)  # [N, 1, 4, C] feature maps for the neighborhood op
    outs = [
        partdist.local_dist_matrix(xr, yr),
        partdist.batch_local_dist(xr, yr),
        partdist.batch_local_dist(xr, yr, gamma=0.3, band=2.0),
        partdist.local_dist(qr, yr, chunk_size=97),
        partdist.local_dist(qr, yr, chunk_size=97, gamma=0.5),
        partdist.unaligned_dist(qr, xr, all_pairs=True),
        partdist.dmli(dr),
        partdist.triplet_hard_loss(dm @ dm.t(), labels),
        partdist.neighborhood_diff(fmap, fmap.flip(-1), 3),
    ]
    sum(o.sum() for o in outs).backward()
    mined = partdist.hard_example_mining((dm @ dm.t()).detach(), labels)
    return outs + [xr.grad, yr.grad, qr.grad, dr.grad, partdist.dmli_path(d), partdist.dmli_path(d, gamma=0.2)] + list(mined)


def test_bit_identical_across_calls_and_thread_counts():
    args = _inputs()
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, prev))
        first = _run_all(*args)
        again = _run_all(*args)
        torch.set_num_threads(1)
        single = _run_all(*args)
    finally:
        torch.set_num_threads(prev)
    for a, b, c in zip(first, again, single):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def _rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
@pytest.mark.skipif(bool(os.environ.get("PARTDIST_SANITIZED")), reason="ASan's quarantine holds freed memory")
def test_memory_flat_over_many_calls():
    args = _inputs(N=16, M=8, C=16)
    for _ in range(50):  # warm up allocator caches
        _run_all(*args)
    gc.collect()
    before = _rss_bytes()
    for _ in range(2000):
        _run_all(*args)
    gc.collect()
    growth = _rss_bytes() - before
    # one iteration allocates ~30 KiB; a leak of even one small tensor per call would add tens of MiB
    assert growth < 12 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 2000 iterations"


@pytest.mark.slow
def test_concurrent_python_threads_give_correct_results():
    cases = [_inputs(seed=s) for s in range(6)]
    expected = [_run_all(*c) for c in cases]
    results = [None] * (len(cases) * 3)
    errors = []

    def worker(k):
        try:
            results[k] = _run_all(*cases[k % len(cases)])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert not errors, errors
    for k, res in enumerate(results):
        for a, b in zip(res, expected[k % len(cases)]):
            assert torch.equal(a, b)
