"""``partdist demo``: synthetic data -> train AlignedReID on the CPU -> evaluate -> pictures."""

from __future__ import annotations

import os
import time

import torch

from ..runs import write_json
from ._common import AP_NOTE, PROTOCOL_NOTE, CLIError, _check_out, _positive_int, _progress, _warn


def _pick_alignment_pair(splits, shifted_cams=(2, 3)):
    """A query and a gallery image of the same person from cameras whose framing differs."""
    for qp, qpid, qcam in splits.query:
        if qcam != 1:
            continue
        for gp, gpid, gcam in splits.gallery:
            if gpid == qpid and gcam in shifted_cams:
                return (qp, qpid, qcam), (gp, gpid, gcam)
    return splits.query[0], splits.gallery[0]


def cmd_demo(args):
    from ..data import SyntheticReID, market1501
    from ..eval.evaluate import evaluate_model, format_table
    from ..runs import TrainConfig, build_model
    from ..train import Trainer, make_batches

    t_start = time.time()
    out = args.out
    train_out = os.path.join(out, "train")
    _check_out(out, args.resume, args.overwrite, run_dir=train_out)
    if not args.resume and not args.overwrite and os.path.exists(os.path.join(out, "results.json")):
        raise CLIError(f"--out {out} already holds demo results; pass --overwrite to replace them, or another --out")
    os.makedirs(out, exist_ok=True)
    quick = args.quick
    ids = args.ids or (24 if quick else 160)
    per_cam = 2 if quick else 3
    data_root = os.path.join(out, "data")
    print(f"[1/5] synthetic data: {ids} identities x 4 cameras x {per_cam} images, 128x64 -> {data_root}")
    SyntheticReID(data_root, num_ids=ids, num_cams=4, imgs_per_id_cam=per_cam, height=128, width=64,
                  seed=args.seed).generate()
    splits = market1501(data_root)
    num_classes = len({pid for _, pid, _ in splits.train})
    print(f"      train {len(splits.train)} images / {num_classes} ids, query {len(splits.query)}, "
          f"gallery {len(splits.gallery)}")

    epochs = args.epochs or (2 if quick else 30)
    progress = "off" if args.no_progress else args.progress
    # the demo trains the compact CNN on purpose: a CPU run of minutes (not resnet50's hours)
    cfg = TrainConfig(model="aligned", backbone="compact", last_stride=1, height=128, width=64,
                      p=min(8, num_classes), k=4,
                      epochs=epochs, lr=1e-3, warmup_epochs=1 if quick else 2,
                      milestones=[int(epochs * 0.75)], seed=args.seed, out=train_out,
                      iters_per_epoch=2 if quick else None, progress=progress,
                      local_gamma=args.local_gamma)
    eval_kw = dict(height=cfg.height, width=cfg.width)

    print("[2/5] untrained model (random init), for reference")
    torch.manual_seed(args.seed)
    untrained = build_model(cfg, num_classes)
    res_untrained, _ = evaluate_model(untrained, splits.query, splits.gallery, rerank=False, **eval_kw)

    soft = f", soft-DMLI gamma={args.local_gamma}" if args.local_gamma else ""
    print(f"[3/5] training AlignedReID (compact backbone, 8 stripes{soft}) for {epochs} epochs on the CPU")

    def periodic_eval(tr):
        r, _ = evaluate_model(tr.model, splits.query, splits.gallery, global_only=True, **eval_kw)
        return {"mAP": r["global"]["mAP"], "rank1": r["global"]["rank1"]}

    trainer = Trainer(cfg, num_classes, make_batches(splits.train, cfg), overwrite=args.overwrite)
    if args.resume:
        trainer.resume()
    trainer.fit(periodic_eval, eval_every=1 if quick else 2)

    print("[4/5] evaluation (Market-1501 protocol)")
    res_trained, dists = evaluate_model(trainer.model, splits.query, splits.gallery, rerank=True, **eval_kw)
    table = format_table({"untrained": res_untrained, "trained": res_trained})
    print(table)
    summary = {"untrained": res_untrained, "trained": res_trained, "epochs": epochs,
               "seconds": round(time.time() - t_start, 1), "train_images": len(splits.train),
               "query": len(splits.query), "gallery": len(splits.gallery), "ap_definition": AP_NOTE["torchreid"]}
    write_json(os.path.join(out, "results.json"), summary)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n\n" + AP_NOTE["torchreid"] + ". " + PROTOCOL_NOTE + ".\n")
    print(f"wrote {out}/results.json and {out}/results.md")

    print("[5/5] pictures")
    pics = os.path.join(out, "pictures")
    written = _demo_pictures(splits, dists, trainer, cfg, pics)
    print(f"wrote {', '.join(written)} in {pics} ({round(time.time() - t_start, 1)} s in all)")


def _demo_pictures(splits, dists, trainer, cfg, pics):
    from ..eval.evaluate import features_for
    from ..viz import save_alignment, save_curves, save_rank_list

    fused = dists["global + DMLI"]
    qi = 0
    order = torch.argsort(fused[qi])
    qpid, qcam = splits.query[qi][1], splits.query[qi][2]
    keep = [int(j) for j in order if not (splits.gallery[j][1] == qpid and splits.gallery[j][2] == qcam)][:10]
    save_rank_list(splits.query[qi][0], [splits.gallery[j][0] for j in keep],
                   [splits.gallery[j][1] == qpid for j in keep], os.path.join(pics, "rank_list.png"))
    (qp, _, qc), (gp, _, gc) = _pick_alignment_pair(splits)
    feats = features_for(trainer.model, [(qp, 0, qc), (gp, 0, gc)], cfg.height, cfg.width)
    save_alignment(qp, gp, feats["local"][0], feats["local"][1], os.path.join(pics, "dmli_alignment.png"),
                   size=(256, 128))
    written = ["rank_list.png", "dmli_alignment.png"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _warn("demo", "matplotlib is not installed: training_curves.png skipped (pip install matplotlib)")
        return written
    save_curves(trainer.metrics_path, os.path.join(pics, "training_curves.png"), keys=("loss", "local", "mAP"))
    return written + ["training_curves.png"]


def register_demo(sub):
    d = sub.add_parser("demo", help="synthetic data -> train AlignedReID on the CPU -> evaluate -> pictures",
                       description="Writes a synthetic Market-1501-style set, trains AlignedReID (compact CNN "
                       "backbone) on the CPU, evaluates it and draws pictures, all under --out.")
    d.add_argument("--out", default="runs/demo", help="output folder (data, train, results, pictures)")
    d.add_argument("--epochs", type=_positive_int, help="epochs (default: 2 with --quick, else 30)")
    d.add_argument("--ids", type=_positive_int, help="synthetic identities (default: 24 with --quick, else 160)")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, ~1 minute)")
    d.add_argument("--resume", action="store_true", help="continue the demo's training run in --out")
    d.add_argument("--overwrite", action="store_true", help="replace the demo run and results in --out")
    d.add_argument("--progress", type=_progress, default="auto", metavar="{auto,bar,lines,off}",
                   help="auto: a progress bar on a terminal, plain periodic lines otherwise")
    d.add_argument("--no-progress", action="store_true", help="same as --progress off")
    d.add_argument("--local-gamma", type=float, default=0.0, help="soft-DMLI temperature in the local loss "
                   "(0: the hard minimum of DMLI)")
    d.set_defaults(fn=cmd_demo)
    return d
