"""The numpy utilities of both AlignedReID codebases (partdist.compat.alignedreid_repro_utils,
partdist.compat.alignedreid_util) against transcriptions of the originals
(:mod:`partdist.reference.originals`) and a float64 truth."""

import inspect

import numpy as np
import pytest
import torch

from partdist import reference as R
from partdist.compat import alignedreid_repro_utils as H
from partdist.compat import alignedreid_util as M
from partdist.reference import originals as O


def feats(*shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)  # AlignedReID normalizes features before testing
    return x.astype(dtype)


def _params(f):
    return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]


E = inspect.Parameter.empty


def test_signatures_match_the_originals():
    assert _params(H.compute_dist) == [("array1", E), ("array2", E), ("type", "euclidean")]
    assert _params(H.local_dist) == [("x", E), ("y", E)]
    assert _params(H.low_memory_local_dist) == [("x", E), ("y", E)]
    assert _params(H.re_ranking) == [("q_g_dist", E), ("q_q_dist", E), ("g_g_dist", E), ("k1", 20), ("k2", 6),
                                     ("lambda_value", 0.3)]
    assert _params(H.cmc)[:10] == [("distmat", E), ("query_ids", None), ("gallery_ids", None), ("query_cams", None),
                                   ("gallery_cams", None), ("topk", 100), ("separate_camera_set", False),
                                   ("single_gallery_shot", False), ("first_match_break", False), ("average", True)]
    assert _params(H.mean_ap)[:6] == [("distmat", E), ("query_ids", None), ("gallery_ids", None),
                                      ("query_cams", None), ("gallery_cams", None), ("average", True)]
    assert _params(M.local_dist) == [("x", E), ("y", E), ("aligned", True)]
    assert _params(M.low_memory_local_dist) == [("x", E), ("y", E), ("aligned", True)]
    assert _params(M.evaluate) == [("distmat", E), ("q_pids", E), ("g_pids", E), ("q_camids", E), ("g_camids", E),
                                   ("max_rank", 50), ("use_metric_cuhk03", False)]
    assert _params(M.re_ranking) == [("probFea", E), ("galFea", E), ("k1", E), ("k2", E), ("lambda_value", E),
                                     ("local_distmat", None), ("only_local", False)]


# ------------------------------------------------------------- distances
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compute_dist(dtype):
    a, b = feats(7, 16, seed=1, dtype=dtype), feats(5, 16, seed=2, dtype=dtype)
    b[1] = a[3]
    for kind in ("euclidean", "cosine"):
        out, ref = H.compute_dist(a, b, kind), O.np_compute_dist(a, b, kind)
        assert out.dtype == ref.dtype
        np.testing.assert_array_equal(out, ref)  # the same operations in the same order
    with pytest.raises(ValueError, match="type must be"):
        H.compute_dist(a, b, "l1")


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_local_dist_all_pairs(aligned, dtype):
    x, y = feats(5, 6, 8, seed=3, dtype=dtype), feats(4, 6, 8, seed=4, dtype=dtype)
    ref = O.np_local_dist(x, y, aligned)
    truth = O.np_local_dist(x.astype(np.float64), y.astype(np.float64), aligned)
    for out in (M.local_dist(x, y, aligned), M.low_memory_local_dist(x, y, aligned=aligned)):
        assert out.shape == (5, 4) and out.dtype == dtype
        tol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, truth, rtol=tol, atol=tol)
        assert np.abs(out - truth).max() <= 2 * np.abs(ref - truth).max() + tol
    if aligned:
        np.testing.assert_allclose(H.local_dist(x, y), ref, rtol=1e-5)
        np.testing.assert_allclose(H.low_memory_local_dist(x, y), ref, rtol=1e-5)
        # the distance of torch-side partdist: the same numbers
        np.testing.assert_allclose(R.local_dist_vectorized(torch.from_numpy(x), torch.from_numpy(y)).numpy(),
                                   H.local_dist(x, y), rtol=1e-5)


