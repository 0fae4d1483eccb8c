"""Pictures: rank lists, DMLI stripe alignments, training curves (PNG files)."""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import torch

from .ops.dmli import dmli, dmli_path, local_dist_matrix

__all__ = ["save_rank_list", "save_alignment", "save_curves"]

GREEN = (40, 170, 60)
RED = (210, 40, 40)


def _load(path_or_img, size):
    from PIL import Image

    img = path_or_img if hasattr(path_or_img, "resize") else Image.open(path_or_img)
    return img.convert("RGB").resize((size[1], size[0]))


def save_rank_list(query, gallery: Sequence, matches: Sequence[bool], out_path: str, size=(128, 64), border=4):
    """Query image, then its ranked gallery images framed green (same identity) or red.

    ``query`` / ``gallery`` items are file paths or PIL images; ``size`` is (height, width).
    """
    from PIL import Image, ImageDraw

    if len(gallery) != len(matches):
        raise ValueError(f"save_rank_list: {len(gallery)} gallery images but {len(matches)} match flags")
    h, w = size
    pad = 10
    canvas = Image.new("RGB", ((len(gallery) + 1) * (w + 2 * border) + pad, h + 2 * border + 16), "white")
    draw = ImageDraw.Draw(canvas)
    canvas.paste(_load(query, size), (border, border))
    draw.text((border, h + 2 * border), "query", fill=(0, 0, 0))
    for k, (g, ok) in enumerate(zip(gallery, matches)):
        x0 = (k + 1) * (w + 2 * border) + pad
        draw.rectangle([x0, 0, x0 + w + 2 * border - 1, h + 2 * border - 1], fill=GREEN if ok else RED)
        canvas.paste(_load(g, size), (x0 + border, border))
        draw.text((x0 + border, h + 2 * border), str(k + 1), fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    canvas.save(out_path)
    return out_path


def save_alignment(img_a, img_b, local_a: torch.Tensor, local_b: torch.Tensor, out_path: str, size=(256, 128), title=None):
    """Two images side by side, their stripes, and the stripe pairs matched by the DMLI path.

    ``local_a`` ``[H, C]`` and ``local_b`` ``[H', C]`` are the images' local features; the
    shortest path of their normalized distance matrix (``partdist.dmli_path``) is drawn as lines
    between the centres of matched stripes, labelled with the cell distance.
    """
    from PIL import Image, ImageDraw

    la, lb = local_a.detach().float().cpu(), local_b.detach().float().cpu()
    dmat = local_dist_matrix(la[None], lb[None])[0]
    path = dmli_path(dmat)
    total = dmli(dmat).item()
    h, w = size
    gap = 120
    canvas = Image.new("RGB", (2 * w + gap, h + 24), "white")
    canvas.paste(_load(img_a, size), (0, 0))
    canvas.paste(_load(img_b, size), (w + gap, 0))
    draw = ImageDraw.Draw(canvas)
    ha, hb = la.shape[0], lb.shape[0]
    for i in range(1, ha):
        draw.line([(0, i * h / ha), (w, i * h / ha)], fill=(255, 255, 0))
    for j in range(1, hb):
        draw.line([(w + gap, j * h / hb), (2 * w + gap, j * h / hb)], fill=(255, 255, 0))
    for i, j in path.nonzero().tolist():
        ya, yb = (i + 0.5) * h / ha, (j + 0.5) * h / hb
        d = dmat[i, j].item()
        color = (int(255 * d), int(200 * (1 - d)), 60)
        draw.line([(w, ya), (w + gap, yb)], fill=color, width=2)
    draw.text((4, h + 6), title or f"DMLI distance {total:.3f} over {int(path.sum())} matched stripe pairs", fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    canvas.save(out_path)
    return out_path


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save_curves(records, out_path: str, keys: Iterable[str] = ("loss", "mAP")):
    """Plot per-epoch metrics (a list of dicts with an ``epoch`` key, or a JSON-lines file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(records, (str, os.PathLike)):
        records = _read_jsonl(records)
    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        raise ValueError("save_curves: none of the requested keys is in the records")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["epoch"], r[k]) for r in records if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
