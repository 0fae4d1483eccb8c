"""partdist.losses: CrossEntropyLabelSmooth, TripletLoss, AlignedTripletLoss against
compositions of reference distances with nn.MarginRankingLoss / nn.SoftMarginLoss."""

import pytest
import torch
from torch.autograd import gradcheck

from partdist import reference as R
from partdist.losses import AlignedTripletLoss, CrossEntropyLabelSmooth, TripletLoss, mine_euclidean

EQUAL_K = torch.arange(12) // 4
UNEQUAL_K = torch.tensor([3, 0, 0, 1, 3, 2, 0, 3, 1, 5, 3, 4])


def feats(N, C=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, C, generator=g, dtype=dtype)


def local_feats(N, m=5, C=8, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, m, C, generator=g, dtype=dtype)


def grads_of(fn, *inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [t.grad for t in leaves]


def reference_triplet(x, labels, margin, normalize=False):
    """Reference composition: Euclidean distance matrix, masked mining, ranking loss (valid anchors)."""
    if normalize:
        x = x / (torch.norm(x, 2, -1, keepdim=True) + 1e-12)
    return R.triplet_hard_loss_masked(R.euclidean_dist(x, x), labels, margin)


# --------------------------------------------------------- label smoothing
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_cross_entropy_label_smooth_formula(epsilon):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 4, 2, 2, 1, 3])

    def ref(z):
        log_probs = torch.log_softmax(z, 1)
        t = torch.zeros_like(log_probs).scatter_(1, targets[:, None], 1)
        t = (1 - epsilon) * t + epsilon / 5
        return (-t * log_probs).mean(0).sum()

    out, (g1,) = grads_of(lambda z: CrossEntropyLabelSmooth(5, epsilon)(z, targets), logits)
    exp, (g2,) = grads_of(ref, logits)
    torch.testing.assert_close(out, exp)
    torch.testing.assert_close(g1, g2)