def test_unaligned_with_fewer_stripes_in_x():
    x, y = feats(3, 4, 8, seed=5), feats(2, 6, 8, seed=6)  # the original sums the first m = 4 diagonal cells
    np.testing.assert_allclose(M.local_dist(x, y, False), O.np_local_dist(x, y, False), rtol=1e-5)
    with pytest.raises(ValueError, match="m <= n"):
        M.local_dist(y, x, False)


@pytest.mark.parametrize("aligned", [True, False])
def test_local_dist_two_d_form_as_the_originals_compute_it(aligned):
    x, y = feats(5, 8, seed=7, dtype=np.float64), feats(6, 8, seed=8, dtype=np.float64)
    ref = O.np_local_dist(x, y, aligned)
    np.testing.assert_allclose(M.local_dist(x, y, aligned), ref, rtol=1e-12)
    if aligned:
        np.testing.assert_allclose(H.local_dist(x, y), ref, rtol=1e-12)
    # which is not the DMLI distance of the pair (the 3-D form computes that)
    assert not np.isclose(ref, O.np_local_dist(x[None], y[None], aligned)[0, 0])


def test_shortest_and_unaligned_dist():
    d = np.random.default_rng(9).random((4, 5, 3))
    np.testing.assert_allclose(H.shortest_dist(d), O.np_shortest_dist(d), rtol=1e-12)
    np.testing.assert_allclose(M.unaligned_dist(d), O.np_unaligned_dist(d), rtol=1e-12)
    np.testing.assert_allclose(H.shortest_dist(d[..., 0]), O.np_shortest_dist(d[..., 0]), rtol=1e-12)


def test_low_memory_matrix_op():
    x, y = feats(7, 4, 8, seed=10), feats(9, 4, 8, seed=11)
    out = H.low_memory_matrix_op(H.local_dist, x, y, 0, 0, 3, 2)
    np.testing.assert_allclose(out, H.local_dist(x, y), rtol=1e-6)
    out = M.low_memory_matrix_op(M.local_dist, x, y, 0, 0, 2, 4, aligned=False)
    np.testing.assert_allclose(out, M.local_dist(x, y, False), rtol=1e-6)


# ---------------------------------------------------------------- metrics
def _case(seed, Q=30, G=200, ids=12, ties=False):
    rng = np.random.default_rng(seed)
    d = rng.random((Q, G))
    if ties:
        d = np.round(d * 10) / 10
    return d, rng.integers(0, ids, Q), rng.integers(0, ids, G), rng.integers(0, 3, Q), rng.integers(0, 3, G)


