"""``partdist`` command line: ``demo``, ``train``, ``eval``, ``synthetic``, ``index``, ``search``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch


def _splits(data, dataset="market1501"):
    from .data import load_dataset

    return load_dataset(dataset, data)


def _add_train_args(ap):
    from .train import MODELS, TrainConfig

    d = TrainConfig()
    ap.add_argument("--data", required=False, help="dataset root (Market-1501 layout unless --dataset)")
    ap.add_argument("--dataset", default="market1501")
    ap.add_argument("--config", help="JSON file with TrainConfig fields (flags override it)")
    for f in dataclasses.fields(d):
        if f.name in ("milestones",):
            ap.add_argument("--milestones", type=int, nargs="*", default=None)
            continue
        if f.name == "model":
            ap.add_argument("--model", choices=MODELS, default=None, help=f"default {d.model}")
            continue
        default = getattr(d, f.name)
        typ = type(default) if default is not None else (int if f.name in ("iters_per_epoch", "last_stride") else str)
        if typ is bool:
            # `--flag`, `--flag true` or `--flag false`
            ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, nargs="?", const=True,
                            type=lambda v: v.lower() in ("1", "true", "yes"), default=None)
        else:
            ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ, default=None)
    ap.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")


def _config_from(args, **defaults):
    from .train import TrainConfig

    fields = {}
    if args.config:
        with open(args.config) as f:
            fields.update(json.load(f))
    fields.update(defaults)
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            fields[f.name] = v
    return TrainConfig(**fields)


def cmd_train(args):
    """Single process, or one process of a DDP run: under ``torchrun`` (or with
    ``--distributed``) the process group is initialized from the environment first."""
    from . import distributed as pdist
    from .train import make_batches, train

    if not args.data:
        sys.exit("partdist train: --data ROOT is required (or use `partdist demo` for the synthetic set)")
    cfg = _config_from(args)
    started = False
    if (cfg.distributed or pdist.launched_by_torchrun()) and not pdist.is_distributed():
        _, _, dev = pdist.init_distributed(cfg.device)
        cfg = dataclasses.replace(cfg, device=str(dev), distributed=True)
        started = True
    splits = _splits(args.data, args.dataset)
    num_classes = len({pid for _, pid, _ in splits.train})
    tr = train(cfg, num_classes, make_batches(splits.train, cfg), resume=args.resume)
    if tr.is_main:
        print(f"checkpoint: {tr.ckpt_path}")
    if started:
        torch.distributed.destroy_process_group()


def _load_model(path, device="cpu"):
    from .train import TrainConfig, build_model

    state = torch.load(path, map_location=device, weights_only=False)
    cfg = TrainConfig(**state["config"])
    model = build_model(cfg, state["num_classes"]).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def cmd_eval(args):
    from .eval.evaluate import evaluate_model, format_table

    model, cfg = _load_model(args.checkpoint, args.device)
    splits = _splits(args.data, args.dataset)
    res, _ = evaluate_model(model, splits.query, splits.gallery, cfg.height, cfg.width, args.device,
                            lam=args.lam, rerank=not args.no_rerank, flip=args.flip,
                            progress=not args.no_progress and sys.stderr.isatty())
    print(format_table({os.path.basename(args.checkpoint): res}))


def cmd_synthetic(args):
    from .data import SyntheticReID

    root = SyntheticReID(args.out, num_ids=args.ids, num_cams=args.cams, imgs_per_id_cam=args.per_cam,
                         height=args.height, width=args.width, seed=args.seed).generate()
    print(root)


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
    from .data import SyntheticReID, market1501
    from .eval.evaluate import evaluate_model, features_for, format_table
    from .train import TrainConfig, Trainer, build_model, make_batches
    from .viz import save_alignment, save_curves, save_rank_list

    t_start = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = args.out
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
    print(f"      train {len(splits.train)} images / {num_classes} ids, query {len(splits.query)}, gallery {len(splits.gallery)}")

    epochs = args.epochs or (2 if quick else 30)
    cfg = TrainConfig(model="aligned", backbone="compact", last_stride=1, height=128, width=64,
                      p=min(8, num_classes), k=4,
                      epochs=epochs, lr=1e-3, warmup_epochs=1 if quick else 2,
                      milestones=[int(epochs * 0.75)], seed=args.seed, out=os.path.join(out, "train"),
                      iters_per_epoch=2 if quick else None, progress=not args.no_progress,
                      local_gamma=args.gamma)
    eval_kw = dict(height=cfg.height, width=cfg.width)

    print("[2/5] untrained model (random init), for reference")
    torch.manual_seed(args.seed)
    untrained = build_model(cfg, num_classes)
    res_untrained, _ = evaluate_model(untrained, splits.query, splits.gallery, rerank=False, **eval_kw)

    soft = f", soft-DMLI gamma={args.gamma}" if args.gamma else ""
    print(f"[3/5] training AlignedReID (compact backbone, 8 stripes{soft}) for {epochs} epochs on the CPU")

    def periodic_eval(tr):
        r, _ = evaluate_model(tr.model, splits.query, splits.gallery, global_only=True, **eval_kw)
        return {"mAP": r["global"]["mAP"], "rank1": r["global"]["rank1"]}

    trainer = Trainer(cfg, num_classes, make_batches(splits.train, cfg))
    if args.resume:
        trainer.resume()
    trainer.fit(periodic_eval, eval_every=1 if quick else 2)

    print("[4/5] evaluation (Market-1501 protocol)")
    res_trained, dists = evaluate_model(trainer.model, splits.query, splits.gallery, rerank=True, **eval_kw)
    table = format_table({"untrained": res_untrained, "trained": res_trained})
    print(table)

    print("[5/5] pictures")
    pics = os.path.join(out, "pictures")
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
    save_curves(trainer.metrics_path, os.path.join(pics, "training_curves.png"), keys=("loss", "local", "mAP"))
    summary = {"untrained": res_untrained, "trained": res_trained, "epochs": epochs,
               "seconds": round(time.time() - t_start, 1), "train_images": len(splits.train),
               "query": len(splits.query), "gallery": len(splits.gallery)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(f"wrote {out}/results.json, {out}/results.md and {pics}/*.png in {summary['seconds']} s")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="partdist", description="partdist: part-based ReID distances, models, training")
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="synthetic data -> train AlignedReID on the CPU -> evaluate -> pictures")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int)
    d.add_argument("--ids", type=int)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, ~1 minute)")
    d.add_argument("--resume", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--gamma", type=float, default=0.0, help="soft-DMLI in the local loss (0 = DMLI)")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train", help="train a model on a dataset folder")
    _add_train_args(t)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--dataset", default="market1501")
    e.add_argument("--device", default="cpu")
    e.add_argument("--lam", type=float, default=1.0)
    e.add_argument("--flip", action="store_true")
    e.add_argument("--no-rerank", action="store_true")
    e.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    e.set_defaults(fn=cmd_eval)

    s = sub.add_parser("synthetic", help="write the synthetic set in the Market-1501 layout")
    s.add_argument("--out", required=True)
    s.add_argument("--ids", type=int, default=100)
    s.add_argument("--cams", type=int, default=4)
    s.add_argument("--per-cam", type=int, default=2)
    s.add_argument("--height", type=int, default=256)
    s.add_argument("--width", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_synthetic)

    from .search.cli import register as _register_search  # partdist index / partdist search

    _register_search(sub)

    args = ap.parse_args(argv)
    import signal

    def _sigterm(signum, frame):
        raise KeyboardInterrupt

    # A kill or Ctrl-C loses at most the current epoch (checkpoints are written atomically after
    # each). SIGTERM (schedulers; torchrun stopping its workers) is treated as Ctrl-C.
    previous = None
    if args.cmd in ("train", "demo"):
        try:
            previous = signal.signal(signal.SIGTERM, _sigterm)
        except ValueError:  # not the main thread
            pass
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        hint = "; resume with --resume" if args.cmd in ("train", "demo") else ""
        print(f"\npartdist {args.cmd}: interrupted{hint}", file=sys.stderr, flush=True)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
