"""Multi-process tests over gloo on the CPU, localhost only and bounded by timeouts: each rank (a
spawned process) joins the process group, runs a test's body and saves what it returns; the
parent gets every rank's result, or fails with the ranks' tracebacks (a rank that raises reports
instead of hanging the others' parent)."""

import datetime
import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(target, extra_args, world=2, timeout=120):
    """Spawn ``world`` processes ``target(rank, port, *extra_args)`` and join them; processes
    still alive after ``timeout`` seconds are killed. Returns ``(procs, hung)``."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, port, *extra_args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(5)
    return procs, hung


def _result_path(out_dir, rank):
    return os.path.join(out_dir, f"rank{rank}.pt")


def _rank_main(rank, port, world, out_dir, body, args):
    """One rank: one thread, the gloo group on 127.0.0.1:``port``, then ``body(rank, *args)``
    saved to ``rank<r>.pt`` in ``out_dir`` (a traceback to ``rank<r>.pt.err``)."""
    path = _result_path(out_dir, rank)
    try:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        torch.save(body(rank, *args), path)
        dist.destroy_process_group()
    except Exception:  # report to the parent instead of hanging it
        with open(path + ".err", "w") as f:
            f.write(traceback.format_exc())
        raise


def run_gloo(body, args, out_dir, world=2, timeout=120, what="workers"):
    """``body(rank, *args)`` (a module-level function) on ``world`` gloo ranks; the list of
    their return values by rank. Skips without gloo; fails with the ranks' tracebacks when one
    raised or was still running after ``timeout`` seconds."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    procs, hung = run_ranks(_rank_main, (world, out_dir, body, args), world=world, timeout=timeout)
    errors = [f"rank {r}:\n" + open(_result_path(out_dir, r) + ".err").read()
              for r in range(world) if os.path.exists(_result_path(out_dir, r) + ".err")]
    assert not hung, f"{what} did not finish within {timeout} s\n" + "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), "\n".join(errors) or [p.exitcode for p in procs]
    return [torch.load(_result_path(out_dir, r), weights_only=True) for r in range(world)]
