"""Feature extraction and query x gallery distances (global, local DMLI, fused)."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .distance import global_distance

__all__ = ["extract_features", "global_distance", "local_distance", "fused_distance"]


@torch.no_grad()
def extract_features(model, loader, device="cpu", flip: bool = False, progress: bool = False) -> Dict[str, torch.Tensor]:
    """Run ``model`` (eval mode) over ``loader`` yielding ``(images, pids, camids, ...)``.

    Returns ``{"global": [N, D], "local": [N, H, C] or None, "pids": [N], "camids": [N]}``
    (features on the CPU). With ``flip`` the features of each image and of its horizontal mirror
    are averaged (stripes are rows, so a horizontal flip keeps them aligned).

    Models with ``needs_parts = True`` (``partdist.models.GLAD``, ``SpindleNet``, ``SPReID``) are
    called as ``model(images, parts)`` with the fourth item of each batch (e.g. from
    :class:`partdist.data.PartImageDataset`); their ``parts`` ``[N, P, C]`` and
    ``part_visibility`` ``[N, P]`` outputs are returned too. ``flip`` is refused for them (a
    mirror swaps left and right parts).
    """
    needs_parts = bool(getattr(model, "needs_parts", False))
    if needs_parts and flip:
        raise ValueError("extract_features: flip=True is not supported for models that take parts (needs_parts)")
    was_training = model.training
    model.eval()
    glob, loc, pids, cams = [], [], [], []
    parts, vis = [], []
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="features", leave=False)
    for batch in it:
        imgs, pid, cam = batch[0], batch[1], batch[2]
        imgs = imgs.to(device)
        if needs_parts:
            if len(batch) < 4:
                raise ValueError(
                    "extract_features: the model takes parts (needs_parts); the loader must yield "
                    "(images, pids, camids, parts)"
                )
            out = model(imgs, batch[3].to(device))
            if "parts" in out:  # part features (GLAD, SpindleNet, SPReID; not PDC / PIE / PABP)
                parts.append(out["parts"].float().cpu())
                vis.append(out["part_visibility"].cpu())
        else:
            out = model(imgs)
        g, l = out["global"], out.get("local")
        if flip:
            out2 = model(imgs.flip(-1))
            g = (g + out2["global"]) / 2
            if l is not None:
                l = (l + out2["local"]) / 2
        glob.append(g.float().cpu())
        if l is not None:
            loc.append(l.float().cpu())
        pids.append(torch.as_tensor(pid))
        cams.append(torch.as_tensor(cam))
    model.train(was_training)
    res = {
        "global": torch.cat(glob),
        "local": torch.cat(loc) if loc else None,
        "pids": torch.cat(pids),
        "camids": torch.cat(cams),
    }
    if parts:
        res["parts"], res["part_visibility"] = torch.cat(parts), torch.cat(vis)
    return res


@torch.no_grad()
def local_distance(
    ql: torch.Tensor,
    gl: torch.Tensor,
    normalize: bool = True,
    chunk_size: Optional[int] = None,
    progress: bool = False,
    block_rows: Optional[int] = None,
) -> torch.Tensor:
    """DMLI distances of all query x gallery pairs, ``[Q, H, C] x [G, H', C] -> [Q, G]``.

    Computed ``block_rows`` queries at a time (a progress bar with ``progress``); see
    :func:`partdist.eval.query_gallery_distance`, and :func:`partdist.eval.topk_distance`
    when the dense result is too large."""
    from .streaming import query_gallery_distance

    return query_gallery_distance(
        ql, gl, normalize=normalize, chunk_size=chunk_size, progress=progress, block_rows=block_rows
    )


def fused_distance(global_dist: torch.Tensor, local_dist: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """``global + lam * local`` (AlignedReID's test-time fusion)."""
    if global_dist.shape != local_dist.shape:
        raise ValueError(
            f"fused_distance: global_dist {list(global_dist.shape)} and local_dist {list(local_dist.shape)} must match"
        )
    return global_dist + lam * local_dist
