"""DMLI variants: soft-DMLI (gamma > 0), banded alignment, the unaligned distance."""

import pytest
import torch
from torch.autograd import gradcheck

import partdist
from partdist import reference as R

GAMMAS = [0.01, 0.1, 1.0, 5.0]


def rand_xy(N, m, n, C=6, M=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N if M is None else M, m, C, generator=g, dtype=dtype),
            torch.randn(N, n, C, generator=g, dtype=dtype))


# ---------------------------------------------------------------- soft-DMLI
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("m,n", [(1, 1), (1, 5), (4, 1), (3, 6), (6, 6)])
def test_soft_values_and_grads_match_logsumexp_reference(gamma, m, n):
    d = torch.rand(5, m, n, dtype=torch.float64)
    a = d.clone().requires_grad_()
    b = d.clone().requires_grad_()
    out = partdist.dmli(a, gamma=gamma)
    ref = R.dmli_soft(b, gamma)
    torch.testing.assert_close(out, ref)
    w = torch.rand(5, dtype=torch.float64)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.slow
@pytest.mark.parametrize("gamma", GAMMAS)
def test_soft_gradcheck_all_dp_ops(gamma):
    d = torch.rand(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: partdist.dmli(t, gamma=gamma), (d,))
    x, y = rand_xy(3, 4, 5)
    x.requires_grad_()
    y.requires_grad_()
    assert gradcheck(lambda a, b: partdist.batch_local_dist(a, b, gamma=gamma), (x, y))
    y2 = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda a, b: partdist.local_dist(a, b, chunk_size=3, gamma=gamma), (x, y2))


def test_soft_fused_ops_match_reference():
    x, y = rand_xy(6, 5, 7, M=4)
    ref_pairs = R.dmli_soft(torch.tanh(R.local_dist_matrix(x, y[:4], normalize=False) / 2), 0.3)
    torch.testing.assert_close(partdist.batch_local_dist(x, y[:4], gamma=0.3), ref_pairs)
    full = torch.linalg.vector_norm(x[:, None, :, None] - y[None, :, None], dim=-1)
    torch.testing.assert_close(partdist.local_dist(x, y, gamma=0.3), R.dmli_soft(torch.tanh(full / 2), 0.3))


def _planted_path_cells(b, m, n, gen):
    """Cells in [0.5, 1) except along one random monotone (right/down) path per matrix, in
    [0, 0.1): every other path differs from it in k >= 1 cells and costs at least 0.4 k more, so
    the hard minimum has one path with a wide margin (random cells have near-ties)."""
    d = 0.5 + 0.5 * torch.rand(b, m, n, dtype=torch.float64, generator=gen)
    for t in range(b):
        i = j = 0
        d[t, 0, 0] = 0.1 * torch.rand((), dtype=torch.float64, generator=gen)
        while (i, j) != (m - 1, n - 1):
            down = j == n - 1 or (i < m - 1 and bool(torch.rand((), generator=gen) < 0.5))
            i, j = (i + 1, j) if down else (i, j + 1)
            d[t, i, j] = 0.1 * torch.rand((), dtype=torch.float64, generator=gen)
    return d


def test_gamma_to_zero_converges_to_hard():
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(20, 6, 7, dtype=torch.float64, generator=gen)
    hard = partdist.dmli(d)
    errs = [(partdist.dmli(d, gamma=g) - hard).abs().max().item() for g in (1.0, 0.1, 0.01, 1e-3, 1e-5)]
    assert all(a >= b for a, b in zip(errs, errs[1:]))
    # softmin <= min, and the gap is at most gamma * log(number of paths) <= gamma * (m + n) log 2
    assert errs[-1] <= 1e-5 * 13 * 0.7
    assert (partdist.dmli(d, gamma=0.1) <= hard + 1e-12).all()
    # gradients converge too where the best path is unique with a margin (random cells have
    # near-ties, where the soft minimum splits the gradient for any gamma above the gap)
    d = _planted_path_cells(20, 6, 7, gen)
    a = d.clone().requires_grad_()
    partdist.dmli(a, gamma=1e-4).sum().backward()
    b = d.clone().requires_grad_()
    partdist.dmli(b).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)


