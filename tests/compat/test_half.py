"""partdist.compat in float16 / bfloat16 (and under torch.autocast): every shim is at
least as accurate as the function it replaces run in the same dtype.

Truth: the original's formula in float64 on the same (half-rounded) inputs. For each
output and each input gradient, the shim's relative L2 error against the truth must be
at most ``FACTOR`` times the original's (run in the half dtype) plus ``FLOOR`` units
of the dtype's epsilon (the rounding of the output itself); where the original's result
is not finite (float16 overflows in ``exp`` of AlignedReID's local distance and of the
soft margin), the shim's error must be below 4 epsilons.

The features are 2048-d with L2 norms between 40 and 50 (where ``||x||^3`` overflows
float16) and an exactly designed geometry after normalization (see :func:`design`):
the hardest positive and negative of every anchor lead the runner-up by 4.8 %, more
than the rounding of a half-precision distance, so that mining picks the same pairs in
every dtype and the comparison measures arithmetic, not a different choice.
"""

import math

import pytest
import torch

from partdist.compat import alignedreid as A
from partdist.compat import fastreid as FR
from partdist.compat import torchreid as T
from partdist.reference import originals as O

FACTOR, FLOOR = 1.5, 1.0
HALF = [torch.float16, torch.bfloat16]

# 3 identities x 3 images; searched for the largest lead of the hardest pairs
IDS, K = 3, 3
T_AXIS = (0.54, 1.56, 3.39)
ALPHA = (0.7, 0.87, 0.65, 0.36, 0.51, 0.72, 0.61, 0.97, 0.68)


def design(C=2048, radius=None, stripes=None, seed=0):
    """Features ``r_i * n_i``: ``n_i = alpha_i c_l + sqrt(1 - alpha_i^2) e_i`` with unit
    identity directions ``c_l`` (designed cosines) and a private axis ``e_i`` per image,
    rotated by random reflections (dense features, same geometry); ``r_i`` in [40, 50]
    (or ``radius``). With ``stripes``, every stripe has the same geometry."""
    g = torch.Generator().manual_seed(seed)
    N = IDS * K
    labels = torch.arange(N) // K
    c = torch.zeros(IDS, C, dtype=torch.float64)
    for a in range(IDS):
        c[a, a], c[a, IDS] = 1.0, T_AXIS[a]
    c = c / c.norm(dim=1, keepdim=True)
    al = torch.tensor(ALPHA, dtype=torch.float64)
    n = al[:, None] * c[labels]
    n[torch.arange(N), IDS + 1 + torch.arange(N)] = (1 - al * al).sqrt()
    if stripes is not None:
        n = n[:, None].repeat(1, stripes, 1)
        n = n + 0.05 * torch.randn(n.shape, generator=g, dtype=torch.float64) / math.sqrt(C)
        n = n / n.norm(dim=-1, keepdim=True)
    for _ in range(3):
        v = torch.randn(C, generator=g, dtype=torch.float64)
        v = v / v.norm()
        n = n - 2 * (n @ v)[..., None] * v
    r = 40 + 10 * torch.rand(*n.shape[:-1], 1, generator=g, dtype=torch.float64) if radius is None else radius
    perm = torch.randperm(N, generator=g)
    return (n * r)[perm], labels[perm]


def relerr(a, t):
    a, t = a.double(), t.double()
    err = (a - t).norm()
    return 0.0 if err == 0 else (err / t.norm()).item()


def run(fn, inputs, dtype, autocast=None):
    leaves = [x.to(dtype).detach().requires_grad_() for x in inputs]
    if autocast is None:
        out = fn(*leaves)
    else:
        with torch.autocast("cpu", dtype=autocast):
            out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    outs = [o for o in outs if isinstance(o, torch.Tensor) and o.is_floating_point()]
    g = torch.Generator().manual_seed(1)
    weights = [torch.rand(o.shape, generator=g, dtype=torch.float64) + 0.5 for o in outs]
    sum((o.double() * w).sum() for o, w in zip(outs, weights)).backward()
    return [o.detach() for o in outs], [x.grad for x in leaves], [o.dtype for o in outs]


