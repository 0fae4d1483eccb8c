"""``partdist`` command line: ``demo``, ``train``, ``eval``, ``synthetic``, and the commands
registered in :data:`COMMANDS`.

A user's mistake ends the command with one line on stderr, ``partdist <command>: error: <what
is wrong and the flag that fixes it>``, and exit status 2; ``--debug`` shows the traceback
instead. Nothing on disk is overwritten unless a flag says so (``--resume``, ``--overwrite``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time

import torch


class CLIError(Exception):
    """A user's mistake: printed as one line (``partdist <command>: error: ...``), exit status 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after each flag's help, unless the help already says its default or
    there is none to say (``None``)."""

    def _get_help_string(self, action):
        if "(default" in (action.help or "") or action.default is None:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every flag's default shown in ``--help``; a usage mistake is one line and exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _warn(cmd: str, msg: str):
    print(f"partdist {cmd}: warning: {msg}", file=sys.stderr, flush=True)


class _DeprecatedAlias(argparse.Action):
    """A renamed flag: still accepted (stored under the new name) with a one-line warning."""

    def __init__(self, option_strings, dest, new=None, cmd=None, **kwargs):
        self.new, self.cmd = new, cmd
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        _warn(self.cmd, f"{option_string} is deprecated, use {self.new}")
        setattr(namespace, self.dest, values)


def _bool(v: str) -> bool:
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _progress(v: str) -> str:
    from .train import PROGRESS_MODES

    s = str(v).strip().lower()
    s = {"true": "auto", "yes": "auto", "1": "auto", "false": "off", "no": "off", "0": "off"}.get(s, s)
    if s not in PROGRESS_MODES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(PROGRESS_MODES)}, got {v!r}")
    return s


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return n


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------------------------ checks


def check_device(value: str, flag: str = "--device") -> torch.device:
    """The device a ``--device`` value names, or a :class:`CLIError` saying why it cannot be used."""
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise CLIError(f"{flag} {value}: not a device; use --device cpu, --device cuda or cuda:N") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise CLIError(
                f"{flag} {value}: this torch ({torch.__version__}) is a CPU build without CUDA; use --device cpu, "
                "or install a CUDA build of torch and rebuild partdist against it"
            )
        if not torch.cuda.is_available():
            raise CLIError(f"{flag} {value}: no CUDA GPU is visible on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(
                f"{flag} {value}: this machine has {torch.cuda.device_count()} CUDA GPU(s); use --device cuda "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}) or --device cpu"
            )
    elif dev.type != "cpu":
        raise CLIError(f"{flag} {value}: partdist runs on cpu or cuda; use --device cpu or --device cuda")
    return dev


def _splits(root, dataset="market1501"):
    from .data import load_dataset

    try:
        return load_dataset(dataset, root)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError) as err:
        raise CLIError(f"--data {root}: {err}") from None


def _dataset_stats(splits) -> dict:
    stats = {}
    for name in ("train", "query", "gallery"):
        items = getattr(splits, name)
        stats[name] = {
            "images": len(items),
            "ids": len({p for _, p, _ in items}),
            "cameras": len({c for _, _, c in items}),
        }
    return stats


def _print_stats(stats: dict, splits=("train", "query", "gallery")):
    print("dataset:")
    for name in splits:
        s = stats[name]
        print(f"  {name:8s} {s['ids']:6d} ids {s['images']:7d} images {s['cameras']:3d} cameras")


def _check_images(cmd: str, items, args, out: str = None):
    """The image check (skipped with ``--skip-image-check``): a :class:`CLIError` listing the
    unreadable files (all of them in ``<out>/bad_images.txt`` when ``out`` is given)."""
    from .data.check import check_images, format_bad_images

    if getattr(args, "skip_image_check", False):
        return
    paths = [p for p, _, _ in items]
    t0 = time.time()
    bad = check_images(paths)
    if not bad:
        print(f"image check: {len(set(paths))} images readable ({time.time() - t0:.1f} s)")
        return
    where = ""
    if out:
        os.makedirs(out, exist_ok=True)
        listing = os.path.join(out, "bad_images.txt")
        with open(listing, "w") as f:
            f.writelines(f"{p}\t{why}\n" for p, why in bad)
        where = f" (all listed in {listing})"
    raise CLIError(
        f"{format_bad_images(bad, len(set(paths)))}{where}; replace or remove them, or pass --skip-image-check"
    )


def _flagify(msg: str) -> str:
    """``"k: ..."`` (a TrainConfig field's message) -> ``"--k: ..."``."""
    from .train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    m = re.match(r"^(\w+):", msg)
    if m and m.group(1) in names:
        return _flag(m.group(1)) + msg[m.end(1):]
    return msg


# --------------------------------------------------------------------------------- train


def _add_train_args(ap):
    from .data import DATASETS
    from .train import HELP, MODELS, TrainConfig

    d = TrainConfig()
    ap.add_argument("--data", required=True,
                    help="dataset root folder (`partdist demo` trains on a synthetic set instead)")
    ap.add_argument("--dataset", default="market1501", choices=sorted(DATASETS), help="folder layout of --data")
    ap.add_argument("--config", help="JSON file of training settings (the fields of run.json's config); flags "
                    "given on the command line override it")
    choices = {"model": list(MODELS), "optimizer": ["adam", "sgd"]}  # --backbone: checked by validate()
    for f in dataclasses.fields(d):
        name, default = f.name, getattr(d, f.name)
        kw = dict(dest=name, default=default, help=HELP.get(name, name.replace("_", " ")))
        if name == "milestones":
            ap.add_argument("--milestones", type=int, nargs="*", **kw)
        elif name == "progress":
            ap.add_argument("--progress", type=_progress, metavar="{auto,bar,lines,off}", **kw)
        elif name in choices:
            ap.add_argument(_flag(name), choices=choices[name], **kw)
        elif isinstance(default, bool):
            # `--flag`, `--flag true` or `--flag false`
            ap.add_argument(_flag(name), nargs="?", const=True, type=_bool, metavar="{true,false}", **kw)
        elif name in ("iters_per_epoch",):
            ap.add_argument(_flag(name), type=_positive_int, **kw)
        elif name in ("last_stride",):
            ap.add_argument(_flag(name), type=int, choices=[1, 2], **kw)
        elif name in ("weights",):
            ap.add_argument(_flag(name), metavar="FILE", **kw)
        else:
            ap.add_argument(_flag(name), type=type(default), **kw)
    ap.add_argument("--gamma", dest="lr_gamma", type=float, action=_DeprecatedAlias, new="--lr-gamma", cmd="train",
                    default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    ap.add_argument("--overwrite", action="store_true",
                    help="start a new run in --out even though it holds one (its checkpoint and metrics are replaced)")
    ap.add_argument("--skip-image-check", action="store_true",
                    help="do not open every image's header before the first epoch")


def _config_from(args):
    from .train import TrainConfig

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    try:
        return TrainConfig.from_dict(fields).validate()
    except (TypeError, ValueError) as err:
        raise CLIError(_flagify(str(err))) from None


def _apply_config_file(parser, argv, args):
    """``--config FILE``: its values become the train parser's defaults, then the command line
    is parsed again (so flags given override the file)."""
    from .train import TrainConfig

    try:
        with open(args.config) as f:
            values = json.load(f)
    except FileNotFoundError:
        raise CLIError(f"--config {args.config}: no such file") from None
    except (OSError, json.JSONDecodeError) as err:
        raise CLIError(f"--config {args.config}: not a JSON file ({err})") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]  # a run.json
    if not isinstance(values, dict):
        raise CLIError(f"--config {args.config}: expected a JSON object of training settings")
    try:
        cfg_fields = dataclasses.asdict(TrainConfig.from_dict(values))
    except (TypeError, ValueError) as err:
        raise CLIError(f"--config {args.config}: {err}") from None
    cfg_fields = {k: v for k, v in cfg_fields.items() if k in values or k == "lr_gamma" and "gamma" in values}
    parser.commands["train"].set_defaults(**cfg_fields)
    return parser.parse_args(argv)


def _check_out(out: str, resume: bool, overwrite: bool, run_dir: str = None):
    """``--out`` holding a run needs ``--resume`` or ``--overwrite``; ``--resume`` needs a run.
    ``run_dir``: where the run's checkpoint is (default ``out`` itself)."""
    ckpt = os.path.join(run_dir or out, "checkpoint.pt")
    if resume and overwrite:
        raise CLIError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                       "--overwrite replaces it; give one")
    if resume and not os.path.exists(ckpt):
        raise CLIError(f"--resume: there is no checkpoint to resume ({ckpt} does not exist); drop --resume to "
                       "start a new run, or give the --out of the run to continue")
    if not resume and not overwrite and os.path.exists(ckpt):
        raise CLIError(f"--out {out} already holds a run ({ckpt}); continue it with --resume, replace it with "
                       "--overwrite, or choose another --out")