def test_gamma_zero_is_exactly_the_hard_op():
    d = torch.randint(0, 3, (10, 5, 5)).float()
    assert torch.equal(partdist.dmli(d, gamma=0.0), partdist.dmli(d))
    assert torch.equal(partdist.dmli_path(d, gamma=0.0), partdist.dmli_path(d))
    x, y = rand_xy(4, 5, 5, dtype=torch.float32)
    assert torch.equal(partdist.batch_local_dist(x, y, gamma=0.0), partdist.batch_local_dist(x, y))


def test_soft_path_is_expected_alignment():
    d = torch.rand(4, 5, 6, dtype=torch.float64)
    e = partdist.dmli_path(d, gamma=0.5)
    assert e.dtype == d.dtype and e.shape == d.shape
    b = d.clone().requires_grad_()
    R.dmli_soft(b, 0.5).sum().backward()
    torch.testing.assert_close(e, b.grad)
    assert (e >= 0).all() and (e <= 1 + 1e-12).all()
    torch.testing.assert_close(e[:, 0, 0], torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(e[:, -1, -1], torch.ones(4, dtype=torch.float64))


# --------------------------------------------------------------------- band
@pytest.mark.parametrize("m,n,band", [(6, 6, 1), (6, 6, 2.5), (5, 8, 1.5), (8, 3, 1), (1, 4, 0), (3, 3, 100)])
@pytest.mark.parametrize("gamma", [0.0, 0.2])
def test_band_values_grads_and_path(m, n, band, gamma):
    d = torch.rand(5, m, n, dtype=torch.float64)
    a = d.clone().requires_grad_()
    b = d.clone().requires_grad_()
    out = partdist.dmli(a, gamma=gamma, band=band)
    ref = R.dmli_soft(b, gamma, band)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    mask = R.band_mask(m, n, band)
    assert (a.grad[:, ~mask] == 0).all()
    if gamma == 0:
        assert not partdist.dmli_path(d, band=band)[:, ~mask].any()


def test_band_ignores_cells_outside_it():
    # NaN outside the band does not reach the result
    d = torch.rand(2, 5, 5, dtype=torch.float64)
    d[:, 0, 4] = float("nan")
    assert torch.isfinite(partdist.dmli(d, band=1)).all()
    assert torch.isnan(partdist.dmli(d)).all()


def test_wide_band_equals_no_band():
    x, y = rand_xy(5, 6, 4, M=3)
    torch.testing.assert_close(partdist.local_dist(x, y, band=10.0), partdist.local_dist(x, y))
    torch.testing.assert_close(partdist.batch_local_dist(x, y[:3], band=5), partdist.batch_local_dist(x, y[:3]))


def test_band_gradcheck():
    x, y = rand_xy(3, 5, 6)
    x.requires_grad_()
    y.requires_grad_()
    assert gradcheck(lambda a, b: partdist.batch_local_dist(a, b, band=1.0), (x, y))
    assert gradcheck(lambda a, b: partdist.local_dist(a, b, band=1.0, gamma=0.3), (x, y))


def test_band_without_path_is_an_error_naming_the_arguments():
    with pytest.raises(ValueError, match=r"band=0.*no monotone path.*m=4, n=4"):
        partdist.dmli(torch.rand(4, 4), band=0)
    with pytest.raises(ValueError, match=r"band=0.2.*m=3, n=5"):
        partdist.local_dist(torch.rand(2, 3, 4), torch.rand(2, 5, 4), band=0.2)
    with pytest.raises(ValueError, match=r"band must be None or a finite number >= 0"):
        partdist.dmli(torch.rand(4, 4), band=-1)
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0"):
        partdist.dmli(torch.rand(4, 4), gamma=-0.1)
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0"):
        partdist.batch_local_dist(torch.rand(2, 4, 3), torch.rand(2, 4, 3), gamma=float("inf"))
    # the C++ op refuses it too when called directly
    with pytest.raises(RuntimeError, match=r"no monotone path"):
        torch.ops.partdist.dmli(torch.rand(1, 4, 4), 0.0, 0.0)


# ---------------------------------------------------------------- unaligned
@pytest.mark.parametrize("normalize", [True, False])
def test_unaligned_dist_values_and_grads(normalize):
    x, y = rand_xy(5, 6, 6, M=4)
    torch.testing.assert_close(partdist.unaligned_dist(x, y[:4], normalize), R.unaligned_dist(x, y[:4], normalize))
    torch.testing.assert_close(partdist.unaligned_dist(x, y, normalize, all_pairs=True, chunk_size=3),
                               R.unaligned_dist(x, y, normalize, all_pairs=True))
    torch.testing.assert_close(partdist.unaligned_dist(x, y[:4], normalize),
                               partdist.local_dist_matrix(x, y[:4], normalize).diagonal(dim1=1, dim2=2).sum(-1))
    x.requires_grad_()
    y.requires_grad_()
    assert gradcheck(lambda a, b: partdist.unaligned_dist(a, b[:4], normalize), (x, y))
    assert gradcheck(lambda a, b: partdist.unaligned_dist(a, b, normalize, all_pairs=True), (x, y))


def test_unaligned_needs_same_number_of_stripes():
    with pytest.raises(ValueError, match=r"same number of stripes \(m == n\)"):
        partdist.unaligned_dist(torch.rand(2, 4, 3), torch.rand(2, 5, 3))
    with pytest.raises(RuntimeError, match=r"m == n"):
        torch.ops.partdist.batch_local_dist(torch.rand(2, 4, 3), torch.rand(2, 5, 3), True, 0.0, -1.0, True)


@pytest.mark.cuda
def test_cuda_variants_match_cpu():
    x, y = rand_xy(9, 6, 7, C=16, M=5)
    for kw in ({"gamma": 0.3}, {"band": 1.5}, {"gamma": 0.1, "band": 2.0}):
        torch.testing.assert_close(partdist.local_dist(x.cuda(), y.cuda(), **kw).cpu(), partdist.local_dist(x, y, **kw))
        torch.testing.assert_close(partdist.batch_local_dist(x.cuda(), y[:5].cuda(), **kw).cpu(),
                                   partdist.batch_local_dist(x, y[:5], **kw))
    xs, ys = rand_xy(5, 6, 6, C=16)
    torch.testing.assert_close(partdist.unaligned_dist(xs.cuda(), ys.cuda()).cpu(), partdist.unaligned_dist(xs, ys))
    d = torch.rand(4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(partdist.dmli_path(d.cuda(), gamma=0.5).cpu(), partdist.dmli_path(d, gamma=0.5))


def test_aligned_triplet_loss_with_soft_dmli():
    from partdist.losses import AlignedTripletLoss, normalize_features

    torch.manual_seed(0)
    g = torch.randn(12, 16, dtype=torch.float64)
    lf = torch.randn(12, 5, 8, dtype=torch.float64)
    labels = torch.arange(4).repeat(3)
    res = AlignedTripletLoss(margin=0.3, gamma=0.5)(g, labels, lf)
    ln = normalize_features(lf)
    m = res.global_mining
    ap = partdist.batch_local_dist(ln, ln[m.p_inds], gamma=0.5)
    an = partdist.batch_local_dist(ln, ln[m.n_inds], gamma=0.5)
    torch.testing.assert_close(res.local_loss, torch.relu(ap - an + 0.3).mean())
    hard = AlignedTripletLoss(margin=0.3)(g, labels, lf)
    assert not torch.allclose(res.local_loss, hard.local_loss)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        AlignedTripletLoss(gamma=-1.0)
