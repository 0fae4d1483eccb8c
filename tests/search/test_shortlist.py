"""The shortlist's running top-k over gallery chunks, and the pooled-stripe shortlist score."""

import math

import pytest
import torch
from search_data import G, build, data

from partdist.search import GalleryIndex
from partdist.search.shortlist import RunningSmallest as _RunningSmallest


def _chunked(key, k, chunk):
    best = _RunningSmallest(k)
    for s in range(0, key.shape[1], chunk):
        best.add(key[:, s : s + chunk], torch.arange(s, min(s + chunk, key.shape[1])))
    return best.result()


@pytest.mark.parametrize("order", ["random", "increasing", "decreasing"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_running_smallest_is_the_stable_k_smallest(order, chunk):
    """Equal keys (small integers: many ties) go to the smaller id, whatever the chunking; the
    decreasing order makes every entry of every chunk a candidate (the topk fallback)."""
    g = torch.Generator().manual_seed(chunk)
    key = torch.randint(0, 40, (9, 500), generator=g).float()
    if order != "random":
        key = key.sort(1, descending=order == "decreasing").values
    key[3] = 5.0  # one query with every key equal
    for k in (1, 10, 60, 500):
        v, i = _chunked(key, k, chunk)
        o = torch.sort(key, dim=1, stable=True)
        assert torch.equal(i, o.indices[:, :k])
        assert torch.equal(v, o.values[:, :k])


def test_pooled_shortlist_covering_gallery_equals_exact():
    d = data()
    idx = build(d)
    ex = idx.search(d["qg"], d["ql"], 20, mode="exact")
    for w, pooling in ((0.5, "mean"), (4.0, "mean"), (4.0, "halves"), (math.inf, "halves")):
        ts = idx.search(d["qg"], d["ql"], 20, mode="two-stage", shortlist=G, pooled_weight=w, pooling=pooling,
                        chunk_rows=16)
        assert torch.equal(ts.ids, ex.ids)
        # exact: partdist.local_dist's all-pairs kernel (hardware square root / division estimates
        # refined by a Newton step); two-stage: batch_local_dist on the gathered pairs: a few ulp apart
        torch.testing.assert_close(ts.distances, ex.distances, rtol=4e-6, atol=1e-6)


def _pooled_sq_dist(ql, gl, pooling):
    """|dp|^2 of the pooling, written out for 4 stripes: the windows [0, 3) and [1, 4)."""
    wins = [(0, 4)] if pooling == "mean" else [(0, 3), (1, 4)]
    total = 0
    for a, b in wins:
        p = lambda t: torch.nn.functional.normalize(t.double()[:, a:b].mean(1), dim=1)  # noqa: E731
        total = total + torch.cdist(p(ql), p(gl)) ** 2
    return total / len(wins)


@pytest.mark.parametrize("metric, pooling", [("euclidean", "mean"), ("cosine", "mean"), ("euclidean", "halves"),
                                             ("cosine", "halves")])
@pytest.mark.parametrize("w", [4.0, math.inf])
def test_pooled_shortlist_is_the_proxy_nearest(metric, pooling, w):
    """The shortlist of pooled_weight = w holds the K' nearest by |dg|^2 + w |dp|^2 (dp: the
    difference of the normalized mean stripes, or with pooling="halves" the mean over two
    overlapping windows of their squared differences; global features normalized for cosine),
    by |dp|^2 alone for w = inf, and the returned distances are the exact fused ones."""
    d = data()
    assert d["ql"].shape[1] == 4 and d["gl"].shape[1] == 4
    idx = build(d)
    kk = 12
    res = idx.search(d["qg"], d["ql"], kk, mode="two-stage", shortlist=kk, pooled_weight=w, metric=metric,
                     pooling=pooling)
    qg, gg = d["qg"], d["gg"]
    if metric == "cosine":
        qg, gg = torch.nn.functional.normalize(qg, dim=1), torch.nn.functional.normalize(gg, dim=1)
    pooled = _pooled_sq_dist(d["ql"], d["gl"], pooling)
    proxy = pooled if w == math.inf else torch.cdist(qg.double(), gg.double()) ** 2 + w * pooled
    want = proxy.argsort(dim=1, stable=True)[:, :kk]
    for q in range(want.shape[0]):
        assert set(res.ids[q].tolist()) == set(want[q].tolist())
    glob = idx.search(d["qg"], None, kk, lam=0, metric=metric).ids  # the global shortlist differs
    assert any(set(glob[q].tolist()) != set(want[q].tolist()) for q in range(want.shape[0]))
    full = idx.search(d["qg"], d["ql"], G, metric=metric)
    for q in range(want.shape[0]):
        for j, gid in enumerate(res.ids[q].tolist()):
            torch.testing.assert_close(res.distances[q, j], full.distances[q][full.ids[q] == gid][0])


def test_pooled_weight_bad_input():
    d = data()
    idx = build(d)
    for bad in (-1.0, float("nan"), -math.inf, True, "2"):
        with pytest.raises(ValueError, match=r"pooled_weight must be a finite number >= 0.*or math.inf"):
            idx.search(d["qg"], d["ql"], 3, mode="two-stage", pooled_weight=bad)
    with pytest.raises(ValueError, match="needs an index with local features"):
        idx.search(d["qg"], None, 3, mode="two-stage", pooled_weight=1.0, lam=0)
    glob_only = GalleryIndex()
    glob_only.add(d["gg"])
    with pytest.raises(ValueError, match="needs an index with local features"):
        glob_only.search(d["qg"], None, 3, mode="two-stage", pooled_weight=1.0)
    with pytest.raises(ValueError, match="needs backend='torch'"):
        idx.search(d["qg"], d["ql"], 3, mode="two-stage", pooled_weight=1.0, backend="faiss")
    with pytest.raises(ValueError, match=r"pooling must be one of \('mean', 'halves'\), got 'thirds'"):
        idx.search(d["qg"], d["ql"], 3, mode="two-stage", pooled_weight=1.0, pooling="thirds")


def test_pooling_windows():
    from partdist.search.shortlist import windows as _windows

    assert _windows(8, "mean") == [(0, 8)]
    assert _windows(8, "halves") == [(0, 5), (3, 8)]
    assert _windows(6, "halves") == [(0, 4), (2, 6)]
    assert _windows(4, "halves") == [(0, 3), (1, 4)]
    assert _windows(1, "halves") == [(0, 1), (0, 1)]
    for h in range(1, 33):  # two windows covering every stripe, overlapping, each 5/8 of them (rounded up)
        (a0, b0), (a1, b1) = _windows(h, "halves")
        assert a0 == 0 and b1 == h and a1 < b0 and b0 - a0 == b1 - a1 == -(-5 * h // 8)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pooled_alone_sync_free_loop_equals_the_cpu_loop(dtype):
    """The pooled stripes alone (pooled_weight = inf) by the loop without host synchronization
    (the CUDA one, run on the CPU) and by the CPU's running top-K': the same lists."""
    from partdist.search.shortlist import shortlist_keys

    d = data()
    idx = build(d, dtype=dtype)
    for pooling in ("mean", "halves"):
        a = shortlist_keys(idx, d["qg"], d["ql"], 9, "euclidean", math.inf, pooling, None, 16, False, sync_free=False)
        b = shortlist_keys(idx, d["qg"], d["ql"], 9, "euclidean", math.inf, pooling, None, 16, False, sync_free=True)
        assert torch.equal(a[1], b[1])
        torch.testing.assert_close(a[0], b[0])