def _print_config(cfg):
    from .train import resolved_last_stride

    d = dataclasses.asdict(cfg)
    d["last_stride"] = resolved_last_stride(cfg)
    print("configuration:")
    print(f"  model {cfg.model}, backbone {cfg.backbone} "
          f"({'weights from ' + cfg.weights if cfg.weights else 'random initial weights'}), "
          f"last stride {d['last_stride']}, input {cfg.height}x{cfg.width}")
    if cfg.backbone.startswith("resnet") and not cfg.weights:
        print("  (published Market-1501 results start from ImageNet weights: pass --weights resnet50.pth, a local "
              "torchvision state_dict)")
    skip = {"model", "backbone", "weights", "last_stride", "height", "width"}
    print("  " + " ".join(f"{_flag(k)[2:]}={v}" for k, v in d.items() if k not in skip))


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _periodic_eval(splits, cfg, device, progress=False):
    """``trainer -> {"mAP", "rank1", "eval"}`` on query/gallery: the fused global + DMLI distance
    where the model has local features, else the global one (no re-ranking: it is a
    model-selection signal, not the final evaluation)."""
    from .eval.evaluate import evaluate_model

    def run(tr):
        res, _ = evaluate_model(tr.model, splits.query, splits.gallery, cfg.height, cfg.width, device,
                                rerank=False, unaligned=False, progress=progress)
        name = "global + DMLI" if "global + DMLI" in res else "global"
        return {"mAP": res[name]["mAP"], "rank1": res[name]["rank1"], "eval": name}

    return run