def assert_as_accurate(shim, orig, inputs, dtype, autocast=None):
    """Values and gradients of ``shim`` in ``dtype`` against the float64 truth, compared
    with ``orig``'s own error in ``dtype``; also the same output dtypes as ``orig``."""
    ins = [x.to(dtype).double() for x in inputs]  # the half-rounded inputs, exactly
    t_out, t_grad, _ = run(orig, ins, torch.float64)
    s_out, s_grad, s_dt = run(shim, ins, dtype, autocast)
    o_out, o_grad, o_dt = run(orig, ins, dtype, autocast)
    assert s_dt == o_dt, f"output dtypes {s_dt} vs the original's {o_dt}"
    eps = torch.finfo(dtype).eps
    report = []
    for kind, ss, oo, tt in (("value", s_out, o_out, t_out), ("grad", s_grad, o_grad, t_grad)):
        for i, (s, o, t) in enumerate(zip(ss, oo, tt)):
            es, eo = relerr(s, t), relerr(o, t)
            bound = FACTOR * eo + FLOOR * eps if math.isfinite(eo) else 4 * eps
            report.append(f"{kind}{i}: shim {es:.2e} original {eo:.2e}")
            assert es <= bound, f"{kind} {i}: shim error {es:.3e} > {bound:.3e} (original {eo:.3e}); " + "; ".join(report)


def hinge_clear(dist_ap, dist_an, margin, dtype):
    """The margin hinge is not within rounding of a half-precision distance."""
    z = (dist_an - dist_ap - margin).abs() / dist_an.abs().clamp_min(1)
    return bool((z > torch.finfo(dtype).eps).all())


# ------------------------------------------------------------- the data
def test_the_data_separates_the_hardest_pairs():
    x, labels = design()
    assert 40 <= x.norm(dim=1).min() and x.norm(dim=1).max() <= 50
    xe, labels_e = design(radius=45.0)
    for d, lab in ((O.euclidean_dist(O.normalize(x), O.normalize(x)), labels),
                   (O.fastreid_cosine_dist(x, x), labels), (O.euclidean_dist(xe, xe), labels_e)):
        pos = lab[:, None] == lab[None]
        dp = torch.where(pos, d, -1).sort(1, descending=True).values
        dn = torch.where(~pos, d, float("inf")).sort(1).values
        assert ((dp[:, 0] - dp[:, 1]) / dp[:, 0]).min() > 0.04
        assert ((dn[:, 1] - dn[:, 0]) / dn[:, 0]).min() > 0.04


