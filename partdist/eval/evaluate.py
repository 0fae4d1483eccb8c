"""Evaluation of a ReID model on query / gallery lists under the Market-1501 protocol (CMC, mAP,
mINP): :func:`evaluate_model`, the one evaluation entry for every model of
:data:`partdist.models.MODEL_SPECS`, pair models included.

What it computes is decided by the model's registry entry (``name``):

* the table of stripe distances (``ModelSpec.distance_table``: AlignedReID, PCB, ICNN, and any
  model evaluated without a ``name``): ``global``, ``local (DMLI)``, ``global + DMLI``,
  ``local (unaligned)``, ``global + unaligned`` and ``global + DMLI, re-ranked``;
* one distance, the model's (``ModelSpec.distance``) or the ``distance`` asked for, with the
  test-time cost per query, for the other models (part models are fed the data set's part
  annotations, pair models score every query x gallery pair):

  - ``"global"``: Euclidean distance of the L2-normalized ``global`` features;
  - ``"global + DMLI"``: that plus the DMLI distance of the normalized stripes (``local``);
  - ``"dsr"``: :func:`partdist.dsr_dist` (DSR) of the normalized ``local`` cells / stripes;
  - ``"pair"``: pair models' own distance on every query x gallery pair
    (:func:`partdist.models.pairs.pair_distance_matrix`).

  Cost per query: gallery features are computed first (offline, as a deployed system would);
  ``ms_per_query`` is the wall time of the query features plus the query x gallery distances,
  divided by the number of queries.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from ..ops.dmli import unaligned_dist
from ..ops.parts import dsr_dist
from .distance import Distance
from .features import extract_features, global_distance, local_distance
from .rank import evaluate_rank
from .streaming import re_ranking_features

__all__ = ["DISTANCES", "features_for", "evaluate_model", "format_table", "FeatureExtractor"]

#: the distances of the one-distance evaluation (``evaluate_model(..., distance=...)``)
DISTANCES = ("global", "global + DMLI", "dsr", "pair")


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


def _loader(items, parts, height, width, batch_size):
    from torch.utils.data import DataLoader

    from ..data import ImageDataset, PartImageDataset, build_transforms

    tf = build_transforms(height, width, is_train=False)
    ds = ImageDataset(list(items), tf) if parts is None else PartImageDataset(list(items), parts, tf)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def _spec_features(model, pair, items, parts, height, width, device, batch_size):
    loader = _loader(items, parts, height, width, batch_size)
    if pair:
        was = model.training
        model.eval()
        f = torch.cat([model.features(b[0].to(device)) for b in loader])
        model.train(was)
        return {"trunk": f}
    out = extract_features(model, loader, device=device)
    out["global"] = F.normalize(out["global"], dim=-1)
    if out["local"] is not None:
        out["local"] = F.normalize(out["local"], dim=-1)
    return out


@torch.no_grad()
def _distance(model, distance, q, g):
    from ..models.pairs import pair_distance_matrix

    if distance == "pair":
        return pair_distance_matrix(model, q["trunk"], g["trunk"])
    if distance == "global":
        return global_distance(q["global"], g["global"])
    if q.get("local") is None:
        raise ValueError(f"distance: {distance!r} needs local features (stripes or cells); this model has none, "
                         "use distance='global'")
    if distance == "global + DMLI":
        return global_distance(q["global"], g["global"]) + local_distance(q["local"], g["local"])
    return dsr_dist(q["local"], g["local"])


def _evaluate_one(model, spec, query, gallery, height, width, device, q_parts, g_parts, distance, batch_size,
                  max_rank, ap):
    distance = distance or spec.distance
    if distance not in DISTANCES:
        raise ValueError(f"distance: expected one of {DISTANCES}, got {distance!r}")
    if (distance == "pair") != spec.pair:
        raise ValueError(f"distance: model {spec.name!r} " + ("is a pair model: use distance='pair'" if spec.pair else
                                                              "is not a pair model: 'pair' applies to idla, personnet, "
                                                              "gate_siamese"))
    if spec.needs and (q_parts is None or g_parts is None):
        raise ValueError(f"model {spec.name!r} needs {spec.needs} for the query and gallery images: pass q_parts and "
                         "g_parts (partdist.data.part_annotations)")
    if not spec.needs:
        q_parts = g_parts = None
    g = _spec_features(model, spec.pair, gallery, g_parts, height, width, device, batch_size)
    t0 = time.perf_counter()
    q = _spec_features(model, spec.pair, query, q_parts, height, width, device, batch_size)
    dist = _distance(model, distance, q, g)
    seconds = time.perf_counter() - t0
    ids = {"pids": [it[1] for it in query], "camids": [it[2] for it in query]}
    g_ids = {"pids": [it[1] for it in gallery], "camids": [it[2] for it in gallery]}
    res = _score(dist, ids, g_ids, max_rank, ap)
    res["ms_per_query"] = 1000.0 * seconds / max(1, len(query))
    return {distance: res}, dist


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
    *,
    name: Optional[str] = None,
    distance: Optional[str] = None,
    q_parts=None,
    g_parts=None,
    batch_size: int = 64,
):
    """Returns ``(results, dists)``: ``results[distance] = {"rank1", "rank5", "mAP", "mINP"}``
    and ``dists[distance]``, the q x g distance matrix (torch, CPU). ``ap`` is the
    average-precision definition of mAP (``"torchreid"`` or ``"devkit"``, see
    :func:`partdist.eval.evaluate_rank`).

    ``name``: the model's name in :data:`partdist.models.MODEL_SPECS` (see the module
    docstring). Without it, or for a model whose spec has ``distance_table``, and no
    ``distance``: the table of distances ``global``, ``local (DMLI)``, ``global + DMLI``
    (``global + lam * local``), ``local (unaligned)``, ``global + unaligned`` and
    ``global + DMLI, re-ranked`` (k-reciprocal, k1=20, k2=6, lambda=0.3 on the fused q-g, q-q
    and g-g distances); ``progress`` shows progress bars for feature extraction, the local
    distances and re-ranking. Otherwise the one distance ``distance`` (default: the model's),
    with ``ms_per_query`` in its results; part models need ``q_parts`` / ``g_parts``
    (:func:`partdist.data.part_annotations` of the two lists); ``batch_size`` images (or pairs)
    at a time."""
    if name is not None:
        from ..models.zoo import model_spec

        spec = model_spec(name)
        if distance is not None or not spec.distance_table:
            return _evaluate_one(model, spec, query, gallery, height, width, device, q_parts, g_parts, distance,
                                 batch_size, max_rank, ap)
    elif distance is not None:
        raise ValueError("distance: give the model's name (name=..., a key of partdist.models.MODEL_SPECS) with it")
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
            from ..runs import load_model

            net, cfg, _ = load_model(str(model), device)
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