def cmd_train(args):
    """Single process, or one process of a DDP run: under ``torchrun`` (or with
    ``--distributed``) the process group is initialized from the environment first."""
    from . import distributed as pdist
    from .train import CheckpointError, Trainer, check_checkpoint_matches, load_checkpoint, make_batches

    cfg = _config_from(args)
    check_device(cfg.device)
    if cfg.weights and not os.path.isfile(cfg.weights):
        raise CLIError(f"--weights {cfg.weights}: no such file (backbone weights are read from a local file, never "
                       "downloaded)")
    under_torchrun = pdist.launched_by_torchrun()
    if not under_torchrun or os.environ.get("RANK", "0") == "0":
        _check_out(cfg.out, args.resume, args.overwrite)
    started = False
    if (cfg.distributed or under_torchrun) and not pdist.is_distributed():
        try:
            _, _, dev = pdist.init_distributed(cfg.device)
        except RuntimeError as err:
            raise CLIError(f"--distributed: {err}") from None
        cfg = dataclasses.replace(cfg, device=str(dev), distributed=True)
        started = True
    main_rank = pdist.rank() == 0
    splits = _splits(args.data, args.dataset)
    stats = _dataset_stats(splits)
    num_classes = stats["train"]["ids"]
    if main_rank:
        _print_stats(stats)
    if num_classes < cfg.p:
        raise CLIError(f"--p {cfg.p}: the training set has only {num_classes} identities and a batch takes --p "
                       f"of them; use --p {num_classes} or fewer")
    if args.resume and main_rank:  # before anything is written or any weight loaded
        ckpt = os.path.join(cfg.out, "checkpoint.pt")
        try:
            state, _ = load_checkpoint(ckpt)
            check_checkpoint_matches(ckpt, state, cfg, num_classes)
        except CheckpointError as err:
            raise CLIError(f"--resume: {err}") from None
        del state
    if main_rank:
        _check_images("train", splits.train + (splits.query + splits.gallery if cfg.eval_every else []), args, cfg.out)
    parts = _parts_for(cfg.model, args.data, splits.train, "--model")
    batches = make_batches(splits.train, cfg, parts=parts)
    if cfg.iters_per_epoch is not None and main_rank and cfg.iters_per_epoch != batches.pass_length:
        how = "stops before the end of" if cfg.iters_per_epoch < batches.pass_length else "cycles past"
        print(f"--iters-per-epoch {cfg.iters_per_epoch}: one pass over the training set is {batches.pass_length} "
              f"iterations; each epoch {how} it")
    if main_rank:
        _print_config(cfg)
        os.makedirs(cfg.out, exist_ok=True)
        _write_json(os.path.join(cfg.out, "run.json"), {
            "config": dataclasses.asdict(cfg), "data": os.path.abspath(args.data), "dataset": args.dataset,
            "dataset_stats": stats, "num_classes": num_classes, "partdist": _version(), "torch": torch.__version__,
            "command": sys.argv,
        })
    evaluate = _periodic_eval(splits, cfg, cfg.device) if cfg.eval_every else None
    tr = Trainer(cfg, num_classes, batches, overwrite=args.overwrite)
    if args.resume:
        tr.resume()
    tr.fit(evaluate)
    if tr.is_main:
        print(f"checkpoint: {tr.ckpt_path}")
        if os.path.exists(tr.best_path) and evaluate is not None:
            best = max((r for r in tr.history if "mAP" in r), key=lambda r: r["mAP"])
            print(f"best: {tr.best_path} (epoch {best['epoch']}, {best['eval']} mAP {100 * best['mAP']:.1f})")
    if started:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------- eval


