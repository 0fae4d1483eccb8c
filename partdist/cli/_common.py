"""What the commands of :mod:`partdist.cli` share: the parser, the one-line user errors, the
device, data-set and image checks, and the notes printed beside the results."""

from __future__ import annotations

import argparse
import dataclasses
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


def _bool(v: str) -> bool:
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def _progress(v: str) -> str:
    from ..runs import PROGRESS_MODES

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
    from ..data import load_dataset

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
    from ..data.check import check_images, format_bad_images

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
    from ..runs import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    m = re.match(r"^(\w+):", msg)
    if m and m.group(1) in names:
        return _flag(m.group(1)) + msg[m.end(1):]
    return msg


def _check_out(out: str, resume: bool, overwrite: bool, run_dir: str = None):
    """``--out`` holding a run needs ``--resume`` or ``--overwrite``; ``--resume`` needs a run.
    ``run_dir``: where the run's checkpoint is (default ``out`` itself)."""
    from ..runs import CHECKPOINT

    ckpt = os.path.join(run_dir or out, CHECKPOINT)
    if resume and overwrite:
        raise CLIError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                       "--overwrite replaces it; give one")
    if resume and not os.path.exists(ckpt):
        raise CLIError(f"--resume: there is no checkpoint to resume ({ckpt} does not exist); drop --resume to "
                       "start a new run, or give the --out of the run to continue")
    if not resume and not overwrite and os.path.exists(ckpt):
        raise CLIError(f"--out {out} already holds a run ({ckpt}); continue it with --resume, replace it with "
                       "--overwrite, or choose another --out")


def _version():
    from .._version import __version__

    return __version__


def _parts_for(model, root, items, flag):
    """The part annotations that ``model`` needs (None for models without parts); a one-line
    error when the data set has none."""
    from ..data import part_annotations
    from ..models.zoo import model_spec

    needs = model_spec(model).needs
    if not needs:
        return None
    try:
        return part_annotations(root, items, needs, model)
    except ValueError as err:
        raise CLIError(f"{flag} {model}: {err}") from None


AP_NOTE = {
    "torchreid": "mAP: mean over queries of average precision = mean of the precisions at each true match "
                 "(torchreid's definition, non-interpolated)",
    "devkit": "mAP: mean over queries of the Market-1501 devkit's average precision (trapezoid rule between the "
              "precision before and at each true match)",
}


PROTOCOL_NOTE = ("Market-1501 protocol: gallery images of the query's identity from the query's camera and junk "
                 "images (pid -1) are left out of each ranking; queries without a true match are skipped; "
                 "rank-k: CMC at k")
