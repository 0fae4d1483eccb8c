"""Determinism, memory stability and thread safety of the ops."""

import ctypes
import functools
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")
    ]


def _libc():
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def _in_use():
    """Bytes C/C++ code holds from malloc: glibc's ``mallinfo2``, all arenas, ``mmap``-ed
    chunks included. Torch's CPU tensors, TensorImpls and the kernels' buffers come from
    there, and so do Python objects over 512 bytes; exact to the byte, whichever pages were
    touched or returned to the OS (RSS counts pages, so a leak had to pass ~6 KiB per call
    over 2000 calls before it showed). Not seen: Python objects of up to 512 bytes (pymalloc
    keeps them in its own mmap-ed arenas)."""
    gc.collect()
    mi = _LIBC.mallinfo2()
    return mi.uordblks + mi.hblkhd


# Calls per measured window, and the growth per call that fails the check: half of the smallest
# leak it must catch (1 KiB per call of any op; each call of _run_all calls every op once).
_WINDOW = 15
_LIMIT = 512


@functools.lru_cache(maxsize=None)
def _warm_up():
    """Allocator caches, thread pools, lazily built dispatch tables: the first calls of the
    process grow the heap by a few hundred KiB (the first 25 by ~7 KiB per call, the next 50
    by under 100 B per call in one measurement), later ones by 0 bytes."""
    args = _inputs(N=16, M=8, C=16)
    for _ in range(30):
        _run_all(*args)
    return args


def _growth_per_call(step):
    """Median over three windows of the heap growth per call of ``step`` (bytes): a leak
    grows every window, a one-off cache fill one."""
    marks = [_in_use()]
    for _ in range(3):
        for _ in range(_WINDOW):
            step()
        marks.append(_in_use())
    return sorted((b - a) / _WINDOW for a, b in zip(marks, marks[1:]))[1]


_needs_mallinfo = pytest.mark.skipif(_LIBC is None, reason="needs glibc's mallinfo2 (glibc >= 2.33)")
_not_sanitized = pytest.mark.skipif(bool(os.environ.get("PARTDIST_SANITIZED")), reason="ASan replaces malloc")


@pytest.mark.slow
@_needs_mallinfo
@_not_sanitized
def test_memory_flat_over_many_calls():
    args = _warm_up()
    grown = _growth_per_call(lambda: _run_all(*args))
    assert grown < _LIMIT, f"the heap grew by {grown:.0f} B per call of every op"


@pytest.mark.parametrize(
    "where",
    [pytest.param(w, marks=pytest.mark.slow) for w in ("native malloc", "torch tensor", "python bytes")],
)
@_needs_mallinfo
@_not_sanitized
def test_memory_check_catches_a_1kib_leak_per_call(where):
    """The measurement of test_memory_flat_over_many_calls, on the same calls plus a planted
    leak of 1 KiB per call (C/C++ memory from ``malloc`` never freed, a tensor kept alive,
    a Python object kept alive): each must reach the limit."""
    args = _warm_up()
    kept = []

    def step():
        _run_all(*args)
        if where == "native malloc":
            kept.append(_LIBC.malloc(1024))
        elif where == "torch tensor":
            kept.append(torch.empty(256))  # 1 KiB of float32
        else:
            kept.append(bytes(1024))

    try:
        grown = _growth_per_call(step)
    finally:
        if where == "native malloc":
            for p in kept:
                _LIBC.free(p)
        kept.clear()
    assert grown >= _LIMIT, f"a planted leak of 1 KiB per call measured {grown:.0f} B per call"


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
