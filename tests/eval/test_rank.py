"""mINP, the devkit AP, the CUHK03 single-shot protocol, and the torchreid evaluate_rank shim."""

import numpy as np
import pytest
import torch

from partdist.compat.torchreid import evaluate_rank as tr_evaluate_rank
from partdist.eval import evaluate_rank


def _one_query(raw_order_pids, q_pid=1):
    """A single query (camera 0) against a gallery in camera 1 ranked in the given order."""
    g = np.asarray(raw_order_pids)
    dist = np.arange(len(g), dtype=np.float64)[None]
    return dist, np.array([q_pid]), g, np.array([0]), np.ones(len(g), dtype=int)


def test_minp_and_ap_variants_by_hand():
    # matches at ranks 1 and 3 (0-based positions 0 and 2) of 4
    dist, qp, gp, qc, gc = _one_query([1, 2, 1, 3])
    cmc, mAP, mINP = evaluate_rank(dist, qp, gp, qc, gc, max_rank=4, return_minp=True)
    assert cmc.tolist() == [1, 1, 1, 1]
    assert mAP == pytest.approx((1 / 1 + 2 / 3) / 2)          # torchreid: mean precision at hits
    assert mINP == pytest.approx(2 / 3)                        # 2 matches, last one at rank 3
    _, ap_devkit = evaluate_rank(dist, qp, gp, qc, gc, max_rank=4, ap="devkit")
    # devkit: hit 1 at row 0: (1 + 1)/2; hit 2 at row 2: (1/2 + 2/3)/2; each weighs 1/2
    assert ap_devkit == pytest.approx(0.5 * (1.0 + 1.0) / 2 + 0.5 * (0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="ap must be 'torchreid' or 'devkit'"):
        evaluate_rank(dist, qp, gp, qc, gc, ap="voc")


def test_cuhk03_single_shot_by_hand():
    # gallery: pid 1 at positions 0 and 3, pid 2 at 1 and 2. One image per pid is drawn:
    # the true match (pid 1) is first whenever position 0 is drawn (p = 1/2), else it is
    # behind one pid-2 image -> expected rank-1 = 0.5 over many repeats.
    dist, qp, gp, qc, gc = _one_query([1, 2, 2, 1])
    cmc, _ = evaluate_rank(dist, qp, gp, qc, gc, max_rank=2, use_metric_cuhk03=True, cuhk03_repeats=4000)
    assert cmc[0] == pytest.approx(0.5, abs=0.03)
    assert cmc[1] == pytest.approx(1.0)
    # the torchreid shim has torchreid's signature and return tuple
    cmc2, mAP2 = tr_evaluate_rank(dist, qp, gp, qc, gc, max_rank=2, use_metric_cuhk03=False)
    assert cmc2.tolist() == [1.0, 1.0] and mAP2 == pytest.approx((1 + 2 / 4) / 2)


def _random_case(seed=0, Q=12, G=90, ids=6):
    rng = np.random.default_rng(seed)
    d = rng.random((Q, G))
    return d, rng.integers(0, ids, Q), rng.integers(0, ids, G), rng.integers(0, 3, Q), rng.integers(0, 3, G)


def test_non_integer_ids_take_the_argsort_path_with_the_same_result():
    d, qp, gp, qc, gc = _random_case()
    want = evaluate_rank(d, qp, gp, qc, gc, per_query=True)
    got = evaluate_rank(d, qp.astype(str), gp.astype(str), qc, gc, per_query=True)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_rank_metrics_op_checks_and_opcheck():
    d, qp, gp, qc, gc = _random_case(1)
    args = [torch.from_numpy(d)] + [torch.from_numpy(a.astype(np.int64)) for a in (qp, gp, qc, gc)]
    op = torch.ops.partdist.rank_metrics
    torch.library.opcheck(op, (*args, False, False))
    torch.library.opcheck(op, (args[0].float(), *args[1:], True, True))
    with pytest.raises(RuntimeError, match="q_pids must be an int64 tensor"):
        op(args[0], args[1].int(), *args[2:], False, False)
    with pytest.raises(RuntimeError, match=r"g_camids must have shape \[90\]"):
        op(*args[:4], args[4][:5], False, False)
    with pytest.raises(RuntimeError, match="distmat must be float32 or float64"):
        op(args[0].half(), *args[1:], False, False)
    # no query: empty outputs
    first, ap, inp = op(args[0][:0], args[1][:0], args[2], args[3][:0], args[4], False, False)
    assert first.shape == (0,) and ap.dtype == torch.float64
