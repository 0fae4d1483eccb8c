"""Ranking evaluation of any reference model (:data:`partdist.models.MODEL_SPECS`): embedding
models, part models (fed the data set's part annotations) and pair models, with one distance
and the test-time cost per query.

Distances (``distance``; default: the model's, ``MODEL_SPECS[name].distance``):

* ``"global"``: Euclidean distance of the L2-normalized ``global`` features;
* ``"global + DMLI"``: that plus the DMLI distance of the normalized stripes (``local``);
* ``"dsr"``: :func:`partdist.dsr_dist` (DSR) of the normalized ``local`` cells / stripes;
* ``"pair"``: pair models' own distance on every query x gallery pair
  (:func:`partdist.models.pairs.pair_distance_matrix`).

Cost per query: gallery features are computed first (offline, as a deployed system would);
the reported ``ms_per_query`` is the wall time of the query features plus the query x gallery
distances and ranking inputs, divided by the number of queries.
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .features import extract_features, global_distance, local_distance
from .rank import evaluate_rank

__all__ = ["DISTANCES", "evaluate_reference_model"]

DISTANCES = ("global", "global + DMLI", "dsr", "pair")


def _loader(items, parts, height, width, batch_size):
    from torch.utils.data import DataLoader

    from ..data import ImageDataset, PartImageDataset, build_transforms

    tf = build_transforms(height, width, is_train=False)
    ds = ImageDataset(list(items), tf) if parts is None else PartImageDataset(list(items), parts, tf)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def _features(model, pair, items, parts, height, width, device, batch_size):
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
    import partdist

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
    return partdist.dsr_dist(q["local"], g["local"])


def evaluate_reference_model(
    model,
    name: str,
    query: Sequence,
    gallery: Sequence,
    height: int,
    width: int,
    device="cpu",
    q_parts=None,
    g_parts=None,
    distance: Optional[str] = None,
    batch_size: int = 64,
    max_rank: int = 20,
) -> Tuple[Dict[str, Dict[str, float]], torch.Tensor]:
    """``({distance: {"rank1", "rank5", "mAP", "mINP", "ms_per_query"}}, distmat)`` for model
    ``name`` of :data:`partdist.models.MODEL_SPECS` (see the module docstring). Part models
    need ``q_parts`` / ``g_parts`` (:func:`partdist.data.part_annotations` of the two lists)."""
    from ..models.zoo import model_spec

    spec = model_spec(name)
    distance = distance or spec.distance
    if distance not in DISTANCES:
        raise ValueError(f"distance: expected one of {DISTANCES}, got {distance!r}")
    if (distance == "pair") != spec.pair:
        raise ValueError(f"distance: model {name!r} " + ("is a pair model: use distance='pair'" if spec.pair else
                                                         "is not a pair model: 'pair' applies to idla, personnet, "
                                                         "gate_siamese"))
    if spec.needs and (q_parts is None or g_parts is None):
        raise ValueError(f"model {name!r} needs {spec.needs} for the query and gallery images: pass q_parts and "
                         "g_parts (partdist.data.part_annotations)")
    if not spec.needs:
        q_parts = g_parts = None
    g = _features(model, spec.pair, gallery, g_parts, height, width, device, batch_size)
    t0 = time.perf_counter()
    q = _features(model, spec.pair, query, q_parts, height, width, device, batch_size)
    dist = _distance(model, distance, q, g)
    seconds = time.perf_counter() - t0
    q_pids = [it[1] for it in query]
    q_cams = [it[2] for it in query]
    g_pids = [it[1] for it in gallery]
    g_cams = [it[2] for it in gallery]
    cmc, mAP, mINP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, return_minp=True)
    res = {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]), "mAP": float(mAP),
           "mINP": float(mINP), "ms_per_query": 1000.0 * seconds / max(1, len(query))}
    return {distance: res}, dist
