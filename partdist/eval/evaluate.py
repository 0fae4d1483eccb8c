"""Evaluation of a ReID model on query / gallery lists: global, local (DMLI), unaligned,
fused and re-ranked distances, CMC and mAP under the Market-1501 protocol."""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import torch

from ..ops.dmli import unaligned_dist
from .distance import Distance
from .features import extract_features, global_distance, local_distance
from .rank import evaluate_rank
from .streaming import re_ranking_features

__all__ = ["features_for", "evaluate_model", "format_table", "FeatureExtractor"]


def features_for(model, items: Sequence, height: int, width: int, device="cpu", batch_size=64, flip=False,
                 normalize=True, progress=False):
    """Features of ``(path, pid, camid)`` items (test transforms). With ``normalize`` the global
    feature and every local stripe are L2-normalized, as AlignedReID does at test time (and as
    its loss does in training: unnormalized stripes make every normalized stripe distance
    saturate near 1)."""
    from torch.utils.data import DataLoader

    from ..data import ImageDataset, build_transforms

    ds = ImageDataset(list(items), build_transforms(height, width, is_train=False))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    f = extract_features(model, loader, device=device, flip=flip, progress=progress)
    if normalize:
        f["global"] = torch.nn.functional.normalize(f["global"], dim=-1)
        if f["local"] is not None:
            f["local"] = torch.nn.functional.normalize(f["local"], dim=-1)
    return f


def _score(dist, q, g, max_rank, ap="torchreid") -> Dict[str, float]:
    cmc, mAP, mINP = evaluate_rank(dist, q["pids"], g["pids"], q["camids"], g["camids"], max_rank=max_rank,
                                   return_minp=True, ap=ap)
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]), "mAP": float(mAP), "mINP": float(mINP)}


def evaluate_model(
    model,
    query: Sequence,
    gallery: Sequence,
    height: int,
    width: int,
    device="cpu",
    lam: float = 1.0,
    rerank: bool = True,
    unaligned: bool = True,
    flip: bool = False,
    max_rank: int = 20,
    global_only: bool = False,
    normalize: bool = True,
    progress: bool = False,
    ap: str = "torchreid",
):
    """Returns ``(results, dists)``: ``results[name] = {"rank1", "rank5", "mAP"}`` for the
    distances ``global``, ``local (DMLI)``, ``global + DMLI`` (``global + lam * local``),
    ``local (unaligned)``, ``global + unaligned`` and ``global + DMLI, re-ranked`` (k-reciprocal,
    k1=20, k2=6, lambda=0.3 on the fused q-g, q-q and g-g distances); ``dists`` holds the
    q x g matrices by the same names (torch, CPU). ``progress`` shows progress bars for
    feature extraction, the local distances and re-ranking. ``ap`` is the average-precision
    definition of mAP (``"torchreid"`` or ``"devkit"``, see :func:`partdist.eval.evaluate_rank`)."""
    q = features_for(model, query, height, width, device, flip=flip, normalize=normalize, progress=progress)
    g = features_for(model, gallery, height, width, device, flip=flip, normalize=normalize, progress=progress)
    dists = {"global": global_distance(q["global"], g["global"])}
    if not global_only and q["local"] is not None:
        ld = local_distance(q["local"], g["local"], progress=progress)
        dists["local (DMLI)"] = ld
        dists["global + DMLI"] = dists["global"] + lam * ld
        if unaligned and q["local"].shape[1] == g["local"].shape[1]:
            with torch.no_grad():
                ud = unaligned_dist(q["local"], g["local"], all_pairs=True)
            dists["local (unaligned)"] = ud
            dists["global + unaligned"] = dists["global"] + lam * ud
        if rerank:
            # streaming: the (q+g)^2 fused distances are never held as dense matrices
            dists["global + DMLI, re-ranked"] = re_ranking_features(
                q["local"], g["local"], q["global"], g["global"], distance=Distance("fused", lam=lam),
                progress=progress,
            )
    results = {name: _score(d, q, g, max_rank, ap) for name, d in dists.items()}
    return results, dists


def format_table(rows: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """Markdown table: ``rows[model_name][distance_name] = {"rank1", "mAP", ...}``."""
    lines = ["| model | distance | rank-1 | rank-5 | mAP | mINP |", "|---|---|---|---|---|---|"]
    for model_name, res in rows.items():
        for name, r in res.items():
            lines.append(f"| {model_name} | {name} | {100 * r['rank1']:.1f} | {100 * r['rank5']:.1f} | "
                         f"{100 * r['mAP']:.1f} | {100 * r['mINP']:.1f} |")
    return "\n".join(lines)


class FeatureExtractor:
    """Features of images given by file path, from a model or a ``partdist train`` checkpoint.

    >>> fe = FeatureExtractor("runs/market/best.pt")          # or FeatureExtractor(model, 256, 128)
    >>> f = fe(["a.jpg", "b.jpg"])                            # {"global": [2, D], "local": [2, H, C]}
    >>> d = partdist.eval.global_distance(f["global"], f["global"])

    ``model``: an ``nn.Module`` returning ``{"global", "local"}`` (the models of
    :mod:`partdist.models`), or the path of a checkpoint (read with ``weights_only=True``; its
    configuration gives the input size). Images go through the test transforms (resize to
    ``height x width``, normalize); with ``normalize`` the global feature and each local stripe
    are L2-normalized as the evaluation does; ``flip`` averages each image with its mirror.
    """

    def __init__(self, model, height: Optional[int] = None, width: Optional[int] = None, device="cpu",
                 batch_size: int = 64, flip: bool = False, normalize: bool = True):
        if isinstance(model, (str, os.PathLike)):
            from ..train import build_model, load_checkpoint

            state, cfg = load_checkpoint(str(model), map_location=device)
            net = build_model(cfg, state["num_classes"])
            net.load_state_dict(state["model"])
            model, height, width = net, height or cfg.height, width or cfg.width
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"FeatureExtractor: model must be an nn.Module or a checkpoint path, got {type(model).__name__}")
        if height is None or width is None:
            raise ValueError("FeatureExtractor: give height and width (the input size the model was trained at); "
                             "a checkpoint path carries them")
        self.model = model.to(device).eval()
        self.height, self.width, self.device = int(height), int(width), device
        self.batch_size, self.flip, self.normalize = batch_size, flip, normalize

    def __call__(self, paths: Sequence[str]) -> Dict[str, Optional[torch.Tensor]]:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise ValueError("FeatureExtractor: no image paths given")
        f = features_for(self.model, [(p, 0, 0) for p in paths], self.height, self.width, self.device,
                         batch_size=self.batch_size, flip=self.flip, normalize=self.normalize)
        return {"global": f["global"], "local": f["local"]}
