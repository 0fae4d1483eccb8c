"""dsr_dist: DSR reconstruction distance (He et al., CVPR 2018), FISTA Lasso per query cell."""

import numpy as np
import pytest
import torch

import partdist
from partdist import reference as R


def rand_grid(M, N, Lq, Lg, C=8, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, Lq, C, generator=g, dtype=dtype)
    y = torch.randn(N, Lg, C, generator=g, dtype=dtype)
    return x.to(device), y.to(device)


try:
    from scipy.optimize import minimize
except ImportError:  # the CUDA check venv has no scipy: the coordinate-descent check still runs
    minimize = None


def scipy_lasso(x, Y, beta):
    """min 1/2 ||x - Y w||^2 + beta ||w||_1 by L-BFGS-B on w = u - v, u, v >= 0."""

    x, Y = x.numpy(), Y.numpy()
    L = Y.shape[1]

    def f(z):
        u, v = z[:L], z[L:]
        r = x - Y @ (u - v)
        val = 0.5 * r @ r + beta * z.sum()
        g = -Y.T @ r
        return val, np.concatenate([g + beta, -g + beta])

    res = minimize(f, np.zeros(2 * L), jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * L),
                   options=dict(maxiter=20000, ftol=1e-15, gtol=1e-12))
    return torch.from_numpy(res.x[:L] - res.x[L:])