def test_cross_entropy_label_smooth_bad_input():
    ce = CrossEntropyLabelSmooth(5)
    with pytest.raises(ValueError, match=r"inputs must have shape \[N, 5\]"):
        ce(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"targets must have shape \[3\]"):
        ce(torch.randn(3, 5), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        ce(torch.randn(3, 5), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="num_classes"):
        CrossEntropyLabelSmooth(0)


# ----------------------------------------------------------------- triplet
@pytest.mark.parametrize("labels", [EQUAL_K, UNEQUAL_K, torch.arange(6)], ids=["equal_k", "unequal_k", "singletons"])
@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("normalize", [False, True])
def test_triplet_loss_matches_reference(labels, margin, normalize):
    x = feats(len(labels))
    out, (g1,) = grads_of(lambda t: TripletLoss(margin, normalize_feature=normalize)(t, labels), x)
    exp, (g2,) = grads_of(lambda t: reference_triplet(t, labels, margin, normalize), x)
    # the reference's self-distance is sqrt(1e-12) = 1e-6 (clamp), ours 0
    torch.testing.assert_close(out, exp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1, g2)


def test_triplet_loss_matches_torchreid_loop():
    x = feats(len(EQUAL_K), seed=3)
    out, (g1,) = grads_of(lambda t: TripletLoss(0.3)(t, EQUAL_K), x)
    exp, (g2,) = grads_of(lambda t: R.triplet_loss_loop(t, EQUAL_K, 0.3), x)
    torch.testing.assert_close(out, exp)
    torch.testing.assert_close(g1, g2)


def test_triplet_loss_float32():
    x = feats(len(UNEQUAL_K), C=64, seed=4, dtype=torch.float32)
    out = TripletLoss(0.3)(x, UNEQUAL_K)
    torch.testing.assert_close(out, reference_triplet(x.double(), UNEQUAL_K, 0.3).float(), rtol=1e-5, atol=1e-5)


def test_triplet_gradient_finite_at_zero_distance():
    x = feats(8, seed=5)
    x[1] = x[0]  # duplicated image: hardest positive of anchor 0 can be at distance 0
    x[3] = x[2]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    x = x.requires_grad_()
    loss, m = TripletLoss(0.3)(x, labels, return_mining=True)
    assert (m.dist_ap[:4] == 0).all()
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # same gradient as the clamped reference (whose zero-distance entries get gradient 0)
    xr = x.detach().clone().requires_grad_()
    reference_triplet(xr, labels, 0.3).backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_triplet_gradcheck():
    x = feats(len(UNEQUAL_K), C=6, seed=6).requires_grad_()
    assert gradcheck(lambda t: TripletLoss(0.5)(t, UNEQUAL_K), (x,))
    assert gradcheck(lambda t: TripletLoss(None, normalize_feature=True)(t, UNEQUAL_K), (x,))


def test_triplet_no_valid_anchor():
    x = feats(5).requires_grad_()
    loss = TripletLoss()(x, torch.zeros(5, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_mine_euclidean_indices_match_masked_reference():
    x = feats(len(UNEQUAL_K), seed=7)
    m = mine_euclidean(x, UNEQUAL_K)
    ap, an, p, n, valid = R.hard_example_mining_masked(R.euclidean_dist(x, x), UNEQUAL_K)
    assert torch.equal(m.p_inds, p) and torch.equal(m.n_inds, n) and torch.equal(m.valid, valid)
    torch.testing.assert_close(m.dist_ap, torch.where(p == torch.arange(len(p)), 0.0, ap), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m.dist_an, an)


def test_triplet_bad_input():
    t = TripletLoss()
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        t(torch.randn(4, 3), torch.arange(3))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        t(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match=r"features must be a 2-D tensor \[N, C\]"):
        t(torch.randn(4, 3, 2), torch.arange(4))
    with pytest.raises(TypeError, match="margin must be a float or None"):
        TripletLoss(margin="0.3")


# ------------------------------------------------------------------ aligned
def reference_aligned(gf, lf, labels, margin, normalize, own=False):
    """Composition: masked mining on the global (or local) distance, local DMLI of the mined pairs."""
    if normalize:
        gf = gf / (torch.norm(gf, 2, -1, keepdim=True) + 1e-12)
        lf = lf / (torch.norm(lf, 2, -1, keepdim=True) + 1e-12)
    gd = R.euclidean_dist(gf, gf)
    g_loss = R.triplet_hard_loss_masked(gd, labels, margin)
    if own:
        _, _, p, n, valid = R.hard_example_mining_masked(R.local_dist(lf.detach(), lf.detach()), labels)
    else:
        _, _, p, n, valid = R.hard_example_mining_masked(gd.detach(), labels)
    l_ap = R.batch_local_dist(lf, lf[p.clamp_min(0)])
    l_an = R.batch_local_dist(lf, lf[n.clamp_min(0)])
    if not valid.any():
        return g_loss, (l_ap * 0).sum()
    return g_loss, R.triplet_from_dists(l_ap[valid], l_an[valid], margin)


@pytest.mark.parametrize("labels", [EQUAL_K, UNEQUAL_K], ids=["equal_k", "unequal_k"])
@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("own", [False, True])
def test_aligned_triplet_loss_matches_composition(labels, margin, normalize, own):
    gf, lf = feats(len(labels), seed=8), local_feats(len(labels), seed=9)
    loss = AlignedTripletLoss(margin, normalize_feature=normalize, own_hard_samples=own)

    def ours(a, b):
        r = loss(a, labels, b)
        return r.global_loss + 0.7 * r.local_loss

    def ref(a, b):
        g, l = reference_aligned(a, b, labels, margin, normalize, own)
        return g + 0.7 * l

    out, (ga, gb) = grads_of(ours, gf, lf)
    exp, (ra, rb) = grads_of(ref, gf, lf)
    torch.testing.assert_close(out, exp)
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_aligned_matches_vectorized_practice_and_returns_mining():
    gf, lf = feats(len(EQUAL_K), seed=10), local_feats(len(EQUAL_K), seed=11)
    r = AlignedTripletLoss()(gf, EQUAL_K, lf)
    g, l = R.aligned_triplet_loss_vectorized(gf, lf, EQUAL_K)
    torch.testing.assert_close(r.global_loss, g)
    torch.testing.assert_close(r.local_loss, l)
    gm, lm = r.global_mining, r.local_mining
    assert torch.equal(gm.p_inds, lm.p_inds) and torch.equal(gm.n_inds, lm.n_inds)
    lfn = lf / (torch.norm(lf, 2, -1, keepdim=True) + 1e-12)
    torch.testing.assert_close(lm.dist_ap, R.batch_local_dist(lfn, lfn[gm.p_inds]))
    torch.testing.assert_close(lm.dist_an, R.batch_local_dist(lfn, lfn[gm.n_inds]))


def test_aligned_no_valid_anchor():
    gf, lf = feats(4).requires_grad_(), local_feats(4).requires_grad_()
    r = AlignedTripletLoss()(gf, torch.ones(4, dtype=torch.long), lf)
    assert r.global_loss.item() == 0.0 and r.local_loss.item() == 0.0
    (r.global_loss + r.local_loss).backward()
    assert torch.equal(gf.grad, torch.zeros_like(gf)) and torch.equal(lf.grad, torch.zeros_like(lf))


def test_aligned_gradcheck():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    gf = feats(6, C=5, seed=12).requires_grad_()
    lf = local_feats(6, m=3, C=4, seed=13).requires_grad_()
    loss = AlignedTripletLoss(0.5)
    assert gradcheck(lambda a, b: tuple(loss(a, labels, b)[:2]), (gf, lf))


def test_aligned_bad_input():
    loss = AlignedTripletLoss()
    with pytest.raises(ValueError, match=r"local_feat must hold one image per row"):
        loss(torch.randn(4, 3), torch.arange(4), torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match=r"local_feat must be a 3-D tensor \[N, m, C\]"):
        loss(torch.randn(4, 3), torch.arange(4), torch.randn(4, 3))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        loss(torch.randn(4, 3), torch.rand(4), torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        loss(torch.randn(4, 3), torch.arange(5), torch.randn(4, 2, 3))


@pytest.mark.cuda
def test_losses_cuda_match_cpu():
    gf, lf = feats(len(UNEQUAL_K), seed=14), local_feats(len(UNEQUAL_K), seed=15)
    for own in (False, True):
        loss = AlignedTripletLoss(own_hard_samples=own)
        a = loss(gf, UNEQUAL_K, lf)
        b = loss(gf.cuda(), UNEQUAL_K.cuda(), lf.cuda())
        torch.testing.assert_close(b.global_loss.cpu(), a.global_loss)
        torch.testing.assert_close(b.local_loss.cpu(), a.local_loss)
    torch.testing.assert_close(TripletLoss()(gf.cuda(), UNEQUAL_K.cuda()).cpu(), TripletLoss()(gf, UNEQUAL_K))