def _version():
    from ._version import __version__

    return __version__


def _parts_for(model, root, items, flag):
    """The part annotations that ``model`` needs (None for models without parts); a one-line
    error when the data set has none."""
    from .data import part_annotations
    from .models.zoo import model_spec

    needs = model_spec(model).needs
    if not needs:
        return None
    try:
        return part_annotations(root, items, needs, model)
    except ValueError as err:
        raise CLIError(f"{flag} {model}: {err}") from None


def _load_model(path, device="cpu"):
    """``(model, cfg, state)`` of a checkpoint written by ``partdist train`` (read safely)."""
    from .train import CheckpointError, build_model, load_checkpoint

    try:
        state, cfg = load_checkpoint(path, map_location=device)
        model = build_model(cfg, state["num_classes"]).to(device)
        model.load_state_dict(state["model"])
    except CheckpointError as err:
        raise CLIError(f"--checkpoint {err}") from None
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CLIError(f"--checkpoint {path}: its weights do not fit its configuration ({first})") from None
    return model.eval(), cfg, state


AP_NOTE = {
    "torchreid": "mAP: mean over queries of average precision = mean of the precisions at each true match "
                 "(torchreid's definition, non-interpolated)",
    "devkit": "mAP: mean over queries of the Market-1501 devkit's average precision (trapezoid rule between the "
              "precision before and at each true match)",
}
PROTOCOL_NOTE = ("Market-1501 protocol: gallery images of the query's identity from the query's camera and junk "
                 "images (pid -1) are left out of each ranking; queries without a true match are skipped; "
                 "rank-k: CMC at k")