@pytest.mark.parametrize("first_match_break", [True, False])
@pytest.mark.parametrize("separate_camera_set", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_cmc(first_match_break, separate_camera_set, ties):
    d, qp, gp, qc, gc = _case(12, ties=ties)
    kw = dict(topk=10, separate_camera_set=separate_camera_set, first_match_break=first_match_break)
    np.testing.assert_allclose(H.cmc(d, qp, gp, qc, gc, **kw), O.openreid_cmc(d, qp, gp, qc, gc, kind="stable", **kw),
                               rtol=1e-12)
    ret, valid = H.cmc(d, qp, gp, qc, gc, average=False, **kw)
    rret, rvalid = O.openreid_cmc(d, qp, gp, qc, gc, average=False, kind="stable", **kw)
    np.testing.assert_allclose(ret, rret, rtol=1e-12)
    np.testing.assert_array_equal(valid, rvalid)
    if not ties:  # the original's own sort: no tie to order
        np.testing.assert_allclose(H.cmc(d, qp, gp, qc, gc, kind="quicksort", **kw), O.openreid_cmc(d, qp, gp, qc, gc, **kw))


def test_cmc_single_gallery_shot_draws_as_the_original():
    d, qp, gp, qc, gc = _case(13, Q=8, G=60)
    np.random.seed(3)
    out = H.cmc(d, qp, gp, qc, gc, topk=5, single_gallery_shot=True, first_match_break=True)
    np.random.seed(3)
    ref = O.openreid_cmc(d, qp, gp, qc, gc, topk=5, single_gallery_shot=True, first_match_break=True)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_cmc_no_valid_query():
    d, qp, gp, qc, gc = _case(14, Q=3, G=10)
    with pytest.raises(RuntimeError, match="No valid query"):
        H.cmc(d, qp + 100, gp, qc, gc)


@pytest.mark.parametrize("ties", [False, True])
def test_mean_ap(ties):
    d, qp, gp, qc, gc = _case(15, ties=ties)
    assert H.mean_ap(d, qp, gp, qc, gc) == pytest.approx(O.openreid_mean_ap(d, qp, gp, qc, gc), rel=1e-12)
    aps, valid = H.mean_ap(d, qp, gp, qc, gc, average=False)
    raps, rvalid = O.openreid_mean_ap(d, qp, gp, qc, gc, average=False)
    np.testing.assert_allclose(aps, raps, rtol=1e-12)
    np.testing.assert_array_equal(valid, rvalid)


def test_evaluate_market1501():
    d, qp, gp, qc, gc = _case(16)
    gp[::9] = -1
    cmc, mAP = M.evaluate(d, qp, gp, qc, gc)
    rcmc, raps, _ = O.eval_market1501(d, qp, gp, qc, gc, 50)
    np.testing.assert_allclose(cmc, rcmc, rtol=1e-6)
    assert mAP == pytest.approx(np.mean(raps), rel=1e-12)


def test_evaluate_cuhk03_draws_as_the_original():
    d, qp, gp, qc, gc = _case(17, Q=10, G=80)
    np.random.seed(5)
    cmc, mAP = M.evaluate(d, qp, gp, qc, gc, max_rank=20, use_metric_cuhk03=True)
    np.random.seed(5)
    rcmc, rmAP = O.michuanhaohao_eval_cuhk03(d, qp, gp, qc, gc, 20, kind="stable")
    np.testing.assert_allclose(cmc, rcmc, rtol=1e-6)
    assert mAP == pytest.approx(rmAP, rel=1e-12)


# ------------------------------------------------------------- re-ranking
def test_repro_re_ranking():
    f = feats(40, 8, seed=18)
    d = O.np_compute_dist(f, f)
    qg, qq, gg = d[:10, 10:], d[:10, :10], d[10:, 10:]
    out = H.re_ranking(qg, qq, gg, k1=6, k2=3)
    assert isinstance(out, np.ndarray) and out.shape == (10, 30)
    np.testing.assert_allclose(out, R.re_ranking_dense(qg, qq, gg, k1=6, k2=3, lambda_value=0.3), atol=1e-6)


@pytest.mark.parametrize("mode", ["global", "global_local", "local"])
def test_michuanhaohao_re_ranking(mode):
    g = torch.Generator().manual_seed(19)
    qf, gf = torch.randn(10, 16, generator=g), torch.randn(30, 16, generator=g)
    lf = feats(40, 4, 8, seed=20)
    local = None if mode == "global" else M.local_dist(lf, lf)
    kw = dict(local_distmat=local, only_local=mode == "local")
    out = M.re_ranking(qf, gf, 6, 3, 0.3, **kw)
    assert isinstance(out, np.ndarray) and out.shape == (10, 30) and out.dtype == np.float32
    # float32 weights: equal to the transcription run in float32 ...
    np.testing.assert_allclose(out, O.michuanhaohao_re_ranking(qf, gf, 6, 3, 0.3, v_dtype=np.float32, **kw), atol=2e-6)
    # ... and closer to it than the original (float16 weights) is
    ref16 = O.michuanhaohao_re_ranking(qf, gf, 6, 3, 0.3, **kw)
    truth = O.michuanhaohao_re_ranking(qf.double(), gf.double(), 6, 3, 0.3, v_dtype=np.float64,
                                       local_distmat=None if local is None else local.astype(np.float64),
                                       only_local=mode == "local")
    assert np.abs(out - truth).max() <= np.abs(ref16 - truth).max()
    with pytest.raises(ValueError, match="only_local=True needs local_distmat"):
        M.re_ranking(qf, gf, 6, 3, 0.3, only_local=True)
