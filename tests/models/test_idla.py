"""Tests of the IDLA model, the balanced pair sampler and the ranking evaluation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partdist import reference as R
from partdist.data import BalancedPairSampler
from partdist.eval import evaluate_rank
from partdist.models import IDLA, idla_distance_matrix
from partdist.train import verification_step


def images(n, seed):
    return torch.randn(n, 3, 160, 60, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------- model
def test_idla_shapes_forward_backward():
    torch.manual_seed(0)
    model = IDLA()
    x1, x2 = images(3, 1), images(3, 2)
    f = model.features(x1)
    assert f.shape == (3, 25, 37, 12)
    assert model.fc1.in_features == 2 * 25 * 18 * 5
    logits = model(x1, x2)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_idla_head_matches_pytorch_reference_composition():
    torch.manual_seed(1)
    model = IDLA().double()
    f = torch.randn(2, 25, 37, 12, dtype=torch.float64)
    g = torch.randn(2, 25, 37, 12, dtype=torch.float64)
    K, Kp = R.cross_neighborhood_diff(f, g, 5, impl=R.neighborhood_diff_expand)
    L, Lp = F.relu(model.patch(F.relu(K))), F.relu(model.patch_p(F.relu(Kp)))
    M = F.max_pool2d(F.relu(model.across(L)), 2, ceil_mode=True)
    Mp = F.max_pool2d(F.relu(model.across_p(Lp)), 2, ceil_mode=True)
    ref = model.fc2(F.relu(model.fc1(torch.cat([M.flatten(1), Mp.flatten(1)], 1))))
    torch.testing.assert_close(model.head(f, g), ref, rtol=1e-10, atol=1e-10)


def test_idla_bad_inputs():
    model = IDLA()
    with pytest.raises(ValueError, match=r"IDLA: x1 must be images \[N, 3, 160, 60\], got \[2, 3, 128, 64\]"):
        model(torch.zeros(2, 3, 128, 64), images(2, 0))
    with pytest.raises(ValueError, match="same number of images"):
        model(images(2, 0), images(3, 0))
    with pytest.raises(ValueError, match="kernel_size must be an odd int"):
        IDLA(kernel_size=4)
    with pytest.raises(ValueError, match="too small"):
        IDLA(input_size=(20, 20))


def test_idla_other_input_size_and_kernel():
    model = IDLA(input_size=(64, 32), kernel_size=3)
    assert model.map_size == (13, 5)
    assert model(torch.randn(2, 3, 64, 32), torch.randn(2, 3, 64, 32)).shape == (2, 2)


@pytest.mark.slow
def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = IDLA()
    x1, x2 = images(8, 10), images(8, 11)
    x2[:4] = x1[:4] + 0.1 * images(4, 12)  # 4 "same" pairs (near-duplicates), 4 "different"
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [verification_step(model, opt, x1, x2, labels) for _ in range(6)]
    with torch.no_grad():
        final = F.cross_entropy(model(x1, x2), labels).item()
    assert final < losses[0] * 0.8, (losses, final)


# ---------------------------------------------------------------- pair sampler
def test_balanced_pair_sampler():
    pids = np.repeat(np.arange(6), 4)
    cams = np.tile([0, 0, 1, 1], 6)
    s = BalancedPairSampler(pids, cams, batch_size=10, num_batches=5, seed=3)
    assert len(s) == 5
    batches = list(s)
    assert len(batches) == 5
    for a, b, y in batches:
        assert a.shape == b.shape == y.shape == (10,) and a.dtype == torch.int64
        assert int(y.sum()) == 5  # balanced
        same = torch.as_tensor(pids)[a] == torch.as_tensor(pids)[b]
        assert torch.equal(same, y.bool())
        assert (a != b).all()
        pos = y.bool()
        assert (torch.as_tensor(cams)[a][pos] != torch.as_tensor(cams)[b][pos]).all()  # cross-camera
    # reproducible for a seed, new pairs each epoch
    again = list(BalancedPairSampler(pids, cams, batch_size=10, num_batches=5, seed=3))
    assert all(torch.equal(u, v) for x, z in zip(batches, again) for u, v in zip(x, z))
    assert not all(torch.equal(u[0], v[0]) for u, v in zip(batches, list(s)))


def test_balanced_pair_sampler_errors():
    with pytest.raises(ValueError, match="no person has two images"):
        BalancedPairSampler([0, 1, 2])
    with pytest.raises(ValueError, match="at least two persons"):
        BalancedPairSampler([5, 5, 5])
    with pytest.raises(ValueError, match="batch_size must be an int >= 2"):
        BalancedPairSampler([0, 0, 1], batch_size=1)
    with pytest.raises(ValueError, match="camids must have one entry per image"):
        BalancedPairSampler([0, 0, 1], [0, 1])


# --------------------------------------------------------------- rank metrics
def test_evaluate_rank_by_hand():
    # query 0 (pid 1, cam 0): gallery sorted by distance: g2 (pid 1, cam 0: same cam -> removed),
    # g0 (pid 2), g1 (pid 1, cam 1: match at rank 2), g3 (pid -1: junk), g4 (pid 1, cam 2: rank 3)
    dist = np.array([[0.2, 0.3, 0.1, 0.35, 0.4],
                     [0.5, 0.1, 0.2, 0.3, 0.05]])
    g_pids = np.array([2, 1, 1, -1, 1])
    g_cams = np.array([1, 1, 0, 0, 2])
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=4)
    # query 0: kept order g0(-), g1(+), g4(+) -> first hit rank 2, AP = (1/2 + 2/3) / 2
    # query 1 (pid 2, cam 0): kept order g4(-), g1(-), g2(-), g0(+, cam 1) -> rank 4, AP = 1/4
    ap0, ap1 = (1 / 2 + 2 / 3) / 2, 1 / 4
    assert mAP == pytest.approx((ap0 + ap1) / 2)
    np.testing.assert_allclose(cmc, [0.0, 0.5, 0.5, 1.0])
    assert cmc.dtype == np.float32


def test_evaluate_rank_skips_queries_without_match_and_torch_inputs():
    dist = torch.tensor([[0.1, 0.2], [0.3, 0.1]])
    cmc, mAP = evaluate_rank(dist, torch.tensor([7, 9]), torch.tensor([7, 8]), torch.tensor([0, 0]),
                             torch.tensor([1, 1]), max_rank=50)
    assert cmc.shape == (2,) and cmc.tolist() == [1.0, 1.0] and mAP == 1.0  # query 1 skipped
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(dist, [7, 9], [7, 8], [1, 0], [1, 1])  # query 0's match is same-camera
    with pytest.raises(ValueError, match="g_pids must have 2 entries"):
        evaluate_rank(dist, [7, 9], [7], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="max_rank must be a positive int"):
        evaluate_rank(dist, [7, 9], [7, 8], [0, 0], [1, 1], max_rank=0)


def test_evaluate_rank_matches_bruteforce_ap():
    rng = np.random.default_rng(0)
    Q, G = 6, 30
    dist = rng.random((Q, G))
    q_pids, g_pids = rng.integers(0, 4, Q), rng.integers(-1, 4, G)
    q_cams, g_cams = rng.integers(0, 3, Q), rng.integers(0, 3, G)
    cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    aps, firsts = [], []
    for i in range(Q):
        keep = [j for j in np.argsort(dist[i], kind="stable")
                if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        hits = [g_pids[j] == q_pids[i] for j in keep]
        if not any(hits):
            continue
        ranks = [r + 1 for r, h in enumerate(hits) if h]
        aps.append(np.mean([(n + 1) / r for n, r in enumerate(ranks)]))
        firsts.append(ranks[0])
    assert mAP == pytest.approx(np.mean(aps))
    np.testing.assert_allclose(cmc, [np.mean([f <= r for f in firsts]) for r in range(1, 11)], rtol=1e-6)


# ---------------------------------------------------------- ranking with IDLA
@pytest.mark.slow
def test_idla_ranking_evaluation():
    torch.manual_seed(2)
    model = IDLA()
    query, gallery = images(3, 20), images(5, 21)
    dist = idla_distance_matrix(model, query, gallery, batch_size=4)  # 15 pairs in 4 batches
    assert dist.shape == (3, 5) and dist.dtype == torch.float32
    with torch.no_grad():
        model.eval()
        direct = torch.stack([IDLA.distance(model(query[i : i + 1].expand(5, -1, -1, -1), gallery)) for i in range(3)])
    torch.testing.assert_close(dist, direct, rtol=1e-4, atol=1e-5)
    q_pids, g_pids = [0, 1, 2], [0, 1, 2, 0, 3]
    q_cams, g_cams = [0, 0, 0], [1, 1, 1, 1, 1]
    cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert cmc.shape == (5,) and 0 <= mAP <= 1 and cmc[-1] == 1.0