def cmd_eval(args):
    from .eval.evaluate import evaluate_model, format_table
    from .models.zoo import model_spec
    from .viz import save_rank_list

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
    if args.distance or spec.needs or spec.pair or not spec.distributed:
        # the models of partdist.models.MODEL_SPECS beyond AlignedReID / PCB / ICNN: one distance
        from .eval.model_eval import evaluate_reference_model

        q_parts = _parts_for(cfg.model, args.data, splits.query, "--checkpoint")
        g_parts = _parts_for(cfg.model, args.data, splits.gallery, "--checkpoint")
        try:
            res, _ = evaluate_reference_model(model, cfg.model, splits.query, splits.gallery, cfg.height, cfg.width,
                                              device, q_parts, g_parts, distance=args.distance)
        except ValueError as err:
            raise CLIError(f"--distance: {err}") from None
        table = format_table({label: res})
        print(table)
        for name, r in res.items():
            print(f"{name}: {r['ms_per_query']:.2f} ms per query (query features + distances to the gallery)")
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            _write_json(os.path.join(args.out, "results.json"), {
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
                                ap=args.ap)
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
    _write_json(os.path.join(args.out, "results.json"), summary)
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


# ---------------------------------------------------------------------------- synthetic


def cmd_synthetic(args):
    from .data import SyntheticReID

    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise CLIError(f"--out {args.out} is not empty; choose another --out or pass --overwrite")
    root = SyntheticReID(args.out, num_ids=args.ids, num_cams=args.cams, imgs_per_id_cam=args.per_cam,
                         height=args.height, width=args.width, seed=args.seed, setting=args.setting).generate()
    print(root)


# --------------------------------------------------------------------------------- demo


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
    from .eval.evaluate import evaluate_model, format_table
    from .train import TrainConfig, Trainer, build_model, make_batches

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
    _write_json(os.path.join(out, "results.json"), summary)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n\n" + AP_NOTE["torchreid"] + ". " + PROTOCOL_NOTE + ".\n")
    print(f"wrote {out}/results.json and {out}/results.md")

    print("[5/5] pictures")
    pics = os.path.join(out, "pictures")
    written = _demo_pictures(splits, dists, trainer, cfg, pics)
    print(f"wrote {', '.join(written)} in {pics} ({round(time.time() - t_start, 1)} s in all)")


def _demo_pictures(splits, dists, trainer, cfg, pics):
    from .eval.evaluate import features_for
    from .viz import save_alignment, save_curves, save_rank_list

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


# -------------------------------------------------------------------------- registration


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
    d.add_argument("--gamma", dest="local_gamma", type=float, action=_DeprecatedAlias, new="--local-gamma",
                   cmd="demo", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    d.set_defaults(fn=cmd_demo)
    return d


def register_train(sub):
    t = sub.add_parser("train", help="train a model on a dataset folder",
                       description="Train a ReID model on a dataset folder (Market-1501 layout unless "
                       "--dataset). The run folder --out receives checkpoint.pt (every epoch), best.pt (with "
                       "--eval-every), metrics.jsonl and run.json (the resolved configuration and the dataset "
                       "statistics).")
    _add_train_args(t)
    t.set_defaults(fn=cmd_train)
    return t


def register_eval(sub):
    e = sub.add_parser("eval", help="evaluate a checkpoint on query/gallery",
                       description="Evaluate a checkpoint written by `partdist train` on a dataset's query and "
                       "gallery: global, local (DMLI), fused and re-ranked distances, CMC and mAP.")
    e.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a `partdist train` run")
    e.add_argument("--data", required=True, help="dataset root folder")
    from .data import DATASETS

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


def register_synthetic(sub):
    s = sub.add_parser("synthetic", help="write the synthetic set in the Market-1501 layout")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--ids", type=_positive_int, default=100, help="identities")
    s.add_argument("--cams", type=_positive_int, default=4, help="cameras")
    s.add_argument("--per-cam", type=_positive_int, default=2, help="images per identity and camera")
    s.add_argument("--height", type=_positive_int, default=256, help="image height")
    s.add_argument("--width", type=_positive_int, default=128, help="image width")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--setting", choices=("default", "hard"), default="default",
                   help="hard: stronger camera shifts and scale, more occlusion, muted colours")
    s.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    s.set_defaults(fn=cmd_synthetic)
    return s


# The subcommands: each entry adds its parser to the subparsers and sets ``fn`` (called with
# the parsed arguments). Add a command by appending its ``register(subparsers)`` here.
from .search.cli import register as register_search  # noqa: E402  (partdist index, partdist search)

COMMANDS = [register_demo, register_train, register_eval, register_synthetic, register_search]


def build_parser():
    ap = _Parser(prog="partdist", description="partdist: part-based ReID distances, models, training")
    ap.add_argument("--version", action="version", version=f"partdist {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    ap.commands = sub.choices
    for p in sub.choices.values():  # on every command, the registered ones included
        p.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return ap


def _error_message(err: BaseException):
    """``(exit status, one line)`` for an exception that ended a command."""
    from .train import CheckpointError

    msg = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (CLIError, CheckpointError)):
        return 2, msg
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)):
        return 2, _flagify(msg)
    return 1, f"{type(err).__name__}: {msg} (an unexpected error; rerun with --debug for the traceback)"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = build_parser()
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
        if getattr(args, "config", None):
            args = _apply_config_file(ap, argv, args)
        return args.fn(args) or 0
    except KeyboardInterrupt:
        hint = "; resume with --resume" if args.cmd in ("train", "demo") else ""
        print(f"\npartdist {args.cmd}: interrupted{hint}", file=sys.stderr, flush=True)
        return 130
    except Exception as err:
        if args.debug:
            raise
        code, msg = _error_message(err)
        print(f"partdist {args.cmd}: error: {msg}", file=sys.stderr, flush=True)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
