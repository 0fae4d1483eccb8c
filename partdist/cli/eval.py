"""``partdist eval``: evaluate a ``partdist train`` checkpoint on a data set's query and gallery."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from ..runs import write_json
from ._common import (
    AP_NOTE,
    PROTOCOL_NOTE,
    CLIError,
    _check_images,
    _dataset_stats,
    _parts_for,
    _print_stats,
    _progress,
    _splits,
    _version,
    check_device,
)


def _load_model(path, device="cpu"):
    """``(model, cfg, state)`` of a checkpoint written by ``partdist train`` (read safely)."""
    from ..runs import CheckpointError, load_model

    try:
        return load_model(path, device)
    except CheckpointError as err:
        raise CLIError(f"--checkpoint {err}") from None


def cmd_eval(args):
    from ..eval.evaluate import evaluate_model, format_table
    from ..models.zoo import model_spec
    from ..viz import save_rank_list

    device = check_device(args.device)
    if args.out and os.path.exists(os.path.join(args.out, "results.json")) and not args.overwrite:
        raise CLIError(f"--out {args.out} already holds results ({os.path.join(args.out, 'results.json')}); "
                       "pass --overwrite to replace them, or choose another --out")
    model, cfg, state = _load_model(args.checkpoint, device)
    splits = _splits(args.data, args.dataset)
    stats = _dataset_stats(splits)
    _print_stats(stats, ("query", "gallery"))
    _check_images("eval", splits.query + splits.gallery, args, args.out)
    label = f"{cfg.model} {cfg.backbone} epoch {state.get('epoch', '?')}"
    print(f"model: {label} ({args.checkpoint})")
    progress = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())
    spec = model_spec(cfg.model)
    if args.distance or not spec.distance_table:
        # one distance (the model's, partdist.models.MODEL_SPECS, or --distance)
        q_parts = _parts_for(cfg.model, args.data, splits.query, "--checkpoint")
        g_parts = _parts_for(cfg.model, args.data, splits.gallery, "--checkpoint")
        try:
            res, _ = evaluate_model(model, splits.query, splits.gallery, cfg.height, cfg.width, device,
                                    name=cfg.model, distance=args.distance, q_parts=q_parts, g_parts=g_parts)
        except ValueError as err:
            raise CLIError(f"--distance: {err}") from None
        table = format_table({label: res})
        print(table)
        for name, r in res.items():
            print(f"{name}: {r['ms_per_query']:.2f} ms per query (query features + distances to the gallery)")
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            write_json(os.path.join(args.out, "results.json"), {
                "checkpoint": os.path.abspath(args.checkpoint), "model": label, "config": dataclasses.asdict(cfg),
                "epoch": state.get("epoch"), "data": os.path.abspath(args.data), "dataset": args.dataset,
                "query": stats["query"], "gallery": stats["gallery"], "ap_definition": AP_NOTE["torchreid"],
                "protocol": PROTOCOL_NOTE, "results": res, "partdist": _version()})
            with open(os.path.join(args.out, "results.md"), "w") as f:
                f.write(f"# {label}\n\n{table}\n\n{AP_NOTE['torchreid']}. {PROTOCOL_NOTE}.\n")
            print(f"wrote {args.out}/results.json and results.md")
        return
    res, dists = evaluate_model(model, splits.query, splits.gallery, cfg.height, cfg.width, device,
                                lam=args.lam, rerank=not args.no_rerank, flip=args.flip, progress=progress,
                                ap=args.ap, name=cfg.model)
    table = format_table({label: res})
    print(table)
    print(AP_NOTE[args.ap] + "; " + PROTOCOL_NOTE)
    if not args.out:
        return
    os.makedirs(args.out, exist_ok=True)
    summary = {
        "checkpoint": os.path.abspath(args.checkpoint), "model": label, "config": dataclasses.asdict(cfg),
        "epoch": state.get("epoch"), "data": os.path.abspath(args.data), "dataset": args.dataset,
        "query": stats["query"], "gallery": stats["gallery"], "ap": args.ap, "ap_definition": AP_NOTE[args.ap],
        "protocol": PROTOCOL_NOTE, "lam": args.lam, "flip": args.flip, "rerank": not args.no_rerank,
        "results": res, "partdist": _version(),
    }
    write_json(os.path.join(args.out, "results.json"), summary)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"# {label}\n\n{args.checkpoint} on {args.data} ({args.dataset}): query {stats['query']['images']} "
                f"images / {stats['query']['ids']} ids, gallery {stats['gallery']['images']} images / "
                f"{stats['gallery']['ids']} ids\n\n{table}\n\n{AP_NOTE[args.ap]}. {PROTOCOL_NOTE}.\n")
    print(f"wrote {args.out}/results.json and results.md")
    if args.rank_lists:
        name = "global + DMLI" if "global + DMLI" in dists else "global"
        pics = _rank_lists(splits, dists[name], os.path.join(args.out, "rank_lists"), args.rank_lists,
                           save_rank_list)
        print(f"wrote {len(pics)} rank lists ({name} distance) to {args.out}/rank_lists/")


def _rank_lists(splits, dist, folder, n, save_rank_list, top=10):
    """Rank-list pictures of ``n`` queries spread over the query set: the query, then its
    ``top`` nearest gallery images (the protocol's excluded images left out), framed green
    (same identity) or red."""
    q = len(splits.query)
    picks = sorted({int(i * q / n) for i in range(min(n, q))})
    out = []
    for qi in picks:
        qp, qpid, qcam = splits.query[qi]
        order = torch.argsort(dist[qi], stable=True).tolist()
        keep = [j for j in order if not (splits.gallery[j][1] == qpid and splits.gallery[j][2] == qcam)
                and splits.gallery[j][1] != -1][:top]
        path = os.path.join(folder, f"query{qi:05d}_{os.path.splitext(os.path.basename(qp))[0]}.png")
        out.append(save_rank_list(qp, [splits.gallery[j][0] for j in keep],
                                  [splits.gallery[j][1] == qpid for j in keep], path))
    return out


def register_eval(sub):
    e = sub.add_parser("eval", help="evaluate a checkpoint on query/gallery",
                       description="Evaluate a checkpoint written by `partdist train` on a dataset's query and "
                       "gallery: global, local (DMLI), fused and re-ranked distances, CMC and mAP.")
    e.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a `partdist train` run")
    e.add_argument("--data", required=True, help="dataset root folder")
    from ..data import DATASETS

    e.add_argument("--dataset", default="market1501", choices=sorted(DATASETS), help="folder layout of --data")
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    e.add_argument("--lam", type=float, default=1.0, help="weight of the local distance in global + lam * local")
    e.add_argument("--ap", choices=["torchreid", "devkit"], default="torchreid",
                   help="average-precision definition of mAP")
    e.add_argument("--flip", action="store_true", help="average each image's features with its mirror's")
    e.add_argument("--no-rerank", action="store_true", help="skip k-reciprocal re-ranking")
    e.add_argument("--distance", choices=("global", "global + DMLI", "dsr", "pair"), default=None,
                   help="evaluate with this one distance (dsr: partdist.dsr_dist on the local features); "
                        "default: the model's (partdist.models.MODEL_SPECS)")
    e.add_argument("--out", help="folder for results.json, results.md and rank-list pictures")
    e.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    e.add_argument("--rank-lists", type=int, default=8, metavar="N",
                   help="with --out: rank-list pictures of N queries spread over the query set (0: none)")
    e.add_argument("--progress", type=_progress, default="auto", metavar="{auto,bar,lines,off}",
                   help="progress bars: auto shows them on a terminal only")
    e.add_argument("--no-progress", dest="progress", action="store_const", const="off",
                   default=argparse.SUPPRESS, help="same as --progress off")
    e.add_argument("--skip-image-check", action="store_true",
                   help="do not open every query/gallery image's header first")
    e.set_defaults(fn=cmd_eval)
    return e