# ------------------------------------------------------------ distances
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_normalize(dtype):
    x, _ = design()
    assert_as_accurate(A.normalize, O.normalize, [x], dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("same", [False, True], ids=["x_y", "x_x"])
def test_distances(dtype, same):
    x, _ = design()
    y = design(seed=1)[0][:7]
    if same:
        assert_as_accurate(lambda a: A.euclidean_dist(a, a), lambda a: O.euclidean_dist(a, a), [x], dtype)
        assert_as_accurate(lambda a: FR.euclidean_dist(a, a), lambda a: O.fastreid_euclidean_dist(a, a), [x], dtype)
        assert_as_accurate(lambda a: FR.cosine_dist(a, a), lambda a: O.fastreid_cosine_dist(a, a), [x], dtype)
    else:
        assert_as_accurate(A.euclidean_dist, O.euclidean_dist, [x, y], dtype)
        assert_as_accurate(FR.euclidean_dist, O.fastreid_euclidean_dist, [x, y], dtype)
        assert_as_accurate(FR.cosine_dist, O.fastreid_cosine_dist, [x, y], dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_batch_distances(dtype):
    x, _ = design(C=256, stripes=6, radius=1.0)
    y = x.flip(0)[:, :5]
    assert_as_accurate(A.batch_euclidean_dist, O.batch_euclidean_dist, [x, y], dtype)
    assert_as_accurate(A.batch_local_dist, O.batch_local_dist, [x, y], dtype)
    assert_as_accurate(A.local_dist, O.local_dist, [x[:4], y[3:]], dtype)
    d = torch.rand(6, 5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_as_accurate(A.shortest_dist, O.shortest_dist, [d], dtype)


# --------------------------------------------------------------- losses
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("normalize_feature", [True, False])
def test_global_loss_and_hard_example_mining(dtype, normalize_feature):
    x, labels = design() if normalize_feature else design(radius=45.0)
    for tri in (A.TripletLoss(0.3), A.TripletLoss(None)):
        ref_tri = O.TripletLoss(tri.margin)
        assert_as_accurate(lambda a: A.global_loss(tri, a, labels, normalize_feature)[::3],
                           lambda a: O.global_loss(ref_tri, a, labels, normalize_feature)[::3], [x], dtype)
    d = O.euclidean_dist(x, x)
    assert_as_accurate(lambda t: A.hard_example_mining(t, labels), lambda t: O.hard_example_mining(t, labels), [d], dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_local_loss(dtype):
    lf, labels = design(C=256, stripes=6)
    _, p, n, *_ = O.global_loss(O.TripletLoss(0.3), lf.mean(1), labels)
    assert_as_accurate(lambda a: A.local_loss(A.TripletLoss(None), a, p, n),
                       lambda a: O.local_loss(O.TripletLoss(None), a, p, n), [lf], dtype)
    assert_as_accurate(lambda a: A.local_loss(A.TripletLoss(None), a, labels=labels)[:3],
                       lambda a: O.local_loss(O.TripletLoss(None), a, labels=labels)[:3], [lf], dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("margin", [3.0, 10.0])
def test_feature_triplet_losses(dtype, margin):
    x, labels = design(radius=45.0)
    d = O.euclidean_dist(x, x)
    ap, an = O.hard_example_mining(d, labels)
    assert hinge_clear(ap, an, margin, dtype)
    assert_as_accurate(lambda a: T.TripletLoss(margin)(a, labels),
                       lambda a: O.torchreid_triplet_loss(a, labels, margin), [x], dtype)
    assert_as_accurate(lambda a: A.TripletLoss(margin)(a, labels),
                       lambda a: O.torchreid_triplet_loss(a, labels, margin), [x], dtype)
    lf = design(C=256, stripes=6, radius=1.0, seed=3)[0].permute(0, 2, 1)  # not normalized by the loss
    assert_as_accurate(lambda a, b: A.TripletLossAlignedReID(margin)(a, labels, b),
                       lambda a, b: O.aligned_triplet_loss(a, labels, b, margin), [x, lf], dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("norm_feat", [True, False])
@pytest.mark.parametrize("hard_mining", [True, False])
@pytest.mark.parametrize("margin", [0.3, 0.0])
def test_fastreid_triplet_loss(dtype, norm_feat, hard_mining, margin):
    x, labels = design() if norm_feat else design(radius=45.0)
    if margin > 0 and not norm_feat:
        margin = 10.0  # the hinge away from rounding at distances near 50
    assert_as_accurate(lambda a: FR.triplet_loss(a, labels, margin, norm_feat, hard_mining),
                       lambda a: O.fastreid_triplet_loss(a, labels, margin, norm_feat, hard_mining), [x], dtype)


# -------------------------------------------------------------- autocast
@pytest.mark.parametrize("autocast", HALF, ids=str)
@pytest.mark.parametrize("feature_dtype", [torch.float32, "autocast"], ids=["float32_features", "half_features"])
def test_under_autocast(autocast, feature_dtype):
    """Features as a model under ``torch.autocast`` hands them over (the autocast dtype,
    or float32 after a float32 layer); the losses run inside the autocast region."""
    dtype = autocast if feature_dtype == "autocast" else feature_dtype
    x, labels = design()
    xe, labels_e = design(radius=45.0)
    lf, labels_l = design(C=256, stripes=6, seed=3)
    assert_as_accurate(lambda a: A.global_loss(A.TripletLoss(0.3), a, labels)[0],
                       lambda a: O.global_loss(O.TripletLoss(0.3), a, labels)[0], [x], dtype, autocast)
    assert_as_accurate(lambda a: A.local_loss(A.TripletLoss(None), a, labels=labels_l)[0],
                       lambda a: O.local_loss(O.TripletLoss(None), a, labels=labels_l)[0], [lf], dtype, autocast)
    assert_as_accurate(lambda a: T.TripletLoss(10.0)(a, labels_e),
                       lambda a: O.torchreid_triplet_loss(a, labels_e, 10.0), [xe], dtype, autocast)
    assert_as_accurate(lambda a: FR.triplet_loss(a, labels, 0.3, True, True),
                       lambda a: O.fastreid_triplet_loss(a, labels, 0.3, True, True), [x], dtype, autocast)
    assert_as_accurate(lambda a: FR.triplet_loss(a, labels_e, 10.0, False, True),
                       lambda a: O.fastreid_triplet_loss(a, labels_e, 10.0, False, True), [xe], dtype, autocast)
