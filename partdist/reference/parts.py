"""Part-distance and DSR references (``csrc/parts``): what :func:`partdist.part_dist` and
:func:`partdist.dsr_dist` are tested and benchmarked against, and Lasso solvers to check
the DSR codes: :func:`lasso_fista_reference` (FISTA written from its definition, with the
kernel's step and stopping rule, batched over independent problems), :func:`lasso_cd`
(coordinate descent, one problem) and :func:`lasso_objective`. Nothing here calls the
production solver (:func:`partdist.ops.parts.lasso_fista`).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "part_dist_loop",
    "part_dist_vectorized",
    "lasso_fista_reference",
    "lasso_cd",
    "lasso_objective",
    "dsr_dist_vectorized",
]


def part_dist_loop(x, y, vis_x, vis_y, empty_value=float("inf")):
    """Visibility-weighted mean part distance, pair by pair, part by part (the definition).

    ``D[a, b] = sum_p v_p ||x[a,p] - y[b,p]|| / sum_p v_p``, ``v_p = vis_x[a,p] vis_y[b,p]``;
    ``empty_value`` where ``sum_p v_p == 0``. Norms by ``torch.linalg.vector_norm``
    (subgradient 0 at 0), so autograd through this is the reference gradient
    (including ``dD/dv`` of a part whose weight is 0; the gradient of an empty pair is 0).
    """
    vx, vy = vis_x.to(x.dtype), vis_y.to(x.dtype)
    M, N, P = x.shape[0], y.shape[0], x.shape[1]
    rows = []
    for a in range(M):
        row = []
        for b in range(N):
            num = x.new_zeros(())
            den = x.new_zeros(())
            for p in range(P):
                v = vx[a, p] * vy[b, p]
                num = num + v * torch.linalg.vector_norm(x[a, p] - y[b, p])
                den = den + v
            if den.item() > 0:
                row.append(num / den)
            else:
                row.append(x.new_tensor(empty_value) + 0 * num)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def part_dist_vectorized(x, y, vis_x, vis_y, empty_value=float("inf"), chunk_size=None):
    """The same, as PyTorch practice writes it: per-part distances from one GEMM per
    part (``sqrt(clamp(|a|^2 + |b|^2 - 2ab, 0))``, ``[P, M, N]``) reduced with the
    visibility weights; ``chunk_size`` queries at a time bounds the ``P x chunk x N``
    intermediate. Forward reference for large inputs (its gradient is NaN where a
    part distance is exactly 0)."""
    vx, vy = vis_x.to(x.dtype), vis_y.to(x.dtype)
    xp, yp = x.transpose(0, 1), y.transpose(0, 1)  # [P, M, C], [P, N, C]
    yy = yp.pow(2).sum(-1).unsqueeze(1)  # [P, 1, N]
    step = x.shape[0] if not chunk_size else chunk_size
    outs = []
    for a0 in range(0, x.shape[0], max(step, 1)):
        xa = xp[:, a0 : a0 + step]
        xx = xa.pow(2).sum(-1).unsqueeze(2)
        d = (xx + yy - 2 * torch.bmm(xa, yp.transpose(1, 2))).clamp_min(0).sqrt()  # [P, m, N]
        v = vx[a0 : a0 + step].t().unsqueeze(2) * vy.t().unsqueeze(1)  # [P, m, N]
        den = v.sum(0)
        num = (v * d).sum(0)
        safe = torch.where(den > 0, den, torch.ones_like(den))
        outs.append(torch.where(den > 0, num / safe, torch.full_like(den, empty_value)))
    return torch.cat(outs, 0)


def lasso_cd(G, b, beta, iters=2000, tol=1e-15):
    """Plain cyclic coordinate descent for the same Lasso, one problem (G ``[L, L]``, b ``[L]``):
    ``w_k = soft(b_k - sum_{j != k} G_kj w_j, beta) / G_kk``, until a sweep changes no
    coordinate by more than ``tol`` or ``iters`` sweeps. Slow and simple; for tests."""
    G, b = G.tolist(), b.tolist()
    L = len(b)
    w = [0.0] * L
    for _ in range(iters):
        change = 0.0
        for k in range(L):
            if G[k][k] <= 0:
                continue
            r = b[k] - sum(G[k][j] * w[j] for j in range(L) if j != k)
            v = math.copysign(max(abs(r) - beta, 0.0), r) / G[k][k]
            change = max(change, abs(v - w[k]))
            w[k] = v
        if change <= tol:
            break
    return torch.tensor(w, dtype=torch.float64)


def lasso_fista_reference(G, B, beta, lip, max_iter=200, tol=1e-5):
    """FISTA (Beck and Teboulle, 2009) for ``min_w 1/2 w^T G w - b^T w + beta ||w||_1``, one
    problem per column ``b`` of ``B``: G ``[..., L, L]`` and lip ``[...]`` (the largest
    eigenvalue of G) broadcast against B ``[..., L, K]``. Returns w ``[..., L, K]``.

    Iteration k (from ``w_0 = z_0 = 0``, ``t_0 = 1``): ``w_k+1 = soft(z_k - (G z_k - b) / lip,
    beta / lip)``, ``t_k+1 = (1 + sqrt(1 + 4 t_k^2)) / 2``, ``z_k+1 = w_k+1 + (t_k - 1) / t_k+1
    (w_k+1 - w_k)``. A problem stops at the first iteration with ``||w_k+1 - w_k|| <= tol
    ||w_k+1||`` (keeping ``w_k+1``) or after ``max_iter`` iterations; one with ``lip == 0``
    (``G = 0``) has the solution 0 and takes no step."""
    batch = torch.broadcast_shapes(G.shape[:-2], B.shape[:-2], lip.shape)
    L, K = B.shape[-2], B.shape[-1]
    G = G.expand(batch + (L, L))
    B = B.expand(batch + (L, K))
    lip = lip.expand(batch)[..., None, None]  # [..., 1, 1]
    has_step = lip > 0
    inv_lip = 1 / torch.where(has_step, lip, torch.ones_like(lip))
    w = torch.zeros_like(B)
    z = torch.zeros_like(B)
    running = has_step.expand(batch + (1, K)).clone()  # per problem (column)
    t = 1.0
    for _ in range(max_iter):
        if not running.any():
            break
        grad = G @ z - B
        u = z - inv_lip * grad
        w_next = u.sign() * (u.abs() - beta * inv_lip).clamp_min(0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z_next = w_next + (t - 1) / t_next * (w_next - w)
        t = t_next
        converged = (w_next - w).pow(2).sum(-2, keepdim=True) <= tol * tol * w_next.pow(2).sum(-2, keepdim=True)
        w = torch.where(running, w_next, w)
        z = torch.where(running, z_next, z)
        running = running & ~converged
    return w


def lasso_objective(x, Y, w, beta):
    """``1/2 ||x - Y w||^2 + beta ||w||_1`` (x ``[C]``, Y ``[C, L]``, w ``[L]``)."""
    return 0.5 * (x - Y @ w).pow(2).sum() + beta * w.abs().sum()


def dsr_dist_vectorized(x, y, beta=0.1, max_iter=200, tol=1e-5, chunk_size=None):
    """DSR distance of all pairs in PyTorch: Gram matrices by GEMM, batched FISTA over
    every (query, gallery, query cell) at once (``chunk_size`` queries at a time) with
    :func:`lasso_fista_reference`: the step and stopping rule of the kernel. x ``[M, Lq, C]``, y ``[N, Lg, C]``
    -> ``[M, N]`` = mean over query cells of ``||x_n - Y w_n||^2``."""
    G = y @ y.transpose(1, 2)  # [N, Lg, Lg]
    lip = torch.linalg.eigvalsh(G)[..., -1].clamp_min(0)  # [N]
    step = x.shape[0] if not chunk_size else chunk_size
    outs = []
    for a0 in range(0, x.shape[0], max(step, 1)):
        xa = x[a0 : a0 + step]
        B = y.unsqueeze(0) @ xa.transpose(1, 2).unsqueeze(1)  # [m, N, Lg, Lq]
        w = lasso_fista_reference(G.unsqueeze(0), B, beta, lip.unsqueeze(0), max_iter, tol)
        xx = xa.pow(2).sum(-1).unsqueeze(1)  # [m, 1, Lq]
        err = xx - 2 * (w * B).sum(-2) + (w * (G.unsqueeze(0) @ w)).sum(-2)
        outs.append(err.clamp_min(0).mean(-1))
    return torch.cat(outs, 0)