# ------------------------------------------------------------------ values
@pytest.mark.parametrize(
    "beta", [pytest.param(0.0, marks=pytest.mark.slow), pytest.param(0.05, marks=pytest.mark.slow), 0.5, 3.0]
)
def test_against_scipy_and_coordinate_descent(beta):
    # C > Lg: a unique Lasso solution; converge tightly and compare objective values
    x, y = rand_grid(2, 3, 4, 5, C=12)
    out = partdist.dsr_dist(x, y, beta=beta, max_iter=20000, tol=1e-13)
    for a in range(2):
        for b in range(3):
            Y = y[b].T
            errs = []
            for n in range(4):
                w_cd = R.lasso_cd(Y.T @ Y, Y.T @ x[a, n], beta, iters=20000)
                o_cd = R.lasso_objective(x[a, n], Y, w_cd, beta)
                if minimize is not None:
                    w_sp = scipy_lasso(x[a, n], Y, beta)
                    o_sp = R.lasso_objective(x[a, n], Y, w_sp, beta)
                    assert abs(o_sp - o_cd) < 1e-7 * max(1.0, float(o_cd))
                errs.append((x[a, n] - Y @ w_cd).pow(2).sum())
            torch.testing.assert_close(out[a, b], torch.stack(errs).mean(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("M,N,Lq,Lg", [(1, 1, 1, 1), (3, 4, 5, 6), (2, 5, 7, 3), (4, 2, 2, 9)])
def test_values_against_vectorized_reference(dtype, M, N, Lq, Lg):
    x, y = rand_grid(M, N, Lq, Lg, dtype=dtype)
    out = partdist.dsr_dist(x, y, beta=0.2, max_iter=300, tol=1e-6)
    assert out.shape == (M, N) and out.dtype == dtype
    ref = R.dsr_dist_vectorized(x, y, beta=0.2, max_iter=300, tol=1e-6)
    t = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out, ref, **t)


def test_same_iterates_at_few_iterations():
    # the stopping rule and step of kernel and reference agree exactly, also unconverged
    x, y = rand_grid(3, 3, 4, 8, C=6)
    for it in (1, 2, 5):
        torch.testing.assert_close(
            partdist.dsr_dist(x, y, beta=0.1, max_iter=it, tol=0.0),
            R.dsr_dist_vectorized(x, y, beta=0.1, max_iter=it, tol=0.0),
            rtol=1e-11, atol=1e-11,
        )


def test_properties():
    x, y = rand_grid(3, 4, 4, 6, C=8)
    # query cells that are gallery cells reconstruct exactly when beta = 0
    q = y[:2, :3].clone()
    d = partdist.dsr_dist(q, y, beta=0.0, max_iter=5000, tol=1e-14)
    assert d[0, 0] < 1e-10 and d[1, 1] < 1e-10
    # large beta: w = 0, the distance is the mean squared norm of the query cells
    big = partdist.dsr_dist(x, y, beta=1e6)
    torch.testing.assert_close(big, x.pow(2).sum(-1).mean(-1, keepdim=True).expand(3, 4))
    # a zero gallery: w = 0 as well (L = 0, no iterations)
    z = partdist.dsr_dist(x, torch.zeros_like(y), beta=0.1)
    torch.testing.assert_close(z, x.pow(2).sum(-1).mean(-1, keepdim=True).expand(3, 4))
    # more sparsity never improves the fit
    d1 = partdist.dsr_dist(x, y, beta=0.01, max_iter=3000, tol=1e-12)
    d2 = partdist.dsr_dist(x, y, beta=1.0, max_iter=3000, tol=1e-12)
    assert (d2 >= d1 - 1e-9).all()


@pytest.mark.parametrize("chunk", [1, 2, 5, 100])
def test_chunk_size_does_not_change_result(chunk):
    x, y = rand_grid(5, 7, 3, 4)
    torch.testing.assert_close(partdist.dsr_dist(x, y, chunk_size=chunk), partdist.dsr_dist(x, y), rtol=1e-12, atol=1e-12)


def test_empty_and_reduced_precision():
    x, y = rand_grid(0, 3, 2, 2)
    assert partdist.dsr_dist(x, y).shape == (0, 3)
    x, y = rand_grid(3, 4, 4, 5, dtype=torch.float32)
    out = partdist.dsr_dist(x.bfloat16(), y.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = partdist.dsr_dist(x.bfloat16().float(), y.bfloat16().float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ gradients
def closed_form_dsr(x, y, beta):
    """D [M, N] by autograd-able closed form: the Lasso solution's active set and signs come
    from coordinate descent (detached), then w_A = (Y_A^T Y_A)^-1 (Y_A^T x_n - beta s_A)."""
    M, Lq, _ = x.shape
    out = []
    for a in range(M):
        row = []
        for b in range(y.shape[0]):
            Y = y[b].T
            errs = []
            for n in range(Lq):
                with torch.no_grad():
                    w = R.lasso_cd(Y.T @ Y, Y.T @ x[a, n], beta, iters=50000)
                act = w != 0
                YA = Y[:, act]
                wA = torch.linalg.solve(YA.T @ YA, YA.T @ x[a, n] - beta * torch.sign(w[act]))
                errs.append((x[a, n] - YA @ wA).pow(2).sum())
            row.append(torch.stack(errs).mean())
        out.append(torch.stack(row))
    return torch.stack(out)


def sparsity(x, y, beta):
    ws = [R.lasso_cd(y[b] @ y[b].T, y[b] @ x[a, n], beta, iters=50000)
          for a in range(x.shape[0]) for b in range(y.shape[0]) for n in range(x.shape[1])]
    w = torch.stack(ws)
    return (w == 0).double().mean().item()


CONVERGED = dict(max_iter=20000, tol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.5])
def test_gradcheck_float64(beta):
    # Lg <= C: Y^T Y invertible; FISTA run to convergence so its active set is the Lasso's
    x, y = rand_grid(2, 3, 3, 4, C=7, seed=1)
    if beta > 0:  # some coefficients zero and some not: the active-set logic is exercised
        assert 0.1 < sparsity(x, y, beta) < 0.9
    x.requires_grad_()
    y.requires_grad_()
    f = lambda a, b: partdist.dsr_dist(a, b, beta=beta, **CONVERGED)
    assert torch.autograd.gradcheck(f, (x, y), eps=1e-7, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.2, 1.0])
def test_grad_matches_closed_form_autograd(beta):
    x, y = rand_grid(2, 2, 3, 5, C=8, seed=2)
    g = torch.randn(2, 2, dtype=x.dtype, generator=torch.Generator().manual_seed(3))
    x1, y1 = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = partdist.dsr_dist(x1, y1, beta=beta, **CONVERGED)
    gx, gy = torch.autograd.grad(out, (x1, y1), g)
    x2, y2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    ref = closed_form_dsr(x2, y2, beta)
    rx, ry = torch.autograd.grad(ref, (x2, y2), g)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gx, rx, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gy, ry, rtol=1e-7, atol=1e-9)


def test_grad_when_all_codes_are_zero():
    # beta >= max |Y^T x_n|: w* = 0, D = mean_n ||x_n||^2, dD/dx = 2 x / Lq, dD/dy = 0
    x, y = rand_grid(3, 2, 4, 3, C=5, seed=4)
    x.requires_grad_()
    y.requires_grad_()
    out = partdist.dsr_dist(x, y, beta=1e4)
    out.sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() * y.shape[0] / x.shape[1])
    assert torch.equal(y.grad, torch.zeros_like(y))
    # a zero gallery (no FISTA iterations) behaves the same
    z = torch.zeros_like(y).requires_grad_()
    x.grad = None
    partdist.dsr_dist(x, z).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach() * y.shape[0] / x.shape[1])
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_grad_sparse_upstream_and_chunks(chunk):
    # only pairs with a nonzero incoming gradient are recomputed; tiling changes nothing
    x, y = rand_grid(3, 4, 3, 4, C=6, seed=5)
    g = torch.zeros(3, 4, dtype=x.dtype)
    g[0, 1], g[2, 3], g[2, 0] = 1.0, -2.0, 0.5
    x1, y1 = x.clone().requires_grad_(), y.clone().requires_grad_()
    gx, gy = torch.autograd.grad(partdist.dsr_dist(x1, y1, beta=0.3, chunk_size=chunk, **CONVERGED), (x1, y1), g)
    x2, y2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    full = partdist.dsr_dist(x2, y2, beta=0.3, **CONVERGED)
    rx, ry = torch.autograd.grad((full * g).sum(), (x2, y2))
    torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gy, ry, rtol=1e-12, atol=1e-12)
    assert torch.equal(gx[1], torch.zeros_like(gx[1])) and torch.equal(gy[2], torch.zeros_like(gy[2]))


