"""``partdist train``: train a model of :data:`partdist.models.MODEL_SPECS` on a dataset folder
(one process, or one rank of a ``torchrun`` run)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch

from ..runs import write_json
from ._common import (
    CLIError,
    _bool,
    _check_images,
    _check_out,
    _dataset_stats,
    _flag,
    _flagify,
    _parts_for,
    _positive_int,
    _print_stats,
    _progress,
    _splits,
    _version,
    check_device,
)


def _add_train_args(ap):
    from ..data import DATASETS
    from ..runs import AMP_MODES, HELP, MODELS, TrainConfig

    d = TrainConfig()
    ap.add_argument("--data", required=True,
                    help="dataset root folder (`partdist demo` trains on a synthetic set instead)")
    ap.add_argument("--dataset", default="market1501", choices=sorted(DATASETS), help="folder layout of --data")
    ap.add_argument("--config", help="JSON file of training settings (the fields of run.json's config); flags "
                    "given on the command line override it")
    # --backbone: checked by TrainConfig.validate() (the torchvision names, or timm:NAME)
    choices = {"model": list(MODELS), "optimizer": ["adam", "sgd"],
               "amp": list(AMP_MODES)}
    for f in dataclasses.fields(d):
        name, default = f.name, getattr(d, f.name)
        kw = dict(dest=name, default=default, help=HELP.get(name, name.replace("_", " ")))
        if name in _RESUMED:  # unset: the resumed run's own value (see _resolve_resumed)
            kw.update(default=None, help=f"{kw['help']} (default: {str(default).lower()}; with --resume: the run's)")
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
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    ap.add_argument("--overwrite", action="store_true",
                    help="start a new run in --out even though it holds one (its checkpoint and metrics are replaced)")
    ap.add_argument("--skip-image-check", action="store_true",
                    help="do not open every image's header before the first epoch")


# Settings that a resumed run keeps unless the command line gives them: how the step is
# computed (TrainConfig.amp, .compile), not what is trained.
_RESUMED = ("amp", "compile")


def _resolve_resumed(args):
    """``--amp`` and ``--compile`` not given on the command line: with ``--resume`` the values
    of the run in ``--out`` (its checkpoint's configuration), else the defaults."""
    from ..runs import CHECKPOINT, CheckpointError, TrainConfig, load_checkpoint

    unset = [n for n in _RESUMED if getattr(args, n, None) is None]
    if not unset:
        return
    saved = TrainConfig()
    ckpt = os.path.join(args.out, CHECKPOINT)
    if args.resume and os.path.exists(ckpt):
        try:
            _, saved = load_checkpoint(ckpt)
        except CheckpointError:
            pass  # the resume check reports it
    for n in unset:
        setattr(args, n, getattr(saved, n))


def _config_from(args):
    from ..runs import TrainConfig

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    try:
        return TrainConfig.from_dict(fields).validate()
    except (TypeError, ValueError) as err:
        raise CLIError(_flagify(str(err))) from None


def _apply_config_file(parser, argv, args):
    """``--config FILE``: its values become the train parser's defaults, then the command line
    is parsed again (so flags given override the file)."""
    from ..runs import TrainConfig

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


def _print_config(cfg):
    from ..runs import resolved_last_stride

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


def _periodic_eval(splits, cfg, device, progress=False):
    """``trainer -> {"mAP", "rank1", "eval"}`` on query/gallery: the fused global + DMLI distance
    where the model has local features, else the global one (no re-ranking: it is a
    model-selection signal, not the final evaluation)."""
    from ..eval.evaluate import evaluate_model

    def run(tr):
        res, _ = evaluate_model(tr.model, splits.query, splits.gallery, cfg.height, cfg.width, device,
                                rerank=False, unaligned=False, progress=progress)
        name = "global + DMLI" if "global + DMLI" in res else "global"
        return {"mAP": res[name]["mAP"], "rank1": res[name]["rank1"], "eval": name}

    return run


def cmd_train(args):
    """Single process, or one process of a DDP run: under ``torchrun`` (or with
    ``--distributed``) the process group is initialized from the environment first."""
    from .. import distributed as pdist
    from ..runs import CHECKPOINT, RUN_JSON, CheckpointError, check_checkpoint_matches, load_checkpoint
    from ..train import Trainer, make_batches

    _resolve_resumed(args)
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
        ckpt = os.path.join(cfg.out, CHECKPOINT)
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
        write_json(os.path.join(cfg.out, RUN_JSON), {
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


def register_train(sub):
    t = sub.add_parser("train", help="train a model on a dataset folder",
                       description="Train a ReID model on a dataset folder (Market-1501 layout unless "
                       "--dataset). The run folder --out receives checkpoint.pt (every epoch), best.pt (with "
                       "--eval-every), metrics.jsonl and run.json (the resolved configuration and the dataset "
                       "statistics).")
    _add_train_args(t)
    t.set_defaults(fn=cmd_train)
    return t
