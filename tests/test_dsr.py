"""dsr_dist: DSR reconstruction distance (He et al., CVPR 2018), FISTA Lasso per query cell (issue 7)."""

import numpy as np
import pytest
import torch

import partdist
from partdist import reference as R

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


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
@pytest.mark.parametrize("beta", [0.0, 0.05, 0.5, 3.0])
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


def test_backward_raises_clearly():
    x, y = rand_grid(2, 2, 2, 2)
    x.requires_grad_()
    out = partdist.dsr_dist(x, y)
    with pytest.raises(RuntimeError, match="dsr_dist is not differentiable"):
        out.sum().backward()


def test_opcheck():
    x, y = rand_grid(2, 3, 3, 4)
    torch.library.opcheck(torch.ops.partdist.dsr_dist, (x, y, 0.1, 50, 1e-6, 0))
    torch.library.opcheck(torch.ops.partdist.dsr_dist, (x, y, 0.0, 10, 0.0, 2))


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
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):
    x, y = rand_grid(9, 13, 6, 10, C=16, dtype=dtype)
    cpu = partdist.dsr_dist(x, y, beta=0.1, max_iter=100)
    gpu = partdist.dsr_dist(x.cuda(), y.cuda(), beta=0.1, max_iter=100, chunk_size=20)
    t = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.cpu(), cpu, **t)


@needs_cuda
def test_cuda_opcheck_and_devices():
    x, y = rand_grid(2, 3, 3, 4, device="cuda")
    torch.library.opcheck(torch.ops.partdist.dsr_dist, (x, y, 0.1, 50, 1e-6, 0))
    with pytest.raises(ValueError, match="same device"):
        partdist.dsr_dist(x, y.cpu())


def test_torch_compile_fullgraph():
    x, y = rand_grid(2, 3, 3, 4)
    compiled = torch.compile(lambda a, b: partdist.dsr_dist(a, b, beta=0.2), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, y), partdist.dsr_dist(x, y, beta=0.2))
