"""The FAISS backend of the two-stage search's first stage: a FAISS index of the global
features (any index factory string), built at the first search and kept until the gallery
changes."""

from __future__ import annotations

import re

import numpy as np
import torch

from . import _merge

__all__ = ["faiss_shortlist"]


def _faiss_reason(e):
    """The useful part of a FAISS C++ error (``Error in <function> at <file>.cpp:<line>: <why>``)."""
    msg = " ".join(str(e).split())
    m = re.search(r"\.(?:cpp|h):\d+:\s*(.*)$", msg)
    return (m.group(1) if m else msg).rsplit(":", 1)[-1].strip() or type(e).__name__



def faiss_shortlist(gallery, qg, kk, metric, factory, params=""):
    op = "GalleryIndex.search"
    try:
        import faiss
    except ImportError:
        raise ImportError(f"{op}: backend='faiss' needs the faiss package: pip install 'partdist[faiss]' "
                          "(or faiss-cpu), or use backend='torch'") from None
    Q = qg.shape[0]
    k_here = min(kk, len(gallery))
    if k_here == 0:
        return (torch.empty((Q, 0), dtype=qg.dtype, device=gallery.device),
                torch.empty((Q, 0), dtype=torch.int64, device=gallery.device))
    # faiss_params stay set on the cached index: going back to no parameters (FAISS's
    # defaults) rebuilds it rather than keep the last search's parameters silently
    if gallery._faiss is None or gallery._faiss[0] != (metric, factory) or (not params and gallery._faiss[2]):
        fm = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        try:
            index = faiss.index_factory(gallery.dim, factory, fm)
        except RuntimeError as e:
            raise ValueError(f"{op}: faiss_factory {factory!r} is not a FAISS index factory string for D = "
                             f"{gallery.dim} ({_faiss_reason(e)}); e.g. 'Flat', 'SQfp16', 'HNSW32', "
                             "'IVF1024,Flat'") from None

        def rows(s, e):
            x = gallery.global_features[s:e].float().cpu()
            if metric == "cosine":
                x = torch.nn.functional.normalize(x, dim=1)
            return np.ascontiguousarray(x.numpy())

        if not index.is_trained:  # e.g. IVF: trained on (at most) the first 2**18 items
            index.train(rows(0, min(len(gallery), 1 << 18)))
        for s in range(0, len(gallery), 1 << 16):
            index.add(rows(s, min(s + (1 << 16), len(gallery))))
        gallery._faiss = ((metric, factory), index, "")
    if params:
        try:
            faiss.ParameterSpace().set_index_parameters(gallery._faiss[1], params)
        except RuntimeError as e:
            raise ValueError(f"{op}: faiss_params {params!r} do not apply to the {factory!r} index "
                             f"({_faiss_reason(e)}); e.g. 'nprobe=32' for IVF, 'efSearch=128' for HNSW") from None
        gallery._faiss = gallery._faiss[:2] + (params,)
    x = qg.float().cpu()
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    D, I = gallery._faiss[1].search(np.ascontiguousarray(x.numpy()), k_here)
    D, I = torch.from_numpy(D), torch.from_numpy(I)
    if metric == "cosine":
        D = -D  # similarity -> a distance order
    ids = torch.where(I >= 0, gallery.ids[I.clamp(min=0)], torch.full_like(I, _merge.PAD_ID))
    D = torch.where(I >= 0, D, torch.full_like(D, float("inf")))
    v, i = _merge.merge_topk(D.to(qg.dtype), ids, k_here)
    return v.to(gallery.device), i.to(gallery.device)
