"""``torch.compile`` with the default backend (inductor, which runs on the CPU here) on inputs
as a model hands them over: every public op on permuted stripe features, and a whole AlignedReID
training step (backbone, stripes pooled and permuted, global + DMLI triplet losses, backward,
optimizer step), values and gradients equal to eager."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import partdist
from partdist.losses import AlignedTripletLoss

pytestmark = pytest.mark.slow  # inductor compiles C++: tens of seconds per graph on 2 cores


def _permuted(t):
    """``t``'s values in the layout of ``feat.permute(0, 2, 1)`` of a pooled ``[N, C, H]`` map."""
    return t.permute(0, 2, 1).contiguous().permute(0, 2, 1)


def every_op(x, y, d, f, g, px, py, vis_x, vis_y, labels):
    return {
        "local_dist_matrix": partdist.local_dist_matrix(x, y),
        "dmli": partdist.dmli(d),
        "soft_dmli": partdist.dmli(d, gamma=0.5),
        "batch_local_dist": partdist.batch_local_dist(x, y),
        "batch_local_dist_soft_band": partdist.batch_local_dist(x, y, gamma=0.2, band=2.0),
        "local_dist": partdist.local_dist(x, y),
        "unaligned_dist": partdist.unaligned_dist(x, y),
        "triplet_hard_loss": partdist.triplet_hard_loss(partdist.local_dist(x, x), labels),
        "hard_example_mining": partdist.hard_example_mining(partdist.local_dist(x, x), labels).dist_ap,
        "neighborhood_diff": partdist.neighborhood_diff(f, g, 3),
        "part_dist": partdist.part_dist(px, py, vis_x, vis_y),
        "dsr_dist": partdist.dsr_dist(x, y, beta=0.1, max_iter=30),
    }


def test_inductor_equals_eager_for_every_public_op():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    N, m, C = 6, 8, 16

    def r(*s):
        return torch.randn(*s, generator=gen)

    base = {
        "x": _permuted(r(N, m, C)), "y": _permuted(r(N, m, C)), "d": r(N, 4, 5).abs(),
        "f": r(2, 3, 6, 5), "g": r(2, 3, 6, 5), "px": _permuted(r(N, 4, C)), "py": _permuted(r(5, 4, C)),
    }
    vis = {"vis_x": (torch.rand(N, 4, generator=gen) > 0.3).float(),
           "vis_y": (torch.rand(5, 4, generator=gen) > 0.3).float()}
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert not base["x"].is_contiguous()

    def run(fn):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in base.items()}
        for k in ("x", "y", "px", "py"):  # keep the permuted layout for the op
            leaves[k] = _permuted(leaves[k].detach()).requires_grad_()
        out = fn(**leaves, **vis, labels=labels)
        loss = sum((v.double() * (i + 1)).sum() for i, v in enumerate(out.values()))
        loss.backward()
        return out, {k: v.grad for k, v in leaves.items()}

    eager_out, eager_grad = run(every_op)
    comp_out, comp_grad = run(torch.compile(every_op))
    for k in eager_out:
        torch.testing.assert_close(comp_out[k], eager_out[k], msg=k)
    for k in eager_grad:
        torch.testing.assert_close(comp_grad[k], eager_grad[k], msg=k)


class _StripeModel(torch.nn.Module):
    """A compact AlignedReID: conv backbone, global pooling, stripes pooled from the map and
    handed on permuted (``[N, C, H] -> [N, H, C]``, not made contiguous)."""

    def __init__(self, C=16, classes=4):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, C, 3, stride=2, padding=1), torch.nn.ReLU())
        self.local_conv = torch.nn.Conv2d(C, C, 1)
        self.fc = torch.nn.Linear(C, classes)

    def forward(self, img):
        fmap = self.body(img)  # [N, C, 8, 4]
        g = fmap.mean((2, 3))
        local = self.local_conv(fmap.mean(-1, keepdim=True)).squeeze(-1).permute(0, 2, 1)
        return g, local, self.fc(g)


def test_inductor_training_step_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _StripeModel()
    imgs = torch.randn(8, 3, 16, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    crit = AlignedTripletLoss(margin=0.3)

    models = [model, copy.deepcopy(model)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    compiled_fwd_bwd = torch.compile(lambda m, i, lab: _loss(m, crit, i, lab))
    assert not models[0](imgs)[1].is_contiguous()  # the stripes reach the loss permuted
    for it in range(2):
        losses = []
        for m, opt, fn in zip(models, opts, (lambda m, i, lab: _loss(m, crit, i, lab), compiled_fwd_bwd)):
            opt.zero_grad(set_to_none=True)
            loss = fn(m, imgs, labels)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        le, lc = losses
        grads_e = {n: p.grad for n, p in models[0].named_parameters()}
        grads_c = {n: p.grad for n, p in models[1].named_parameters()}
        torch.testing.assert_close(lc.detach(), le, rtol=1e-4, atol=1e-5)
        for n in grads_e:
            torch.testing.assert_close(grads_c[n], grads_e[n], rtol=1e-3, atol=1e-5, msg=f"step {it}: {n}")
    for pe, pc in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(pc, pe, rtol=1e-3, atol=1e-5)
    assert math.isfinite(float(le))


def _loss(m, crit, imgs, labels):
    g, local, logits = m(imgs)
    res = crit(g, labels, local)
    return res.global_loss + res.local_loss + F.cross_entropy(logits, labels)
