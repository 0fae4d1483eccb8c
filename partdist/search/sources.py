"""Synthetic gallery features of different structure, to test and benchmark a search on
feature distributions it was not developed on (tests/search, benchmarks/bench_search.py).

Every source gives ``(global [n, D], local [n, H, C])`` float32 views of identities, generated
chunk by chunk from a seed (any part of a large gallery can be made alone, e.g. by one rank):

* ``"shifted"``: an identity's stripes shifted by -1/0/+1 stripe plus noise; its global feature a
  fixed projection of the mean stripe plus noise of its own.
* ``"map"``: one feature map per view, as a CNN's: an identity's map of ``2 H`` rows shifted by up
  to ``shift`` stripes (continuous, with linear interpolation) plus map noise; the stripes are a
  projection of the row-pooled map, the global feature another projection of the whole map's
  mean (global and stripe features of one map are correlated) plus its own noise.
  ``shift`` 0.5 (weak misalignment) or 2 (strong).
* ``"template"``: built so that pooled-stripe shortlist scores at a fixed weight lose recall:
  an identity is an order of parts from a small shared vocabulary, every stripe adds a
  per-position template shared by all identities, each view is shifted by up to one stripe and
  has two neighbouring stripes occluded (replaced by noise: the aligned distance pays at most
  one saturated cell for each, the pooled means move a lot); the global feature is a projection
  of the identity's ordered parts plus noise (the global distance alone finds about 0.8 of the
  exact top 10; with K' = 100 and weight 4 the pooled scores find less than the global one).
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ["SOURCES", "FeatureSource"]

SOURCES = ("shifted", "map-weak", "map-strong", "template")


class FeatureSource:
    """Views of ``n_ids`` identities from the source ``kind`` (see the module), with features
    ``D`` global, ``H x C`` stripes; ``seed`` fixes the identities, each call's ``seed`` the views."""

    def __init__(self, kind: str, n_ids: int, seed: int = 0, D: int = 512, H: int = 8, C: int = 128,
                 noise: float = 0.7, template: float = 1.0, global_noise: float = 0.5):
        if kind not in SOURCES:
            raise ValueError(f"FeatureSource: kind must be one of {SOURCES}, got {kind!r}")
        self.kind, self.n_ids, self.D, self.H, self.C, self.noise = kind, n_ids, D, H, C, noise
        self.global_noise = global_noise
        g = torch.Generator().manual_seed(seed)
        if kind == "shifted":
            self.proj = torch.randn(D, C, generator=g) / C**0.5
            self.centres = F.normalize(torch.randn(n_ids, H, C, generator=g), dim=2)
        elif kind.startswith("map"):
            self.shift = 0.5 if kind == "map-weak" else 2.0
            cm = 64
            self.rows = 2 * H
            self.maps = torch.randn(n_ids, self.rows + 8, cm, generator=g)  # margin rows for the shifts
            self.wl = torch.randn(cm, C, generator=g) / cm**0.5
            self.wg = torch.randn(cm, D, generator=g) / cm**0.5
        else:
            self.template = template * F.normalize(torch.randn(H, C, generator=g), dim=1)
            self.parts = F.normalize(torch.randn(16, C, generator=g), dim=1)  # a vocabulary of stripe parts
            self.seq = torch.randint(0, 16, (n_ids, H), generator=g)  # an identity: parts in an order
            self.wg = torch.randn(H * C, D, generator=g) / (H * C) ** 0.5

    def views(self, ident: torch.Tensor, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(global [n, D], local [n, H, C])`` (L2-normalized rows / stripes) of fresh views of
        the identities ``ident``."""
        gen = torch.Generator().manual_seed(seed)
        n = ident.shape[0]
        H, C, D = self.H, self.C, self.D
        if self.kind == "shifted":
            loc = self.centres[ident]
            shift = torch.randint(-1, 2, (n,), generator=gen)
            pos = (torch.arange(H)[None, :] + shift[:, None]).clamp(0, H - 1)
            loc = loc.gather(1, pos[:, :, None].expand(n, H, C))
            loc = F.normalize(loc + self.noise * torch.randn(n, H, C, generator=gen) / C**0.5, dim=2)
            g = loc.mean(1) @ self.proj.t()
            g = g + 0.5 * self.noise * g.norm(dim=1, keepdim=True) * torch.randn(n, D, generator=gen) / D**0.5
            return F.normalize(g, dim=1), loc
        if self.kind.startswith("map"):
            m = self.maps[ident]  # [n, rows + 8, cm]
            # the visible rows start at 4 + s * 2 (s stripes of 2 rows), s uniform in [-shift, shift]
            s = (torch.rand(n, generator=gen) * 2 - 1) * self.shift * 2
            start = 4 + s
            r = start[:, None] + torch.arange(self.rows)[None, :]
            r0 = r.floor().long().clamp(0, m.shape[1] - 2)
            f = (r - r0).clamp(0, 1)[:, :, None]
            idx0 = r0[:, :, None].expand(n, self.rows, m.shape[2])
            vis = m.gather(1, idx0) * (1 - f) + m.gather(1, idx0 + 1) * f
            vis = vis + 0.8 * self.noise * torch.randn(vis.shape, generator=gen)
            vis = F.relu(vis)
            stripes = vis.view(n, H, self.rows // H, -1).mean(2) @ self.wl
            loc = F.normalize(stripes, dim=2)
            g = vis.mean(1) @ self.wg
            g = g + 0.3 * self.noise * g.norm(dim=1, keepdim=True) * torch.randn(n, D, generator=gen) / D**0.5
            return F.normalize(g, dim=1), loc
        # template: the identity is the order of its parts; two neighbouring stripes occluded
        shift = torch.randint(-1, 2, (n,), generator=gen)
        pos = (torch.arange(H)[None, :] + shift[:, None]).clamp(0, H - 1)
        idp = self.parts[self.seq[ident].gather(1, pos)]
        loc = self.template[None] + idp + self.noise * torch.randn(n, H, C, generator=gen) / C**0.5
        occ = torch.randint(0, H - 1, (n,), generator=gen)
        hit = (torch.arange(H)[None, :] == occ[:, None]) | (torch.arange(H)[None, :] == occ[:, None] + 1)
        loc = torch.where(hit[:, :, None], 3 * torch.randn(n, H, C, generator=gen) / C**0.5, loc)
        loc = F.normalize(loc, dim=2)
        g = self.parts[self.seq[ident]].reshape(n, H * C) @ self.wg
        g = g + self.global_noise * self.noise * g.norm(dim=1, keepdim=True) * torch.randn(n, D, generator=gen) / D**0.5
        return F.normalize(g, dim=1), loc


def gallery(kind: str, n_ids: int, views: int, seed: int = 0, **kw) -> Dict[str, torch.Tensor]:
    """A whole small gallery (``n_ids x views`` items, identity ``i // views``) and ``queries``
    fresh views of random gallery identities: ``{"gg", "gl", "qg", "ql", "gpids", "qpids"}``."""
    src = FeatureSource(kind, n_ids, seed, **kw)
    ident = torch.arange(n_ids * views) // views
    gg, gl = src.views(ident, seed * 7919 + 1)
    q_ident = torch.randint(0, n_ids, (max(1, int(math.sqrt(n_ids * views))),),
                            generator=torch.Generator().manual_seed(seed + 17))
    qg, ql = src.views(q_ident, seed * 7919 + 2)
    return {"gg": gg, "gl": gl, "qg": qg, "ql": ql, "gpids": ident, "qpids": q_ident}
