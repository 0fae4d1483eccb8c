"""``partdist`` command line: ``demo``, ``train``, ``eval``, ``synthetic``, ``index``, ``search``:
one module per command (``partdist/cli/<command>.py``; ``index`` and ``search`` in
:mod:`partdist.search.cli`), each with a ``register(subparsers)`` listed in :data:`COMMANDS`.

A user's mistake ends the command with one line on stderr, ``partdist <command>: error: <what
is wrong and the flag that fixes it>``, and exit status 2; ``--debug`` shows the traceback
instead. Nothing on disk is overwritten unless a flag says so (``--resume``, ``--overwrite``).
"""

from __future__ import annotations

import sys

from ._common import CLIError, _Parser, _version, check_device
from .demo import register_demo
from .eval import register_eval
from .synthetic import register_synthetic
from .train import register_train

__all__ = ["main", "build_parser", "COMMANDS", "CLIError", "check_device"]


def _register_search(sub):  # partdist index, partdist search
    from ..search.cli import register

    return register(sub)


# The subcommands: each entry adds its parser to the subparsers and sets ``fn`` (called with
# the parsed arguments). Add a command by appending its ``register(subparsers)`` here.
COMMANDS = [register_demo, register_train, register_eval, register_synthetic, _register_search]


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
    from ..runs import CheckpointError
    from ._common import _flagify

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
            from .train import _apply_config_file

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

