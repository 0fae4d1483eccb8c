"""The shortlist loop of the GPU (no host synchronization per query block x gallery chunk),
run on the CPU: the same lists as the CPU loop, and no call that waits for the device inside it;
every computation of an index runs with its device current (a ``cuda:1`` index on ``cuda:1``)."""

import contextlib

import pytest
import torch
from search_data import build, data

import partdist.search.storage as storage
from partdist.search import GalleryIndex
from partdist.search.shortlist import _order_key, chunk_smallest, shortlist_keys, split_query

SYNCS = [(torch.Tensor, name) for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__",
                                           "__index__", "numpy", "__array__", "bincount")]
SYNCS += [(torch, "nonzero"), (torch, "bincount"), (torch.cuda, "synchronize")]


@contextlib.contextmanager
def no_host_sync(monkeypatch):
    """Every way a tensor's value reaches the host raises."""
    def boom(name):
        def f(*a, **k):
            raise RuntimeError(f"host synchronization: {name}")
        return f

    with monkeypatch.context() as m:
        for owner, name in SYNCS:
            m.setattr(owner, name, boom(name))
        yield


def _continuous(n=300, q=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = GalleryIndex()
    idx.add(torch.randn(n, 24, generator=g), torch.randn(n, 4, 8, generator=g))
    return idx, torch.randn(q, 24, generator=g), torch.randn(q, 4, 8, generator=g)


def _run(idx, qg, ql, kk, w, pooling, sync_free, metric="euclidean"):
    return shortlist_keys(idx, qg, ql, kk, metric, w, pooling, 4, 37, False, sync_free=sync_free)


@pytest.mark.parametrize("w, pooling", [(0.0, "mean"), (2.0, "mean"), (4.0, "halves")])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_sync_free_loop_equals_cpu_loop(w, pooling, metric):
    """Exact (dyadic) data with duplicate rows: the same keys and ids bit for bit, ties by id;
    continuous data: the same ids, keys equal (the same GEMM of the same rows)."""
    d = data()
    idx = build(d)
    qg, ql = d["qg"], d["ql"]
    for kk in (1, 13, 60):
        a = _run(idx, qg, ql, kk, w, pooling, False, metric)
        b = _run(idx, qg, ql, kk, w, pooling, True, metric)
        assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    idx, qg, ql = _continuous()
    a = _run(idx, qg, ql, 50, w, pooling, False, metric)
    b = _run(idx, qg, ql, 50, w, pooling, True, metric)
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], b[0])


def test_sync_free_loop_float64():
    d = data(torch.float64)
    idx = build(d, dtype="float64")
    a = _run(idx, d["qg"].double(), d["ql"].double(), 20, 2.0, "mean", False)
    b = _run(idx, d["qg"].double(), d["ql"].double(), 20, 2.0, "mean", True)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


def test_no_host_sync_inside_the_gpu_loop(monkeypatch):
    """The loop of many chunks (37 rows) and query blocks (4 queries) runs with every host
    synchronization raising; the CPU loop does synchronize (so the check can fail)."""
    idx, qg, ql = _continuous()
    for w, pooling in ((0.0, "mean"), (2.0, "halves")):
        ref = _run(idx, qg, ql, 50, w, pooling, True)  # caches (pooled stripes, norms) filled outside
        with no_host_sync(monkeypatch):
            got = _run(idx, qg, ql, 50, w, pooling, True)
        assert torch.equal(ref[1], got[1])
    with no_host_sync(monkeypatch), pytest.raises(RuntimeError, match="host synchronization"):
        _run(idx, qg, ql, 50, 0.0, "mean", False)


def test_composite_order_is_the_stable_float_order():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 400, generator=g) * 4).round() / 4  # many ties, negatives, zeros
    x[0, :50] = -0.0
    x[1] = 1e30
    x[2, ::7] = -1e-30
    v, c = chunk_smallest(x, 60)
    o = torch.sort(x + 0.0, dim=1, stable=True)  # -0.0 + 0.0 = +0.0: sort sees them as equal
    same = (x == 0).any(1)
    for r in range(5):
        if not same[r]:
            assert torch.equal(c[r], o.indices[r, :60])
        assert torch.equal(v[r], o.values[r, :60])
    k = _order_key(torch.tensor([-2.0, -1.0, -0.0, 0.0, 1e-30, 1.0, 3e38]))
    assert bool((k[1:] > k[:-1]).all())


def test_split_query_recovers_float32_products():
    """The float16 GEMM of the split query, accumulated in float32, gives the float32 product of
    a float16 gallery to ~1e-6 (the rounded query alone: ~1e-3)."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(16, 512, generator=g)
    gal = torch.randn(300, 512, generator=g).half()
    ref = q.double() @ gal.double().t()
    two = split_query(q).float() @ gal.float().t()  # float16 inputs, float32 accumulation
    err2 = ((two[:16] + two[16:]).double() - ref).abs().max() / ref.abs().max()
    err1 = (two[:16].double() - ref).abs().max() / ref.abs().max()
    assert err2 < 1e-5 < err1


# --------------------------------------------------------------------------------------
# the index's device is current for every computation
# --------------------------------------------------------------------------------------


def test_device_guard_of_a_cuda_device():
    g = storage.device_guard(torch.device("cuda:1"))
    assert isinstance(g, torch.cuda.device) and g.idx == 1  # made without touching a GPU
    assert isinstance(storage.device_guard(torch.device("cpu")), contextlib.nullcontext)


def test_every_computing_method_runs_under_the_guard(monkeypatch):
    """search, tune, add and all_labels enter the guard of the index's device (recorded with a mock
    guard), and no public method of the index that computes lacks it."""
    seen = []

    @contextlib.contextmanager
    def record(device):
        seen.append(device)
        yield

    monkeypatch.setattr(storage, "device_guard", record)
    d = data()
    idx = build(d)
    assert seen  # add
    for call in (lambda: idx.search(d["qg"], d["ql"], 3), lambda: idx.tune(5),
                 lambda: idx.search(d["qg"], d["ql"], 3, mode="two-stage"), lambda: idx.all_labels(),
                 lambda: idx.to("cpu")):
        seen.clear()
        call()
        assert seen and all(s == idx.device for s in seen)
    guarded = {n for n in dir(GalleryIndex) if getattr(getattr(GalleryIndex, n), "__on_index_device__", False)}
    assert {"search", "tune", "add", "all_labels"} <= guarded


@pytest.mark.parametrize("sync_free", [False, True])
def test_tf32_split_shortlist_equals_plain(monkeypatch, sync_free):
    """Where cuBLAS may use TF32 the shortlist GEMM multiplies partdist's TF32-exact split
    operands; on the CPU (full float32 GEMMs) that gives the plain keys to float32 rounding and the
    same ids."""
    import partdist.search.shortlist as S

    assert not S.tf32_may_round("cpu", torch.float32)
    idx, qg, ql = _continuous(seed=3)
    plain = _run(idx, qg, ql, 40, 2.0, "mean", sync_free)
    calls = []
    real = torch.ops.partdist._tf32_split_operands

    monkeypatch.setattr(S, "tf32_may_round", lambda device, dtype: True)
    monkeypatch.setattr(S, "_ops", type("Ops", (), {"_tf32_split_operands": staticmethod(
        lambda a, b: calls.append(1) or real(a, b))}))
    split = _run(idx, qg, ql, 40, 2.0, "mean", sync_free)
    assert calls and torch.equal(split[1], plain[1])
    scale = float(plain[0].abs().max())  # keys are differences of norms: compare on their scale
    torch.testing.assert_close(split[0], plain[0], rtol=0, atol=1e-5 * scale)
