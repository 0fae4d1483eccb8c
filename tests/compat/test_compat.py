"""partdist.compat: each AlignedReID / torchreid shim against the formula it replaces."""

import inspect

import pytest
import torch

from partdist import reference as R
from partdist.compat import alignedreid as A
from partdist.compat import torchreid as T
from partdist.reference import originals as O

EQUAL_K = torch.arange(12) // 4
UNEQUAL_K = torch.tensor([3, 0, 0, 1, 3, 2, 0, 3, 1, 5, 3, 4])

# Local distances: the originals clamp each squared stripe distance at 1e-12 (a cell of
# two identical stripes costs tanh(0.5e-6)), partdist at 0; otherwise float64 rounding.
TOL = dict(rtol=1e-6, atol=1e-6)


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def value_and_grads(fn, *inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    total = sum((o.double() * (i + 1)).sum() for i, o in enumerate(outs) if o.is_floating_point())
    total.backward()
    return [o.detach() for o in outs], [t.grad for t in leaves]


def assert_same(fn, ref, *inputs, **tol):
    out, g = value_and_grads(fn, *inputs)
    exp, gr = value_and_grads(ref, *inputs)
    assert len(out) == len(exp)
    for a, b in zip(out, exp):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b.to(a.dtype), **tol)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, **tol)


# ------------------------------------------------------------- signatures
def _params(f):
    return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]


E = inspect.Parameter.empty


def test_signatures_match_the_originals():
    assert _params(A.normalize) == [("x", E), ("axis", -1)]
    assert _params(A.euclidean_dist) == [("x", E), ("y", E)]
    assert _params(A.batch_euclidean_dist) == [("x", E), ("y", E)]
    assert _params(A.shortest_dist) == [("dist_mat", E)]
    assert _params(A.batch_local_dist) == [("x", E), ("y", E)]
    assert _params(A.local_dist) == [("x", E), ("y", E)]
    assert _params(A.hard_example_mining) == [("dist_mat", E), ("labels", E), ("return_inds", False)]
    assert _params(A.global_loss) == [("tri_loss", E), ("global_feat", E), ("labels", E), ("normalize_feature", True)]
    assert _params(A.local_loss) == [
        ("tri_loss", E),
        ("local_feat", E),
        ("p_inds", None),
        ("n_inds", None),
        ("labels", None),
        ("normalize_feature", True),
    ]
    assert _params(A.TripletLossAlignedReID.__init__)[1:] == [("margin", 0.3), ("mutual_flag", False)]
    assert _params(A.TripletLossAlignedReID.forward)[1:] == [("inputs", E), ("targets", E), ("local_features", E)]
    assert [n for n, _ in _params(A.TripletLoss.__init__)[1:]] == ["margin", "mutual_flag"]
    assert _params(A.TripletLoss.forward)[1:] == [("inputs", E), ("targets", E)]
    assert _params(T.TripletLoss.__init__)[1:] == [("margin", 0.3)]
    assert _params(T.TripletLoss.forward)[1:] == [("inputs", E), ("targets", E)]


# -------------------------------------------------------------- distances
def test_normalize():
    x = rand(5, 7)
    assert_same(A.normalize, O.normalize, x)
    assert_same(lambda t: A.normalize(t, 1), lambda t: O.normalize(t, 1), rand(3, 4, 5))


def test_euclidean_dist():
    x, y = rand(6, 9, seed=1), rand(4, 9, seed=2)
    y[1] = x[2]  # a zero distance: the clamp region
    assert_same(A.euclidean_dist, R.euclidean_dist, x, y, **TOL)
    out = A.euclidean_dist(x, y)
    assert out[2, 1].item() == pytest.approx(1e-6)


def test_batch_euclidean_dist():
    x, y = rand(3, 4, 6, seed=3), rand(3, 5, 6, seed=4)
    assert_same(A.batch_euclidean_dist, R.batch_euclidean_dist, x, y, **TOL)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 3), (2, 6, 3, 2), (1, 1, 2)])
def test_shortest_dist_dp_dims_first(shape):
    d = torch.rand(*shape, dtype=torch.float64)
    assert_same(A.shortest_dist, R.shortest_dist, d)
    assert A.shortest_dist(d).shape == shape[2:]


def test_shortest_dist_bad_input():
    with pytest.raises(ValueError, match=r"\[m, n\] or \[m, n, \*\]"):
        A.shortest_dist(torch.rand(3))


def test_batch_local_dist():
    x, y = rand(5, 4, 6, seed=5), rand(5, 3, 6, seed=6)
    assert_same(A.batch_local_dist, R.batch_local_dist_vectorized, x, y, **TOL)


