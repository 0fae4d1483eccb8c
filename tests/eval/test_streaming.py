"""Streaming query x gallery distances: row blocks, top-k, re-ranking from
features, the dense-output memory check, progress bars."""

import numpy as np
import pytest
import torch

import partdist
import partdist._memory as pm
import partdist.eval.streaming as streaming
from partdist.eval import (
    distance_blocks,
    global_distance,
    query_gallery_distance,
    re_ranking,
    re_ranking_features,
    topk_distance,
)
from partdist.reference import re_ranking_dense


def feats(seed=0, q=23, g=41, h=6, c=12, d=20, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    return mk(q, h, c), mk(g, h, c), mk(q, d), mk(g, d)


def dense(ql, gl, qg, gg, lam=1.0, metric="euclidean"):
    out = None
    if qg is not None:
        out = global_distance(qg, gg, metric)
    if ql is not None:
        loc = partdist.local_dist(ql, gl)
        out = loc if out is None else out + lam * loc
    return out


# ------------------------------------------------------------------ blocks / dense
@pytest.mark.parametrize("which", ["local", "global", "fused"])
def test_blocks_and_dense_match_one_shot(which):
    ql, gl, qg, gg = feats()
    if which == "local":
        qg = gg = None
    if which == "global":
        ql = gl = None
    ref = dense(ql, gl, qg, gg, lam=0.7)
    seen = []
    for s, e, blk in distance_blocks(ql, gl, qg, gg, lam=0.7, block_rows=5):
        assert blk.shape == (e - s, ref.shape[1])
        torch.testing.assert_close(blk, ref[s:e], rtol=1e-5, atol=1e-5)
        seen.extend(range(s, e))
    assert seen == list(range(ref.shape[0]))
    full = query_gallery_distance(ql, gl, qg, gg, lam=0.7, block_rows=4)
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-5)


def test_local_distance_helper_equals_local_dist():
    ql, gl, _, _ = feats(1)
    torch.testing.assert_close(
        partdist.eval.local_distance(ql, gl, block_rows=3), partdist.local_dist(ql, gl), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------------- top-k
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("k", [1, 7, 41])
def test_local_dist_topk_equals_topk_of_dense(k, largest):
    ql, gl, _, _ = feats(2)
    d = partdist.local_dist(ql, gl)
    vals, idx = partdist.local_dist_topk(ql, gl, k, largest=largest, block_rows=4)
    ref_vals, ref_idx = d.topk(k, dim=1, largest=largest, sorted=True)
    assert vals.shape == idx.shape == (ql.shape[0], k)
    torch.testing.assert_close(vals, ref_vals, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d.gather(1, idx), vals, rtol=0, atol=0)
    assert torch.equal(idx, ref_idx)  # random features: no ties


def test_topk_ties_ordered_by_index():
    ql, gl, _, _ = feats(3, q=5, g=6)
    gl = torch.cat([gl, gl, gl])  # every distance appears three times: indices j, j+6, j+12
    vals, idx = partdist.local_dist_topk(ql, gl, 9)
    d = partdist.local_dist(ql, gl)
    order = np.lexsort((np.arange(18)[None].repeat(5, 0), d.numpy()), axis=1)[:, :9]
    assert torch.equal(idx, torch.from_numpy(order))
    for row in idx:
        first = row[0].item()
        assert first < 6 and row[1].item() == first + 6 and row[2].item() == first + 12


@pytest.mark.parametrize("row", [1, 22])
def test_topk_with_nan_rows_and_columns(row):
    """NaN counts as larger than every distance (torch.topk / torch.sort semantics), and a
    NaN row never borrows another row's neighbours."""
    ql, gl, _, _ = feats(12)
    ql[row, 0, 0] = float("nan")  # every distance of this query is NaN
    gl[5, 1, 1] = float("nan")  # gallery item 5 is NaN for every query
    d = partdist.local_dist(ql, gl)
    for largest in (False, True):
        vals, idx = partdist.local_dist_topk(ql, gl, 4, largest=largest, block_rows=7)
        assert vals[row].isnan().all() and idx[row].tolist() == [0, 1, 2, 3]
        ok = torch.arange(ql.shape[0]) != row
        ref = torch.sort(d[ok], dim=1, descending=largest, stable=True).indices[:, :4]
        assert torch.equal(idx[ok], ref)
        assert (idx[ok][:, 0] == 5).all() == largest  # NaN first when largest, never kept otherwise


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_topk_fused_and_global(metric):
    ql, gl, qg, gg = feats(4)
    for args in ((ql, gl, qg, gg), (None, None, qg, gg)):
        d = dense(*args, lam=0.5, metric=metric)
        vals, idx = topk_distance(*args, k=5, lam=0.5, metric=metric, block_rows=6)
        torch.testing.assert_close(vals, d.topk(5, largest=False).values, rtol=1e-5, atol=1e-5)


def test_topk_streams_in_row_blocks(monkeypatch):
    ql, gl, _, _ = feats(5, q=30)
    calls = []
    real = partdist.local_dist

    def spy(x, y, *a, **kw):
        calls.append((x.shape[0], y.shape[0]))
        return real(x, y, *a, **kw)

    monkeypatch.setattr(streaming, "local_dist", spy)  # the name the streaming code calls
    partdist.local_dist_topk(ql, gl, 3, block_rows=8)
    assert calls == [(8, 41), (8, 41), (8, 41), (6, 41)]


# ------------------------------------------------------------------- re-ranking
@pytest.mark.parametrize("which", ["local", "global", "fused"])
def test_re_ranking_features_equals_dense_re_ranking(which):
    ql, gl, qg, gg = feats(6, q=25, g=60)
    if which == "local":
        qg = gg = None
    if which == "global":
        ql = gl = None
    args = (ql, gl, qg, gg)
    qgd = dense(ql, gl, qg, gg, lam=0.5)
    qqd = dense(ql, ql, qg, qg, lam=0.5)
    ggd = dense(gl, gl, gg, gg, lam=0.5)
    ref = torch.from_numpy(re_ranking_dense(qgd, qqd, ggd, k1=8, k2=3, lambda_value=0.3))
    out = re_ranking_features(*args, lam=0.5, k1=8, k2=3, lambda_value=0.3, chunk_size=7)
    assert out.dtype == torch.float32 and out.shape == (25, 60)
    # differs from the dense inputs' version only by float32 rounding of the distances
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    out2 = re_ranking_features(*args, lam=0.5, k1=8, k2=3, lambda_value=0.3)
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-5)
    # and the same ranking as the bounded-memory dense entry point
    torch.testing.assert_close(out, re_ranking(qgd, qqd, ggd, k1=8, k2=3), rtol=0, atol=1e-4)


