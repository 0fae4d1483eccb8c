"""Timing and memory helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import statistics
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device="cpu", reps=5, warmup=1, max_seconds=None):
    """Median wall time of ``fn()`` over ``reps`` runs (after ``warmup`` runs).

    With ``max_seconds`` the repetitions stop early once that much time was spent
    (at least one timed run is always made).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return statistics.median(times)


def _read_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def peak_extra_memory(fn, device="cpu"):
    """Peak memory ``fn()`` needs beyond what was in use before it, in bytes.

    CUDA: ``torch.cuda.max_memory_allocated`` (exact, allocator-level).
    CPU: the process's peak resident set (VmHWM) after resetting it through
    ``/proc/self/clear_refs``, minus the resident set before: page-level, includes
    allocator caching; ``None`` where /proc does not allow the reset.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _read_status("VmRSS")
    fn()
    peak = _read_status("VmHWM")
    if base is None or peak is None:
        return None
    return max(0, peak - base)


def fmt_time(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_mem(b):
    if b is None:
        return "-"
    return f"{b / 2**20:.0f} MiB"


def env_line(device):
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    return f"torch {torch.__version__}, {name}"


def print_table(rows, headers):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


def time_and_peak(fn, device="cpu"):
    """One timed run of ``fn()`` that also measures its peak extra memory (see
    :func:`peak_extra_memory`): ``(seconds, bytes or None, result)``. For runs too long to
    repeat."""
    box = {}

    def run():
        sync(device)
        t0 = time.perf_counter()
        box["out"] = fn()
        sync(device)
        box["t"] = time.perf_counter() - t0

    mem = peak_extra_memory(run, device)
    return box["t"], mem, box["out"]