def test_local_dist():
    x, y = rand(4, 3, 6, seed=7), rand(5, 4, 6, seed=8)
    assert_same(A.local_dist, R.local_dist_vectorized, x, y, **TOL)
    # the 2-D form: one pair
    assert_same(lambda a, b: A.local_dist(a, b), lambda a, b: R.local_dist_vectorized(a[None], b[None])[0, 0], x[0], y[1], **TOL)


# ----------------------------------------------------------------- mining
@pytest.mark.parametrize("return_inds", [False, True])
def test_hard_example_mining_equal_k(return_inds):
    x = rand(len(EQUAL_K), 8, seed=9)
    d = R.euclidean_dist(x, x)
    assert_same(
        lambda t: A.hard_example_mining(t, EQUAL_K, return_inds),
        lambda t: R.hard_example_mining_view(t, EQUAL_K, return_inds),
        d,
    )
    out = A.hard_example_mining(d, EQUAL_K, return_inds)
    ref = R.hard_example_mining_view(d, EQUAL_K, return_inds)
    assert len(out) == (4 if return_inds else 2)
    if return_inds:
        assert torch.equal(out[2], ref[2]) and torch.equal(out[3], ref[3])


def test_hard_example_mining_unequal_k_works_where_the_original_crashes():
    x = rand(len(UNEQUAL_K), 8, seed=10)
    d = R.euclidean_dist(x, x)
    with pytest.raises(RuntimeError):
        R.hard_example_mining_view(d, UNEQUAL_K)
    ap, an, p, n = A.hard_example_mining(d, UNEQUAL_K, return_inds=True)
    rap, ran, rp, rn, _ = R.hard_example_mining_masked(d, UNEQUAL_K)
    assert torch.equal(p, rp) and torch.equal(n, rn)
    torch.testing.assert_close(ap, rap)
    torch.testing.assert_close(an, ran)
    # and against the per-anchor loop of torchreid
    lap, lan = R.hard_example_mining_loop(d, UNEQUAL_K)
    torch.testing.assert_close(ap, lap)
    torch.testing.assert_close(an, lan)


