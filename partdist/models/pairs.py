"""Pair models in the P x K pipeline: pairs formed within a batch, and all query x gallery
pair distances for the ranking evaluation.

A *pair model* (IDLA, PersonNet, Gate Siamese) compares two images jointly: its distance is
not a function of two independent embeddings. It has ``pair_model = True`` and

* ``features(x)``: the part that runs once per image (tied trunk);
* ``pair_distance(fa, fb)``: ``[n]`` distances of ``n`` pairs of such features;
* ``pair_loss_terms(images, pids)``: the training losses of a P x K batch, a dict.

Training (:class:`partdist.train.Trainer`) uses the ordinary P x K batches: the trunk runs
once per image, and :func:`batch_pairs` forms every positive pair of the batch
(``P * K * (K - 1) / 2``) and as many random negative pairs. Evaluation
(:func:`pair_distance_matrix`) runs the trunk once per image and the pair head on all
``Q * G`` pairs, so its cost per query grows with the gallery size (the comparison reports it).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["batch_pairs", "pair_distance_matrix", "verification_terms", "contrastive_loss"]


def batch_pairs(pids: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(i, j, same)``: every positive pair ``i < j`` of the batch and as many negative pairs,
    drawn uniformly without replacement (all negatives if there are fewer). ``same`` is bool."""
    pids = torch.as_tensor(pids)
    n = pids.shape[0]
    i, j = torch.triu_indices(n, n, 1, device=pids.device)
    same = pids[i] == pids[j]
    pos = same.nonzero().flatten()
    neg = (~same).nonzero().flatten()
    if pos.numel() == 0:
        raise ValueError("pair models: the batch holds no positive pair; use k >= 2 images per identity")
    if neg.numel() > pos.numel():
        perm = torch.randperm(neg.numel(), generator=generator)[: pos.numel()].to(neg.device)
        neg = neg[perm]
    keep = torch.cat([pos, neg])
    return i[keep], j[keep], same[keep]


def verification_terms(model, images: torch.Tensor, pids: torch.Tensor) -> dict:
    """2-way cross-entropy of ``model.head`` (logits ``[different, same]``) on the batch's
    pairs (:func:`batch_pairs`): the training loss of IDLA and PersonNet."""
    f = model.features(images)
    i, j, same = batch_pairs(pids)
    return {"verif": F.cross_entropy(model.head(f[i], f[j]), same.long())}


def contrastive_loss(d: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean(same * d^2 + (1 - same) * max(0, margin - d)^2)`` (Hadsell et al.)."""
    s = same.to(d.dtype)
    return (s * d.pow(2) + (1 - s) * (margin - d).clamp_min(0).pow(2)).mean()


def _batched(fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[k : k + batch_size]) for k in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def pair_distance_matrix(model, fq: torch.Tensor, fg: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``[Q, G]`` float32 CPU distances ``model.pair_distance`` of every query x gallery pair of
    trunk features ``fq`` ``[Q, ...]`` and ``fg`` ``[G, ...]``, ``batch_size`` pairs at a time."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"pair_distance_matrix: batch_size must be a positive int, got {batch_size!r}")
    Q, G = fq.shape[0], fg.shape[0]
    out = torch.empty(Q * G, dtype=torch.float32)
    for start in range(0, Q * G, batch_size):
        idx = torch.arange(start, min(start + batch_size, Q * G), device=fq.device)
        out[start : start + idx.shape[0]] = model.pair_distance(fq[idx // G], fg[idx % G]).float().cpu()
    return out.view(Q, G)


@torch.no_grad()
def image_features(model, images: torch.Tensor, batch_size: int = 64, device=None) -> torch.Tensor:
    """``model.features`` of ``images``, ``batch_size`` at a time (on ``device``)."""
    device = device if device is not None else next(model.parameters()).device
    return _batched(lambda x: model.features(x.to(device)), images, batch_size)
