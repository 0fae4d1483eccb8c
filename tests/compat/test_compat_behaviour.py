"""partdist.compat against the originals' semantics where they are easy to get wrong:
the hinge subgradient, tied hardest samples, unequal K, single-image identities,
pid -1 in the gallery, the CMC length, index dtypes, more than 128 stripes, and the
fast-reid shims (including install() on stand-in modules).

The "original" functions are those of :mod:`partdist.reference.originals`, written from
the public code's semantics (torchreid ``losses/hard_mine_triplet_loss.py`` and
``metrics/rank.py``, AlignedReID-Re-Production-Pytorch ``aligned_reid/model/loss.py``,
fast-reid 1.4 ``modeling/losses/triplet_loss.py``, ``modeling/losses/utils.py`` and
``evaluation/rank.py``); they run on the installed torch, so the comparison holds for
whatever subgradient this torch's losses use.
"""

import sys
import types

import numpy as np
import pytest
import torch

from partdist import reference as R
from partdist.compat import _common
from partdist.compat import alignedreid as A
from partdist.compat import fastreid as FR
from partdist.compat import torchreid as T
from partdist.eval import evaluate_rank
from partdist.reference import originals as O


def grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [t.grad for t in leaves]


def assert_same_grad(fn, ref, *inputs, **tol):
    a, ga = grads(fn, *inputs)
    b, gb = grads(ref, *inputs)
    torch.testing.assert_close(a, b.to(a.dtype), **tol)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, **tol)


