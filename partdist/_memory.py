"""Memory checks for dense outputs and progress bars for long runs.

A dense ``[Q, G]`` distance matrix of a large benchmark is allocated up front; when it
cannot fit, the user should get a clear error naming the streaming alternative, not an
out-of-memory crash (or, with Linux overcommit, the OOM killer once pages are touched).
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["available_bytes", "check_dense_fits", "fmt_bytes", "progress_bar"]


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def available_bytes(device) -> int | None:
    """Memory an allocation on ``device`` can still get, in bytes (``None``: unknown).

    CUDA: free device memory plus what PyTorch's caching allocator holds unused.
    CPU: ``MemAvailable`` of ``/proc/meminfo`` (Linux), capped by a cgroup limit if one
    is set.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    if device.type != "cpu":
        return None
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        return None
    for path, used_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(path) as f:
                limit = f.read().strip()
            with open(used_path) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
        break
    return avail


def check_dense_fits(op: str, shape, dtype: torch.dtype, device, alternative: str) -> None:
    """Raise :class:`MemoryError` when a dense ``shape`` tensor cannot fit on ``device``
    (half types count 6 bytes an entry: the ops compute them in float32, then cast).

    The message names the size needed, the size available and ``alternative`` (the
    chunked / streaming call that avoids the dense output). Skipped while tracing
    (``torch.compile``) and for meta / fake tensors.
    """
    if torch.compiler.is_compiling():
        return
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return  # no memory query inside a CUDA graph capture
    n = 1
    for s in shape:
        n *= int(s)
    per = dtype.itemsize
    if dtype in (torch.float16, torch.bfloat16):
        per += 4  # computed in float32, then cast: both are alive at the end
    need = n * per
    if need < (256 << 20):  # never worth a system call for small outputs
        return
    avail = available_bytes(device)
    if avail is None or need <= avail:
        return
    raise MemoryError(
        f"{op}: the dense output {list(shape)} ({dtype}) needs {fmt_bytes(need)} but only "
        f"{fmt_bytes(avail)} is available on {device}. Use {alternative} instead."
    )


class _StderrBar:  # pragma: no cover - used only where tqdm is missing
    def __init__(self, total, desc, unit):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0

    def update(self, k):
        self.n += k
        sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total} {self.unit}")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\n")


class _NoBar:
    def update(self, k):
        pass

    def close(self):
        pass


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "it"):
    """A tqdm bar (or a plain stderr counter without tqdm); a no-op when not ``enabled``."""
    if not enabled or os.environ.get("PARTDIST_NO_PROGRESS"):
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _StderrBar(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