# ------------------------------------------------------------- TripletLoss
@pytest.mark.parametrize("margin", [0.3, None, 1.0])
def test_triplet_loss_distance_call(margin):
    ap, an = torch.rand(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    assert_same(lambda a, b: A.TripletLoss(margin=margin)(a, b), lambda a, b: R.triplet_from_dists(a, b, margin), ap, an)


def test_triplet_loss_default_margins():
    ap, an = torch.rand(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    # huanghoujing default margin=None: soft margin
    torch.testing.assert_close(A.TripletLoss()(ap, an), torch.nn.SoftMarginLoss()(an - ap, torch.ones(8, dtype=torch.float64)))
    # michuanhaohao default margin=0.3 with features
    x = rand(len(EQUAL_K), 8, seed=11)
    torch.testing.assert_close(A.TripletLoss()(x, EQUAL_K), R.triplet_loss_loop(x, EQUAL_K, 0.3), **TOL)


@pytest.mark.parametrize("labels", [EQUAL_K, torch.arange(5)], ids=["equal_k", "singletons"])
def test_triplet_loss_feature_call(labels):
    x = rand(len(labels), 8, seed=12)
    assert_same(lambda t: A.TripletLoss(0.3)(t, labels), lambda t: R.triplet_loss_loop(t, labels, 0.3), x, **TOL)


def test_triplet_loss_mutual_flag():
    x = rand(len(EQUAL_K), 8, seed=13)

    def ref(t):
        d = R.euclidean_dist(t, t)
        ap, an = R.hard_example_mining_loop(d, EQUAL_K)
        return R.triplet_from_dists(ap, an, 0.3), d

    assert_same(lambda t: A.TripletLoss(0.3, mutual_flag=True)(t, EQUAL_K), ref, x, **TOL)


def test_torchreid_triplet_loss():
    for labels in (EQUAL_K, torch.arange(5), torch.tensor([0, 0, 0, 1, 2, 2, 2])):
        x = rand(len(labels), 8, seed=14)
        assert_same(lambda t: T.TripletLoss()(t, labels), lambda t: R.triplet_loss_loop(t, labels, 0.3), x, **TOL)
        assert_same(lambda t: T.TripletLoss(0.7)(t, labels), lambda t: R.triplet_loss_loop(t, labels, 0.7), x, **TOL)


def test_torchreid_works_without_negatives():
    x = rand(4, 8).requires_grad_()
    loss = T.TripletLoss()(x, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---------------------------------------------------- global / local loss
@pytest.mark.parametrize("tri", ["partdist", "original"])
@pytest.mark.parametrize("normalize_feature", [True, False])
def test_global_loss(tri, normalize_feature):
    tri_loss = A.TripletLoss(margin=0.3) if tri == "partdist" else O.TripletLoss(0.3)
    x = rand(len(EQUAL_K), 8, seed=15)

    def ref(t):
        if normalize_feature:
            t = O.normalize(t)
        d = R.euclidean_dist(t, t)
        ap, an, p, n = R.hard_example_mining_view(d, EQUAL_K, return_inds=True)
        return R.triplet_from_dists(ap, an, 0.3), p, n, ap, an, d

    assert_same(lambda t: A.global_loss(tri_loss, t, EQUAL_K, normalize_feature), ref, x, **TOL)
    out, exp = A.global_loss(tri_loss, x, EQUAL_K, normalize_feature), ref(x)
    assert torch.equal(out[1], exp[1]) and torch.equal(out[2], exp[2])


@pytest.mark.parametrize("tri", ["partdist", "original"])
def test_global_loss_unequal_k_leaves_out_invalid_anchors(tri):
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    tri_loss = A.TripletLoss(margin=0.3) if tri == "partdist" else O.TripletLoss(0.3)
    x = rand(6, 8, seed=16)

    def ref(t):
        d = R.euclidean_dist(O.normalize(t), O.normalize(t))
        return R.triplet_hard_loss_masked(d, labels, 0.3)

    assert_same(lambda t: A.global_loss(tri_loss, t, labels)[0], ref, x, **TOL)
    # no negative anywhere: loss 0, n_inds -1
    loss, p, n, ap, an, _ = A.global_loss(tri_loss, x, torch.zeros(6, dtype=torch.long))
    assert loss.item() == 0.0 and (n == -1).all()


@pytest.mark.parametrize("tri", ["partdist", "original"])
def test_local_loss_with_given_indices(tri):
    tri_loss = A.TripletLoss(margin=0.3) if tri == "partdist" else O.TripletLoss(0.3)
    g, lf = rand(len(EQUAL_K), 8, seed=17), rand(len(EQUAL_K), 4, 6, seed=18)
    _, p, n, _, _, _ = A.global_loss(tri_loss, g, EQUAL_K)

    def ref(t):
        t = O.normalize(t)
        ap = R.batch_local_dist_vectorized(t, t[p])
        an = R.batch_local_dist_vectorized(t, t[n])
        return R.triplet_from_dists(ap, an, 0.3), ap, an

    assert_same(lambda t: A.local_loss(tri_loss, t, p, n), ref, lf, **TOL)


@pytest.mark.parametrize("tri", ["partdist", "original"])
def test_local_loss_own_hard_samples(tri):
    tri_loss = A.TripletLoss(margin=0.3) if tri == "partdist" else O.TripletLoss(0.3)
    lf = rand(len(EQUAL_K), 4, 6, seed=19)

    def ref(t):
        t = O.normalize(t)
        d = R.local_dist_vectorized(t, t)
        ap, an = R.hard_example_mining_view(d, EQUAL_K)
        return R.triplet_from_dists(ap, an, 0.3), ap, an, d

    assert_same(lambda t: A.local_loss(tri_loss, t, labels=EQUAL_K), ref, lf, **TOL)
    assert len(A.local_loss(tri_loss, lf, labels=EQUAL_K)) == 4


@pytest.mark.parametrize("mutual", [False, True])
def test_triplet_loss_aligned_reid(mutual):
    x, lf = rand(len(EQUAL_K), 8, seed=20), rand(len(EQUAL_K), 6, 4, seed=21)  # local [N, c, H]

    def ref(t, l):
        d = R.euclidean_dist(t, t)
        ap, an, p, n = R.hard_example_mining_view(d, EQUAL_K, return_inds=True)
        l = l.permute(0, 2, 1)
        lap = R.batch_local_dist_vectorized(l, l[p])
        lan = R.batch_local_dist_vectorized(l, l[n])
        g, lo = R.triplet_from_dists(ap, an, 0.3), R.triplet_from_dists(lap, lan, 0.3)
        return (g + lo, d) if mutual else (g, lo)

    assert_same(lambda t, l: A.TripletLossAlignedReID(mutual_flag=mutual)(t, EQUAL_K, l), ref, x, lf, **TOL)


def test_triplet_loss_aligned_reid_bad_input():
    with pytest.raises(ValueError, match=r"local_features must hold one image per row"):
        A.TripletLossAlignedReID()(rand(4, 3), torch.arange(4), rand(5, 3, 2))
    with pytest.raises(TypeError, match="targets must be an integer tensor"):
        A.TripletLossAlignedReID()(rand(4, 3), torch.rand(4).double(), rand(4, 3, 2))