# ---------------------------------------------------------------- hinge
def test_hinge_point_subgradient_is_the_installed_torchs():
    # an - ap == margin exactly for anchors 1 and 2 (the case from the bug report)
    x = torch.tensor([[0.0], [1.0], [1.25], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    _, g = grads(lambda t: T.TripletLoss(0.25)(t, labels), x)
    _, gr = grads(lambda t: O.torchreid_triplet_loss(t, labels, 0.25), x)
    torch.testing.assert_close(g[0], gr[0])
    # and the distance-vector call of the AlignedReID TripletLoss
    ap, an = torch.tensor([1.0, 2.0]), torch.tensor([1.25, 2.0])
    assert_same_grad(lambda a, b: A.TripletLoss(0.25)(a, b),
                     lambda a, b: torch.nn.MarginRankingLoss(0.25)(b, a, torch.ones(2)), ap, an)
    # fast-reid
    assert_same_grad(lambda t: FR.triplet_loss(t, labels, 0.25, False, True),
                     lambda t: O.fastreid_triplet_loss(t, labels, 0.25, False, True), x)


# ----------------------------------------------------------------- ties
def _dup_batch(seed=0, dtype=torch.float64):
    """A batch with duplicated images (torchreid's sampler draws with replacement)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 5, generator=g, dtype=dtype)
    x = base[[0, 1, 1, 2, 3, 3, 4, 5, 5, 5]]
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    return x, labels


def test_tied_hardest_samples_share_the_gradient_as_torchreid():
    x, labels = _dup_batch()
    # the duplicates make tied hardest positives (anchor 0: images 1 and 2) and tied
    # hardest negatives (images 7, 8, 9 for some anchors)
    assert_same_grad(lambda t: T.TripletLoss(5.0)(t, labels), lambda t: O.torchreid_triplet_loss(t, labels, 5.0), x)
    assert_same_grad(lambda t: A.TripletLoss(5.0)(t, labels), lambda t: O.torchreid_triplet_loss(t, labels, 5.0), x)


def test_aligned_view_mining_gives_ties_to_the_first_index():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x = base[[0, 1, 1, 2, 3, 3, 3, 4, 5, 5, 0, 1]]  # duplicates: tied hardest samples
    d = O.euclidean_dist(x, x)
    lab = torch.arange(3).repeat_interleave(4)  # equal K for the view-based original
    ap, an, p, n = A.hard_example_mining(d, lab, return_inds=True)
    rap, ran, rp, rn = R.hard_example_mining_view(d, lab, return_inds=True)
    assert torch.equal(p, rp) and torch.equal(n, rn)
    assert_same_grad(lambda t: A.hard_example_mining(t, lab)[0].sum() + A.hard_example_mining(t, lab)[1].sum(),
                     lambda t: sum(v.sum() for v in R.hard_example_mining_view(t, lab)), d)


@pytest.mark.parametrize("labels", [torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3]), torch.arange(6)],
                         ids=["unequal_k_and_singletons", "all_singletons"])
def test_unequal_k_and_single_image_identities(labels, fastreid_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(len(labels), 7, generator=g, dtype=torch.float64)
    assert_same_grad(lambda t: T.TripletLoss(0.3)(t, labels), lambda t: O.torchreid_triplet_loss(t, labels, 0.3), x)
    for norm in (False, True):
        assert_same_grad(lambda t: FR.triplet_loss(t, labels, 0.3, norm, True),
                         lambda t: O.fastreid_triplet_loss(t, labels, 0.3, norm, True), x, rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------- dtypes
def test_index_dtype_follows_labels():
    x = torch.randn(8, 4, dtype=torch.float64)
    for dt in (torch.int32, torch.int64):
        labels = (torch.arange(8) // 2).to(dt)
        d = A.euclidean_dist(x, x)
        _, _, p, n = A.hard_example_mining(d, labels, return_inds=True)
        assert p.dtype == dt and n.dtype == dt
        out = A.global_loss(A.TripletLoss(0.3), x, labels)
        assert out[1].dtype == dt and out[2].dtype == dt
        A.local_loss(A.TripletLoss(0.3), torch.randn(8, 3, 4, dtype=torch.float64), out[1], out[2])


# ------------------------------------------------------- >128 stripes


@pytest.mark.parametrize("shape", [(131, 3, 2), (2, 140), (130, 129)])
def test_shortest_dist_more_than_128_stripes(shape):
    g = torch.Generator().manual_seed(4)
    d = torch.rand(*shape, generator=g, dtype=torch.float64)
    if len(shape) == 2 and shape[0] > 100 and shape[1] > 100:
        d = (d * 4).round() / 4  # many ties of the minimum: the gradient splits
        d = d[:40, :130]  # keep the original loop's run time small: >128 columns only
    assert_same_grad(lambda t: A.shortest_dist(t).sum(), lambda t: O.shortest_dist(t).sum(), d)


# ------------------------------------------------------------- fast-reid loss
@pytest.fixture(params=["formula", "fused"])
def fastreid_path(request, monkeypatch):
    """fast-reid's hard mining runs its own formula below compat._common._SMALL and the
    fused mining above: test both on the same small batches."""
    monkeypatch.setattr(_common, "_SMALL", 1 << 62 if request.param == "formula" else 0)
    return request.param


@pytest.mark.parametrize("norm_feat", [False, True])
@pytest.mark.parametrize("hard_mining", [True, False])
@pytest.mark.parametrize("margin", [0.3, 0.0])
def test_fastreid_triplet_loss(norm_feat, hard_mining, margin, fastreid_path):
    x, labels = _dup_batch(5)
    assert_same_grad(lambda t: FR.triplet_loss(t, labels, margin, norm_feat, hard_mining),
                     lambda t: O.fastreid_triplet_loss(t, labels, margin, norm_feat, hard_mining), x,
                     rtol=1e-6, atol=1e-7)


def test_fastreid_no_negative_and_soft_margin_fallback(fastreid_path):
    x = torch.randn(5, 3, dtype=torch.float64)
    one_id = torch.zeros(5, dtype=torch.long)
    assert_same_grad(lambda t: FR.triplet_loss(t, one_id, 0.3, False, True),
                     lambda t: O.fastreid_triplet_loss(t, one_id, 0.3, False, True), x)
    # soft margin overflowing to inf in float32 -> fast-reid falls back to margin 0.3
    big = torch.tensor([[0.0], [200.0], [0.0], [200.0]])
    lab = torch.tensor([0, 0, 1, 1])
    ref = O.fastreid_triplet_loss(big, lab, 0.0, False, True)
    assert torch.isfinite(ref)
    assert_same_grad(lambda t: FR.triplet_loss(t, lab, 0.0, False, True),
                     lambda t: O.fastreid_triplet_loss(t, lab, 0.0, False, True), big)


def test_fastreid_distances():
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    y[1] = x[2]
    assert_same_grad(lambda a, b: (FR.euclidean_dist(a, b) * torch.arange(24.0).view(6, 4).double()).sum(),
                     lambda a, b: (O.euclidean_dist(a, b) * torch.arange(24.0).view(6, 4).double()).sum(), x, y)
    assert_same_grad(lambda a: (FR.euclidean_dist(a, a) ** 2).sum(), lambda a: (O.euclidean_dist(a, a) ** 2).sum(), x)

    cos_ref = O.fastreid_cosine_dist
    assert_same_grad(lambda a, b: (FR.cosine_dist(a, b) ** 2).sum(), lambda a, b: (cos_ref(a, b) ** 2).sum(), x, y)


# below compat._common._SMALL (work = outputs x channels) the plain formula runs, above
# it the fused autograd.Functions: both must give the originals' values and gradients
@pytest.mark.parametrize("C,fused", [(9, False), (400, True)], ids=["plain", "fused"])
def test_distances_both_paths_same_as_the_formula(C, fused):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, C, generator=g, dtype=torch.float64)
    y = torch.randn(48, C, generator=g, dtype=torch.float64)
    y[3] = x[5]  # a zero distance: the clamp region
    assert _common._fused(x, y) == fused and _common._fused(x, x) == fused
    w = torch.rand(64, 48, generator=g, dtype=torch.float64)
    assert_same_grad(lambda a, b: (A.euclidean_dist(a, b) * w).sum(), lambda a, b: (O.euclidean_dist(a, b) * w).sum(), x, y)
    assert_same_grad(lambda a, b: (FR.euclidean_dist(a, b) * w).sum(), lambda a, b: (O.euclidean_dist(a, b) * w).sum(), x, y)
    w2 = torch.rand(64, 64, generator=g, dtype=torch.float64)
    assert_same_grad(lambda a: (A.euclidean_dist(a, a) * w2).sum(), lambda a: (O.euclidean_dist(a, a) * w2).sum(), x)
    xb, yb = x.view(4, 16, C), y.view(4, 12, C)
    assert _common._fused(xb, yb) == fused
    wb = torch.rand(4, 16, 12, generator=g, dtype=torch.float64)
    assert_same_grad(lambda a, b: (A.batch_euclidean_dist(a, b) * wb).sum(),
                     lambda a, b: (R.batch_euclidean_dist(a, b) * wb).sum(), xb, yb)
    xb, yb = x.view(16, 4, C), x.view(16, 4, C).flip(1)  # zero distances in the batched form
    assert_same_grad(lambda a, b: (A.batch_euclidean_dist(a, b) ** 2).sum(),
                     lambda a, b: (R.batch_euclidean_dist(a, b) ** 2).sum(), xb, yb)
    # fast-reid's cosine distance, with a zero row (F.normalize's clamp region)
    cos_ref = O.fastreid_cosine_dist
    xz = x.clone()
    xz[7] = 0
    assert_same_grad(lambda a, b: (FR.cosine_dist(a, b) * w).sum(), lambda a, b: (cos_ref(a, b) * w).sum(), xz, y)
    assert_same_grad(lambda a: (FR.cosine_dist(a, a) * w2).sum(), lambda a: (cos_ref(a, a) * w2).sum(), xz)
    # without autograd: the same values, in place
    with torch.no_grad():
        torch.testing.assert_close(FR.cosine_dist(xz, y), cos_ref(xz, y), rtol=0, atol=0)
        torch.testing.assert_close(A.euclidean_dist(x, y), O.euclidean_dist(x, y), rtol=0, atol=0)
        torch.testing.assert_close(A.batch_euclidean_dist(xb, yb), R.batch_euclidean_dist(xb, yb), rtol=0, atol=0)


# ---------------------------------------------------------------- ranking
def _rank_case(seed, Q=40, G=300, junk=0.05, ties=False, ids=15):
    rng = np.random.default_rng(seed)
    dist = rng.random((Q, G)).astype(np.float32)
    if ties:
        dist = np.round(dist * 20) / 20
    q_pids, g_pids = rng.integers(0, ids, Q), rng.integers(0, ids, G)
    g_pids[rng.random(G) < junk] = -1
    return dist, q_pids, g_pids, rng.integers(0, 4, Q), rng.integers(0, 4, G)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("G,ids", [(300, 15), (700, 2)], ids=["counting", "binary_search"])
def test_evaluate_rank_pid_minus1_as_torchreid_and_fastreid(ties, G, ids):
    dist, qp, gp, qc, gc = _rank_case(7, G=G, ties=ties, ids=ids)
    cmc_o, ap_o, inp_o = O.eval_market1501(dist, qp, gp, qc, gc, 50, kind="stable")
    cmc, mAP = T.evaluate_rank(dist, qp, gp, qc, gc)
    np.testing.assert_allclose(cmc, cmc_o, rtol=1e-6)
    assert mAP == pytest.approx(np.mean(ap_o), rel=1e-9)
    cmc2, all_ap, all_inp = FR.evaluate_rank(dist, qp, gp, qc, gc)
    np.testing.assert_allclose(cmc2, cmc_o, rtol=1e-6)
    np.testing.assert_allclose(all_ap, ap_o, rtol=1e-9)
    np.testing.assert_allclose(all_inp, inp_o, rtol=1e-9)
    # partdist's own default drops pid -1 (Market-1501 junk): another mAP
    _, mAP_drop = evaluate_rank(dist, qp, gp, qc, gc)
    assert mAP_drop != pytest.approx(mAP)


def test_cmc_length_as_torchreid():
    dist, qp, gp, qc, gc = _rank_case(8, Q=5, G=12)
    cmc, _ = T.evaluate_rank(dist, qp, gp, qc, gc, max_rank=50)
    assert cmc.shape == (12,)  # num_g < max_rank: cut to num_g
    cmc, _ = T.evaluate_rank(dist, qp, gp, qc, gc, max_rank=5)
    assert cmc.shape == (5,)


# few true matches per query: each match's rank counted in one pass; many (more than
# csrc/rank's kCountMatches = 160): binary search of every item among the sorted matches
@pytest.mark.parametrize("G,ids", [(200, 15), (700, 2)], ids=["counting", "binary_search"])
def test_evaluate_rank_equals_a_stable_argsort_per_query(G, ids):
    # ties (also between matches and non-matches), inf and nan distances, a query with pid -1
    dist, qp, gp, qc, gc = _rank_case(9, Q=60, G=G, ties=True, ids=ids)
    dist = dist.astype(np.float64)
    dist[3, 5] = np.inf
    dist[4, 7] = np.nan
    dist[5, ::7] = np.nan
    dist[6, ::5] = -np.inf
    qp[7] = -1
    for ap in ("torchreid", "devkit"):
        for drop in (True, False):
            got = evaluate_rank(dist, qp, gp, qc, gc, ap=ap, drop_junk=drop, per_query=True)
            # reference: per-query stable argsort
            cmc_rows, aps, inps = [], [], []
            for i in range(len(qp)):
                o = np.argsort(dist[i], kind="stable")
                junk = (gp[o] == qp[i]) & (gc[o] == qc[i])
                if drop:
                    junk |= gp[o] == -1
                raw = (gp[o][~junk] == qp[i]).astype(float)
                if not raw.any():
                    continue
                ranks = np.nonzero(raw)[0] + 1.0
                t = np.arange(len(ranks))
                if ap == "torchreid":
                    aps.append(np.mean((t + 1) / ranks))
                else:
                    old = np.where(ranks > 1, t / np.maximum(ranks - 1, 1), 1.0)
                    aps.append(np.mean((old + (t + 1) / ranks) / 2))
                inps.append(len(ranks) / ranks[-1])
                cmc_rows.append(np.arange(1, 51) >= ranks[0])
            np.testing.assert_allclose(got[0], np.mean(cmc_rows, 0), rtol=1e-6)
            np.testing.assert_allclose(got[1], aps, rtol=1e-12)
            np.testing.assert_allclose(got[2], inps, rtol=1e-12)


# ------------------------------------------------------------ re-ranking
def test_fastreid_re_ranking():
    rng = np.random.default_rng(10)
    f = rng.random((30, 6)).astype(np.float32)
    d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
    qg, qq, gg = d[:8, 8:], d[:8, :8], d[8:, 8:]
    out = FR.re_ranking(qg, qq, gg, k1=6, k2=3, lambda_value=0.3)
    assert isinstance(out, np.ndarray) and out.shape == (8, 22)
    np.testing.assert_allclose(out, R.re_ranking_dense(qg, qq, gg, k1=6, k2=3, lambda_value=0.3), atol=1e-6)


# ------------------------------------------------------------ install()
@pytest.fixture
def fake_fastreid(monkeypatch):
    """Stand-ins for fast-reid's modules, bound as fast-reid binds them."""
    def orig_triplet(*a, **k):
        return "orig triplet"

    def orig_eval(*a, **k):
        return "orig eval"

    def orig_rerank(*a, **k):
        return "orig rerank"

    def orig_euc(x, y):
        return "orig euc"

    def orig_cos(x, y):
        return "orig cos"

    mods = {}

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        mods[name] = m
        monkeypatch.setitem(sys.modules, name, m)
        return m

    mod("fastreid")
    mod("fastreid.modeling")
    mod("fastreid.modeling.losses.utils", euclidean_dist=orig_euc, cosine_dist=orig_cos)
    mod("fastreid.modeling.losses.triplet_loss", triplet_loss=orig_triplet, euclidean_dist=orig_euc,
        cosine_dist=orig_cos)
    mod("fastreid.modeling.losses", triplet_loss=orig_triplet)  # `from .triplet_loss import triplet_loss`
    mod("fastreid.modeling.meta_arch")
    mod("fastreid.modeling.meta_arch.baseline", triplet_loss=orig_triplet)  # star import
    mod("fastreid.evaluation")
    mod("fastreid.evaluation.rank", evaluate_rank=orig_eval)
    mod("fastreid.evaluation.rerank", re_ranking=orig_rerank)

    def orig_roc(*a, **k):
        return "orig roc"

    def orig_jaccard(*a, **k):
        return "orig jaccard"

    def orig_build_dist(*a, **k):
        return "orig build_dist"

    mod("fastreid.evaluation.roc", evaluate_roc=orig_roc)
    mod("fastreid.utils")
    mod("fastreid.utils.compute_dist", build_dist=orig_build_dist, compute_jaccard_distance=orig_jaccard)
    mod("fastreid.evaluation.reid_evaluation", build_dist=orig_build_dist)  # `from ...compute_dist import build_dist`
    project = types.ModuleType("my_project_losses")
    project.triplet_loss = orig_triplet
    project.unrelated = orig_eval
    yield mods, project
    FR.uninstall()


def test_install_rebinds_the_names_fastreid_bound(fake_fastreid):
    mods, project = fake_fastreid
    done = FR.install(extra_modules=[project])
    assert mods["fastreid.modeling.meta_arch.baseline"].triplet_loss is FR.triplet_loss
    assert mods["fastreid.modeling.losses"].triplet_loss is FR.triplet_loss
    assert mods["fastreid.modeling.losses.triplet_loss"].triplet_loss is FR.triplet_loss
    assert mods["fastreid.modeling.losses.utils"].euclidean_dist is FR.euclidean_dist
    assert mods["fastreid.modeling.losses.utils"].cosine_dist is FR.cosine_dist
    assert mods["fastreid.evaluation.rank"].evaluate_rank is FR.evaluate_rank
    assert mods["fastreid.evaluation.rerank"].re_ranking is FR.re_ranking
    assert project.triplet_loss is FR.triplet_loss
    assert project.unrelated() == "orig eval"  # only names that hold a replaced function
    assert "fastreid.modeling.meta_arch.baseline.triplet_loss" in done
    # the evaluator's re-ranking route (build_dist(metric="jaccard") -> compute_jaccard_distance)
    assert mods["fastreid.evaluation.reid_evaluation"].build_dist is FR.build_dist
    assert mods["fastreid.utils.compute_dist"].build_dist is FR.build_dist
    assert mods["fastreid.utils.compute_dist"].compute_jaccard_distance is FR.compute_jaccard_distance
    assert mods["fastreid.evaluation.roc"].evaluate_roc is FR.evaluate_roc
    # the report: every replacement, and the module this fast-reid lacks (mgn) as absent, not failed
    assert isinstance(done, FR.InstallReport)
    assert done.failed == {} and done.missing == [] and done.not_replaced == []
    assert done.absent == ["fastreid.modeling.meta_arch.mgn"]
    assert "replaced fastreid.utils.compute_dist.compute_jaccard_distance" in str(done)
    # the evaluator's `from .rank import evaluate_rank` inside a method now gets ours
    from fastreid.evaluation.rank import evaluate_rank as ev  # noqa: E402 (the stand-in module)

    assert ev is FR.evaluate_rank
    again = FR.install()
    assert again == [] and again.not_replaced == []  # idempotent
    FR.uninstall()
    assert mods["fastreid.modeling.meta_arch.baseline"].triplet_loss() == "orig triplet"
    assert mods["fastreid.evaluation.rank"].evaluate_rank() == "orig eval"
    assert project.triplet_loss() == "orig triplet"


def test_install_without_fastreid(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastreid", None)
    with pytest.raises(ImportError, match="fast-reid is not installed"):
        FR.install()


# ------------------------------------------------------ host synchronization
@pytest.fixture
def no_host_sync(monkeypatch):
    """Fail on reading a tensor's value on the host (``bool``, ``int``, ``float``,
    ``.item()``, ``.tolist()``): the CPU stand-in for ``torch.cuda.set_sync_debug_mode``."""
    def boom(self, *a, **k):
        raise AssertionError("host synchronization: a tensor's value was read on the host")

    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, boom)


@pytest.mark.parametrize("labels", [torch.arange(12) // 4, torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])],
                         ids=["equal_k", "unequal_k_singleton"])
def test_losses_do_not_synchronize(labels, no_host_sync):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(12, 16, generator=g, requires_grad=True)
    lf = torch.randn(12, 4, 8, generator=g, requires_grad=True)
    losses = [
        T.TripletLoss()(x, labels),
        A.TripletLoss(0.3)(x, labels),
        A.TripletLoss(None)(x, labels),
        *A.TripletLossAlignedReID()(x, labels, lf.transpose(1, 2)),
        A.global_loss(A.TripletLoss(0.3), x, labels)[0],
        A.global_loss(O.TripletLoss(None), x, labels)[0],  # the original's TripletLoss
    ]
    _, p, n, *_ = A.global_loss(A.TripletLoss(0.3), x, labels)
    losses.append(A.local_loss(A.TripletLoss(0.3), lf, p, n)[0])
    losses.append(A.local_loss(A.TripletLoss(None), lf, labels=labels)[0])
    losses.append(A.TripletLoss(0.3)(torch.rand(12, requires_grad=True), torch.rand(12)))  # distance call
    for norm_feat in (False, True):
        for hard in (True, False):
            for margin in (0.3, 0.0):
                losses.append(FR.triplet_loss(x, labels, margin, norm_feat, hard))
    sum(losses).backward()


def test_install_reports_a_module_that_fails_to_import(fake_fastreid, monkeypatch):
    """fast-reid's evaluation chain fails to import on Python >= 3.10 (``from collections
    import Mapping``): install() names it, says why, warns, and replaces the rest."""
    mods, _ = fake_fastreid
    monkeypatch.delitem(sys.modules, "fastreid.evaluation.rank")

    real_import = __import__("importlib").import_module

    def fake_import(name, *a, **k):
        if name == "fastreid.evaluation.rank":
            raise ImportError("cannot import name 'Mapping' from 'collections'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(FR.importlib, "import_module", fake_import)
    with pytest.warns(RuntimeWarning, match="FAILED to import fastreid.evaluation.rank"):
        report = FR.install()
    assert not report.ok
    assert "collections.Mapping = collections.abc.Mapping" in report.failed["fastreid.evaluation.rank"]
    assert "evaluate_rank" in report.not_replaced
    assert mods["fastreid.modeling.losses"].triplet_loss is FR.triplet_loss
    assert "FAILED to import fastreid.evaluation.rank" in str(report)


# ------------------------------------------------ fast-reid: jaccard, build_dist, roc
def _clustered(n=60, ids=12, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(ids, d, generator=g)
    f = c[torch.arange(n) % ids] + 0.5 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(f, dim=1)


@pytest.mark.parametrize("k1,k2", [(20, 6), (6, 1), (5, 3)])
def test_compute_jaccard_distance_as_fastreid(k1, k2):
    f = _clustered()
    out = FR.compute_jaccard_distance(f, k1=k1, k2=k2)
    ref = O.fastreid_compute_jaccard_distance(f, k1=k1, k2=k2)
    assert out.dtype == np.float32 and out.shape == (60, 60)
    np.testing.assert_allclose(out, ref, atol=2e-6)
    assert FR.compute_jaccard_distance(f, k1, k2, fp16=True).dtype == np.float16


def test_build_dist_as_fastreid():
    f = _clustered(seed=1)
    q, g = f[:20], f[20:]
    np.testing.assert_allclose(FR.build_dist(q, g), (O.euclidean_dist(q, g) ** 2).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(FR.build_dist(q, g, "cosine"), (1 - q @ g.t()).numpy(), atol=1e-6)
    jac = FR.build_dist(q, g, "jaccard", k1=6, k2=3)
    np.testing.assert_allclose(jac, O.fastreid_compute_jaccard_distance(f, 6, 3)[:20, 20:], atol=2e-6)
    with pytest.raises(ValueError, match="metric must be"):
        FR.build_dist(q, g, "manhattan")
    with pytest.raises(ValueError, match="needs k1="):
        FR.build_dist(q, g, "jaccard")


@pytest.mark.parametrize("ties", [False, True])
def test_evaluate_roc_as_fastreid(ties):
    dist, qp, gp, qc, gc = _rank_case(12, Q=15, G=80, ties=ties)
    scores, labels = FR.evaluate_roc(dist, qp, gp, qc, gc)
    rs, rl = O.fastreid_evaluate_roc(dist, qp, gp, qc, gc, kind="stable")
    np.testing.assert_array_equal(scores, rs)
    np.testing.assert_array_equal(labels, rl)
    # with numpy's default sort, only the order of tied entries can differ
    rs, rl = O.fastreid_evaluate_roc(dist, qp, gp, qc, gc)
    np.testing.assert_array_equal(np.sort(scores[labels == 0]), np.sort(rs[rl == 0]))
    np.testing.assert_array_equal(labels, rl)


# ------------------------------------------------------------ torchreid install()
@pytest.fixture(params=["torchreid.reid", "torchreid"], ids=["pip_0.2.5_layout", "source_layout"])
def fake_torchreid(request, monkeypatch):
    """Stand-ins for torchreid's modules under either layout, bound as torchreid binds them."""
    p = request.param

    class OrigTripletLoss:
        def __init__(self, margin=0.3):
            self.margin = margin

    def orig_eval(*a, **k):
        return "orig eval"

    def orig_dist(*a, **k):
        return "orig dist"

    def orig_rerank(*a, **k):
        return "orig rerank"

    mods = {}

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        mods[name] = m
        monkeypatch.setitem(sys.modules, name, m)

    mod("torchreid")
    if p == "torchreid.reid":
        mod("torchreid.reid")
    else:
        monkeypatch.setitem(sys.modules, "torchreid.reid", None)  # not importable
    mod(f"{p}.losses.hard_mine_triplet_loss", TripletLoss=OrigTripletLoss)
    mod(f"{p}.losses", TripletLoss=OrigTripletLoss)
    mod(f"{p}.engine")
    mod(f"{p}.engine.image")
    mod(f"{p}.engine.image.triplet", TripletLoss=OrigTripletLoss)  # ImageTripletEngine builds it
    mod(f"{p}.metrics.rank", evaluate_rank=orig_eval)
    mod(f"{p}.metrics.distance", compute_distance_matrix=orig_dist)
    mod(f"{p}.metrics", evaluate_rank=orig_eval, compute_distance_matrix=orig_dist)
    mod(f"{p}.utils.rerank", re_ranking=orig_rerank)
    mod(f"{p}.utils", re_ranking=orig_rerank)
    mod(f"{p}.engine.engine", re_ranking=orig_rerank)  # Engine.test: metrics.* and re_ranking
    yield p, mods
    T.uninstall()


def test_torchreid_install_reaches_the_engine(fake_torchreid):
    p, mods = fake_torchreid
    report = T.install()
    assert report.ok, str(report)
    assert mods[f"{p}.engine.image.triplet"].TripletLoss is T.TripletLoss
    assert mods[f"{p}.losses"].TripletLoss is T.TripletLoss
    assert mods[f"{p}.metrics"].evaluate_rank is T.evaluate_rank
    assert mods[f"{p}.metrics"].compute_distance_matrix is T.compute_distance_matrix
    assert mods[f"{p}.engine.engine"].re_ranking is T.re_ranking
    assert f"{p}.engine.image.triplet.TripletLoss" in report
    assert "torchreid" in str(report)
    again = T.install()
    assert again == [] and again.ok
    T.uninstall()
    assert mods[f"{p}.engine.image.triplet"].TripletLoss is not T.TripletLoss
    assert mods[f"{p}.metrics"].evaluate_rank() == "orig eval"


def test_torchreid_install_without_torchreid(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchreid", None)
    with pytest.raises(ImportError, match="torchreid is not installed"):
        T.install()


def test_torchreid_float_labels_as_torchreid():
    x = torch.randn(8, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for flabels in (labels.double(), labels.float() * 0.5 + 0.25):
        assert_same_grad(lambda t: T.TripletLoss()(t, flabels), lambda t: O.torchreid_triplet_loss(t, flabels, 0.3), x)
    with pytest.raises(TypeError, match="targets must be integer"):
        T.TripletLoss()(x, labels.bool())


def test_torchreid_compute_distance_matrix():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(7, 16, generator=g), torch.randn(9, 16, generator=g)
    torch.testing.assert_close(T.compute_distance_matrix(a, b), O.euclidean_dist(a, b) ** 2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(T.compute_distance_matrix(a, b, "cosine"),
                               1 - torch.nn.functional.normalize(a) @ torch.nn.functional.normalize(b).t())
    with pytest.raises(ValueError, match="unknown distance metric"):
        T.compute_distance_matrix(a, b, "l1")
    with pytest.raises(ValueError, match="same feature dim"):
        T.compute_distance_matrix(a, b[:, :3])


def test_torchreid_re_ranking_takes_what_engine_test_passes():
    g = torch.Generator().manual_seed(6)
    qf, gf = torch.randn(8, 6, generator=g), torch.randn(22, 6, generator=g)
    qg = T.compute_distance_matrix(qf, gf).numpy()  # Engine.test: numpy q_g, tensor q_q / g_g
    qq, gg = T.compute_distance_matrix(qf, qf), T.compute_distance_matrix(gf, gf)
    out = T.re_ranking(qg, qq, gg, k1=6, k2=3)
    assert isinstance(out, np.ndarray) and out.shape == (8, 22) and out.dtype == np.float32
    np.testing.assert_allclose(out, R.re_ranking_dense(qg, qq.numpy(), gg.numpy(), k1=6, k2=3, lambda_value=0.3),
                               atol=1e-5)


# ------------------------------------------------------- the originals' exact orders
def test_fastreid_euclidean_dist_in_fastreids_op_order():
    """fast-reid rounds ``xx + yy - 2 * matmul`` (not AlignedReID's ``addmm_``): the same
    operations give the same float32 values, with and without autograd, fused or not."""
    g = torch.Generator().manual_seed(21)
    for C in (9, 512):
        x, y = torch.randn(64, C, generator=g), torch.randn(48, C, generator=g)
        ref = O.fastreid_euclidean_dist(x, y)
        with torch.no_grad():
            assert torch.equal(FR.euclidean_dist(x, y), ref)
        assert torch.equal(FR.euclidean_dist(x.requires_grad_(), y).detach(), ref)
        assert torch.equal(FR.euclidean_dist(x, x).detach(), O.fastreid_euclidean_dist(x, x))


@pytest.mark.parametrize("ties", [False, True])
def test_evaluate_rank_offers_the_originals_tie_order(ties):
    dist, qp, gp, qc, gc = _rank_case(22, G=300, ties=ties)
    cmc_o, ap_o, inp_o = O.eval_market1501(dist, qp, gp, qc, gc, 50)  # numpy's default sort, as the originals
    cmc, mAP = T.evaluate_rank(dist, qp, gp, qc, gc, kind="quicksort")
    np.testing.assert_allclose(cmc, cmc_o, rtol=1e-6)
    assert mAP == pytest.approx(np.mean(ap_o), rel=1e-12)
    cmc2, aps, inps = FR.evaluate_rank(dist, qp, gp, qc, gc, kind="quicksort")
    np.testing.assert_allclose(cmc2, cmc_o, rtol=1e-6)
    np.testing.assert_allclose(aps, ap_o, rtol=1e-12)
    np.testing.assert_allclose(inps, inp_o, rtol=1e-12)
    # the default (gallery order for ties) through the sorted path equals the C++ operator
    c3, a3, i3 = FR.evaluate_rank(dist, qp, gp, qc, gc)
    c4, a4, i4 = FR.evaluate_rank(dist, qp, gp, qc, gc, kind="mergesort")  # also stable
    np.testing.assert_allclose(c3, c4, rtol=1e-6)
    np.testing.assert_allclose(a3, a4, rtol=1e-12)
    np.testing.assert_allclose(i3, i4, rtol=1e-12)
