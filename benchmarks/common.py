"""Timing, memory, device and result-file helpers shared by the benchmark scripts.

GPU timings: every timed call is bracketed by ``torch.cuda.synchronize()`` (wall time of the
whole call, launches and Python overhead included, as a user sees it), after warm-up calls that
absorb lazy module loading and cuBLAS initialization; medians of the repetitions.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device="cpu", reps=5, warmup=1, max_seconds=None):
    """Median wall time of ``fn()`` over ``reps`` runs (after ``warmup`` runs; at least 2 on CUDA
    when ``warmup`` > 0).

    With ``max_seconds`` the repetitions stop early once that much time was spent
    (at least one timed run is always made).
    """
    if warmup > 0 and torch.device(device).type == "cuda":
        warmup = max(warmup, 2)
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


def _kind(target):
    return "GPU" if target["device"] == "cuda" else target["device"].upper()


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


def time_and_peak(fn, device="cpu", warmup=None):
    """One timed run of ``fn()`` that also measures its peak extra memory (see
    :func:`peak_extra_memory`): ``(seconds, bytes or None, result)``. For runs too long to
    repeat. ``warmup`` untimed runs first (default: 1 on CUDA, where the first call pays for
    lazy kernel loading and library handles, 0 on the CPU)."""
    box = {}
    if warmup is None:
        warmup = 1 if torch.device(device).type == "cuda" else 0
    for _ in range(warmup):
        fn()
    sync(device)

    def run():
        sync(device)
        t0 = time.perf_counter()
        box["out"] = fn()
        sync(device)
        box["t"] = time.perf_counter() - t0

    mem = peak_extra_memory(run, device)
    return box["t"], mem, box["out"]


# ------------------------------------------------------------------------------------------ devices
def add_device_arg(ap, what="benchmark"):
    ap.add_argument("--device", action="append", choices=["cpu", "cuda", "all"],
                    help=f"run the {what} on cpu and/or cuda, repeatable, in the order given "
                         "(default: cpu, plus cuda when present; all = cpu and cuda)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures and GPU targets to PATH (JSON)")


def resolve_devices(ap, values):
    """Devices from repeated ``--device`` values; ``cuda`` without a GPU is a clear error, ``all``
    and the default quietly leave it out."""
    have_cuda = torch.cuda.is_available()
    if not values:
        return ["cpu"] + (["cuda"] if have_cuda else [])
    out = []
    for v in values:
        for d in (["cpu", "cuda"] if v == "all" else [v]):
            if d == "cuda" and not have_cuda:
                if v == "all":
                    continue
                ap.error("--device cuda: torch.cuda.is_available() is False (no GPU, or a CPU build of torch); "
                         "use --device cpu")
            if d not in out:
                out.append(d)
    return out


# ------------------------------------------------------------------------------------------ results
class Results:
    """Figures and GPU targets of one benchmark script, written as JSON to ``--json PATH``.

    The file is rewritten after every record, so a run that is cut short keeps what it measured.
    Targets are declared with :meth:`target` (goal ``value <op> limit``) and measured with
    :meth:`measure`; one never measured (no GPU) stays ``met: null``. Without a path nothing is
    written; the met/missed lines are printed either way.
    """

    def __init__(self, path, bench):
        self.path = path
        self.data = {"bench": bench, "torch": torch.__version__, "records": [], "targets": []}
        if torch.cuda.is_available():
            self.data["gpu"] = torch.cuda.get_device_name()
        self._write()

    def add(self, case, device, method, value, unit="s", note=""):
        if value is not None:
            value = float(value)
        self.data["records"].append(
            {"case": case, "device": str(device), "method": method, "value": value, "unit": unit, "note": note})
        self._write()

    def target(self, name, limit, op, unit="s", device="cuda"):
        if op not in ("<", "<=", ">=", ">"):
            raise ValueError(f"target {name!r}: op must be one of <, <=, >=, >")
        self.data["targets"].append(
            {"name": name, "device": device, "limit": limit, "op": op, "unit": unit, "value": None, "met": None})
        self._write()

    def measure(self, name, value, device):
        """Record a target's measured value when ``device`` is the target's device (else ignore)."""
        for t in self.data["targets"]:
            if t["name"] == name and torch.device(device).type == t["device"]:
                t["value"] = float(value)
                lim = t["limit"]
                t["met"] = {"<": value < lim, "<=": value <= lim, ">=": value >= lim, ">": value > lim}[t["op"]]
                print(f"{_kind(t)} target {name}: {'met' if t['met'] else 'MISSED'} "
                      f"(measured {value:.4g}{t['unit']}, goal {t['op']} {lim}{t['unit']})")
                self._write()
                return t["met"]
        return None

    def finish(self):
        for t in self.data["targets"]:
            if t["met"] is None:
                print(f"{_kind(t)} target {t['name']}: not measured (no {t['device']} run at its size and setting)")
        self._write()

    def _write(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.data, fh, indent=1)
        os.replace(tmp, self.path)