def test_re_ranking_features_defaults_and_float64():
    ql, gl, qg, gg = feats(7, q=10, g=40, dtype=torch.float64)
    out = re_ranking_features(ql, gl)
    ref = re_ranking_dense(partdist.local_dist(ql, gl), partdist.local_dist(ql, ql), partdist.local_dist(gl, gl))
    torch.testing.assert_close(out, torch.from_numpy(ref), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- memory check
def test_dense_output_that_cannot_fit_raises_naming_the_alternative(monkeypatch):
    monkeypatch.setattr(pm, "available_bytes", lambda device: 100 << 20)
    x = torch.randn(9000, 2, 4)
    y = torch.randn(9000, 2, 4)  # 9000 x 9000 float32 = 309 MiB > 100 MiB
    with pytest.raises(MemoryError, match=r"partdist.local_dist: the dense output \[9000, 9000\].*local_dist_topk"):
        partdist.local_dist(x, y)
    with pytest.raises(MemoryError, match="unaligned_dist.*local_dist_topk"):
        partdist.unaligned_dist(x, y, all_pairs=True)
    with pytest.raises(MemoryError, match="query_gallery_distance.*topk_distance"):
        query_gallery_distance(x, y)
    # the streaming alternative works under the same limit
    vals, idx = partdist.local_dist_topk(x[:50], y, 2)
    assert vals.shape == (50, 2)


def test_memory_check_leaves_outputs_that_fit_alone():
    assert pm.available_bytes("cpu") is None or pm.available_bytes("cpu") > 0
    pm.check_dense_fits("op", (10, 10), torch.float32, "cpu", "x")  # small: no system call, no error
    pm.check_dense_fits("op", (1 << 14, 1 << 12), torch.float32, "cpu", "x")  # 256 MiB: fits here


def test_progress_bar_is_shown(capfd, monkeypatch):
    monkeypatch.delenv("PARTDIST_NO_PROGRESS", raising=False)
    ql, gl, _, _ = feats(8)
    partdist.local_dist_topk(ql, gl, 2, block_rows=5, progress=True)
    err = capfd.readouterr().err
    assert "top-k" in err and "/23" in err
    re_ranking_features(ql, gl, k1=5, k2=2, progress=True)
    assert "re-ranking" in capfd.readouterr().err


# ------------------------------------------------------------------ bad inputs
def test_bad_inputs():
    ql, gl, qg, gg = feats(9)
    with pytest.raises(ValueError, match="give both q_local and g_local"):
        topk_distance(ql, None, k=1)
    with pytest.raises(ValueError, match="give local features"):
        topk_distance(k=1)
    with pytest.raises(ValueError, match=r"q_local must have shape \[Q, H, C\]"):
        topk_distance(ql[0], gl, k=1)
    with pytest.raises(TypeError, match="g_local must be a floating-point"):
        topk_distance(ql, gl.long(), k=1)
    with pytest.raises(ValueError, match="same C"):
        topk_distance(ql, gl[..., :5], k=1)
    with pytest.raises(ValueError, match="same D"):
        topk_distance(q_global=qg, g_global=gg[:, :3], k=1)
    with pytest.raises(ValueError, match="same queries"):
        topk_distance(ql, gl, qg[:3], gg, k=1)
    with pytest.raises(ValueError, match="k must be at most the gallery size G = 41"):
        topk_distance(ql, gl, k=42)
    with pytest.raises(ValueError, match="k must be a positive int"):
        partdist.local_dist_topk(ql, gl, 0)
    with pytest.raises(ValueError, match="block_rows must be a positive int"):
        partdist.local_dist_topk(ql, gl, 1, block_rows=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        topk_distance(q_global=qg, g_global=gg, k=1, metric="l1")
    with pytest.raises(TypeError, match="lam must be a finite real"):
        topk_distance(ql, gl, qg, gg, k=1, lam=float("nan"))
    with pytest.raises(ValueError, match="same number of stripes"):
        re_ranking_features(ql, gl[:, :4])
    with pytest.raises(ValueError, match="k1 must be an int >= 1"):
        re_ranking_features(ql, gl, k1=0)
    with pytest.raises(ValueError, match="lambda_value must be in"):
        re_ranking_features(ql, gl, lambda_value=2)
    bad = gl.clone()
    bad[3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        re_ranking_features(ql, bad)
    # different stripe counts are fine for top-k (all-pairs DMLI allows m != n)
    vals, _ = partdist.local_dist_topk(ql, gl[:, :4], 2)
    assert vals.shape == (23, 2)


# ------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_topk_matches_cpu(dtype):
    ql, gl, qg, gg = feats(10, q=40, g=300, h=8, c=32)
    vals, idx = topk_distance(ql.cuda().to(dtype), gl.cuda().to(dtype), k=10, block_rows=16)
    ref_vals, ref_idx = topk_distance(ql.to(dtype).float(), gl.to(dtype).float(), k=10)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(vals.float().cpu(), ref_vals, rtol=tol, atol=tol)
    if dtype == torch.float32:
        assert (idx.cpu() == ref_idx).float().mean() > 0.99


@pytest.mark.cuda
def test_cuda_re_ranking_features_matches_cpu():
    ql, gl, qg, gg = feats(11, q=30, g=80)
    out = re_ranking_features(ql.cuda(), gl.cuda(), qg.cuda(), gg.cuda(), k1=8, k2=3)
    ref = re_ranking_features(ql, gl, qg, gg, k1=8, k2=3)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


# ----------------------------------------------------- reduced precision (gemm_dtype)
@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16], ids=str)
def test_gemm_dtype_reaches_every_streaming_path(dt):
    """gemm_dtype as a separate option or in a Distance: the blocks, the top-k, the re-ranking
    and the paired distance all take local_dist's reduced-precision values (the float32
    computation on the rounded local features); the global part stays float32."""
    ql, gl, qg, gg = feats(3)
    qr, gr = ql.to(dt).float(), gl.to(dt).float()
    ref = dense(qr, gr, qg, gg, lam=0.7)
    assert (ref - dense(ql, gl, qg, gg, lam=0.7)).abs().max() > 1e-5  # the rounding shows
    full = query_gallery_distance(ql, gl, qg, gg, lam=0.7, gemm_dtype=dt, block_rows=4)
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-5)
    dist = partdist.eval.Distance("fused", lam=0.7, gemm_dtype=dt)
    for s, e, blk in distance_blocks(ql, gl, qg, gg, distance=dist, block_rows=7):
        torch.testing.assert_close(blk, ref[s:e], rtol=1e-5, atol=1e-5)
    v, i = partdist.local_dist_topk(ql, gl, 5, gemm_dtype=dt)
    rv, ri = torch.sort(partdist.local_dist(qr, gr), dim=1, stable=True)
    torch.testing.assert_close(v, rv[:, :5], rtol=1e-5, atol=1e-5)
    paired = dist.pairs(ql[:5], gl[:5], qg[:5], gg[:5])
    torch.testing.assert_close(paired, ref[torch.arange(5), torch.arange(5)], rtol=1e-5, atol=1e-5)
    rr = re_ranking_features(ql, gl, gemm_dtype=dt, k1=5, k2=2)
    torch.testing.assert_close(torch.as_tensor(rr), torch.as_tensor(re_ranking_features(qr, gr, k1=5, k2=2)),
                               rtol=1e-4, atol=1e-4)


def test_gemm_dtype_bad_values_name_the_option():
    ql, gl, _, _ = feats(4)
    with pytest.raises(TypeError, match="gemm_dtype must be torch.float16, torch.bfloat16 or None"):
        partdist.eval.Distance("local", gemm_dtype=torch.float64)
    with pytest.raises(TypeError, match="gemm_dtype must be"):
        query_gallery_distance(ql, gl, gemm_dtype="half")
    with pytest.raises(TypeError, match="gemm_dtype rounds float32 features"):
        query_gallery_distance(ql.double(), gl.double(), gemm_dtype=torch.float16)
    with pytest.raises(ValueError, match="not both"):
        query_gallery_distance(ql, gl, distance=partdist.eval.Distance("local"), gemm_dtype=torch.float16)