def test_grad_default_solver_settings_float32():
    # the defaults (max_iter=200, tol=1e-5) in float32: close to the converged float64 gradient
    x, y = rand_grid(2, 3, 4, 5, C=16, seed=6)
    x1, y1 = x.float().requires_grad_(), y.float().requires_grad_()
    partdist.dsr_dist(x1, y1, beta=0.3).sum().backward()
    x2, y2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    partdist.dsr_dist(x2, y2, beta=0.3, **CONVERGED).sum().backward()
    torch.testing.assert_close(x1.grad.double(), x2.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(y1.grad.double(), y2.grad, rtol=1e-3, atol=1e-3)
    # reduced precision: computed in float32, returned in the input dtype
    xb, yb = x.bfloat16().requires_grad_(), y.bfloat16().requires_grad_()
    partdist.dsr_dist(xb, yb, beta=0.3).sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and yb.grad.dtype == torch.bfloat16
    assert torch.isfinite(xb.grad.float()).all() and torch.isfinite(yb.grad.float()).all()


@pytest.mark.slow
def test_grad_more_gallery_cells_than_channels():
    # Lg > C: Y^T Y is singular, but the converged Lasso keeps <= C active cells (Y_A full rank)
    x, y = rand_grid(2, 2, 2, 7, C=4, seed=8)
    x.requires_grad_()
    y.requires_grad_()
    f = lambda a, b: partdist.dsr_dist(a, b, beta=0.4, **CONVERGED)
    assert torch.autograd.gradcheck(f, (x, y), eps=1e-7, atol=1e-6, rtol=1e-5)
    # unconverged FISTA (defaults) may keep more active cells than channels: the singular
    # active block goes to the pseudo-inverse, the gradient stays finite and moderate
    for dtype in (torch.float64, torch.float32):
        xd, yd = x.detach().to(dtype).requires_grad_(), y.detach().to(dtype).requires_grad_()
        partdist.dsr_dist(xd, yd, beta=0.05).sum().backward()
        assert xd.grad.abs().max() < 10 and yd.grad.abs().max() < 10


def test_grad_duplicate_gallery_cells():
    # duplicated cells: the Lasso fit (hence D) is that of the gallery without duplicates;
    # FISTA splits the code evenly, the pseudo-inverse keeps that split
    x, y = rand_grid(2, 2, 3, 3, C=6, seed=9)
    x1, y1 = x.clone().requires_grad_(), y.clone().requires_grad_()
    d1 = partdist.dsr_dist(x1, y1, beta=0.2, **CONVERGED)
    d1.sum().backward()
    x2, y2 = x.clone().requires_grad_(), torch.cat([y, y], 1).requires_grad_()
    d2 = partdist.dsr_dist(x2, y2, beta=0.2, **CONVERGED)
    d2.sum().backward()
    torch.testing.assert_close(d2, d1, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(y2.grad[:, :3] + y2.grad[:, 3:], y1.grad, rtol=1e-7, atol=1e-9)


def test_grad_only_x_or_only_y():
    x, y = rand_grid(2, 2, 2, 3, C=5, seed=7)
    xr = x.clone().requires_grad_()
    partdist.dsr_dist(xr, y, beta=0.2).sum().backward()
    yr = y.clone().requires_grad_()
    partdist.dsr_dist(x, yr, beta=0.2).sum().backward()
    x2, y2 = x.clone().requires_grad_(), y.clone().requires_grad_()
    partdist.dsr_dist(x2, y2, beta=0.2).sum().backward()
    torch.testing.assert_close(xr.grad, x2.grad)
    torch.testing.assert_close(yr.grad, y2.grad)


def test_no_double_backward():
    x, y = rand_grid(2, 2, 2, 3, C=5)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(partdist.dsr_dist(x, y, beta=0.2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="dsr_dist_backward.*no autograd formula"):
        gx.sum().backward()


@pytest.mark.slow
def test_opcheck():
    x, y = rand_grid(2, 3, 3, 4)
    torch.library.opcheck(torch.ops.partdist.dsr_dist, (x, y, 0.1, 50, 1e-6, 0))
    torch.library.opcheck(torch.ops.partdist.dsr_dist, (x, y, 0.0, 10, 0.0, 2))
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    torch.library.opcheck(torch.ops.partdist.dsr_dist, (xr, yr, 0.3, 500, 1e-10, 0))
    g = torch.randn(2, 3, dtype=x.dtype)
    torch.library.opcheck(torch.ops.partdist.dsr_dist_backward, (g, x, y, 0.3, 500, 1e-10, 0))


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_python():
    x, y = rand_grid(2, 3, 3, 4)
    f = partdist.dsr_dist
    with pytest.raises(ValueError, match=r"x must be a 3-D tensor \[M, Lq, C\]"):
        f(x[0], y)
    with pytest.raises(ValueError, match="same number of channels"):
        f(x, y[..., :3])
    with pytest.raises(TypeError, match="same dtype"):
        f(x, y.float())
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        f(x, y, beta=-1.0)
    with pytest.raises(ValueError, match="beta"):
        f(x, y, beta=float("inf"))
    with pytest.raises(ValueError, match="max_iter"):
        f(x, y, max_iter=0)
    with pytest.raises(TypeError, match="max_iter"):
        f(x, y, max_iter=2.5)
    with pytest.raises(ValueError, match="tol"):
        f(x, y, tol=-1e-3)
    with pytest.raises(ValueError, match="at most 256 gallery cells"):
        f(x, torch.randn(1, 257, 8, dtype=x.dtype))
    with pytest.raises(ValueError, match="at least one gallery cell"):
        f(x, y[:, :0])


def test_bad_inputs_op():
    x, y = rand_grid(2, 3, 3, 4)
    op = torch.ops.partdist.dsr_dist
    with pytest.raises(RuntimeError, match="beta must be a finite number"):
        op(x, y, -0.5, 10, 1e-5, 0)
    with pytest.raises(RuntimeError, match="max_iter"):
        op(x, y, 0.1, 0, 1e-5, 0)
    with pytest.raises(RuntimeError, match="at most 256 gallery cells"):
        op(x, torch.randn(1, 300, 8, dtype=x.dtype), 0.1, 10, 1e-5, 0)
    with pytest.raises(RuntimeError, match="same number of channels"):
        op(x, y[..., :2], 0.1, 10, 1e-5, 0)


# ---------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x, y = rand_grid(9, 13, 6, 10, C=16, dtype=dtype)
    cpu = partdist.dsr_dist(x, y, beta=0.1, max_iter=100)
    gpu = partdist.dsr_dist(x.cuda(), y.cuda(), beta=0.1, max_iter=100, chunk_size=20)
    t = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.cpu(), cpu, **t)


@pytest.mark.cuda
def test_cuda_opcheck_and_devices():
    x, y = rand_grid(2, 3, 3, 4, device="cuda")
    torch.library.opcheck(torch.ops.partdist.dsr_dist, (x, y, 0.1, 50, 1e-6, 0))
    with pytest.raises(ValueError, match="same device"):
        partdist.dsr_dist(x, y.cpu())


@pytest.mark.cuda
def test_cuda_grad_matches_cpu():
    x, y = rand_grid(3, 4, 3, 5, C=9, seed=10)
    g = torch.randn(3, 4, dtype=x.dtype, generator=torch.Generator().manual_seed(11))
    grads = []
    for dev in ("cpu", "cuda"):
        xd, yd = x.to(dev).requires_grad_(), y.to(dev).requires_grad_()
        out = partdist.dsr_dist(xd, yd, beta=0.3, chunk_size=5, **CONVERGED)
        grads.append([t.cpu() for t in torch.autograd.grad(out, (xd, yd), g.to(dev))])
    for c, d in zip(*grads):
        torch.testing.assert_close(d, c, rtol=1e-8, atol=1e-10)
    xc, yc = x[:2, :2].cuda().requires_grad_(), y[:2].cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: partdist.dsr_dist(a, b, beta=0.3, **CONVERGED), (xc, yc),
                                    eps=1e-7, atol=1e-6, rtol=1e-5)
    torch.library.opcheck(torch.ops.partdist.dsr_dist, (xc, yc, 0.3, 500, 1e-10, 0))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    x, y = rand_grid(2, 3, 3, 4)
    compiled = torch.compile(lambda a, b: partdist.dsr_dist(a, b, beta=0.2), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, y), partdist.dsr_dist(x, y, beta=0.2))
    # backward through the compiled graph: the backward op is opaque (a fake kernel)
    fn = lambda a, b: partdist.dsr_dist(a, b, beta=0.2).sum()
    args = [t.clone().requires_grad_() for t in (x, y)]
    ref_args = [t.clone().requires_grad_() for t in (x, y)]
    torch.compile(fn, fullgraph=True, backend="aot_eager")(*args).backward()
    fn(*ref_args).backward()
    for a, r in zip(args, ref_args):
        torch.testing.assert_close(a.grad, r.grad)
