"""Progress of a training epoch: a tqdm bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import sys
import time
from typing import Optional

__all__ = ["Progress"]


def _fmt_seconds(t: float) -> str:
    t = int(round(t))
    return f"{t // 3600}:{t // 60 % 60:02d}:{t % 60:02d}" if t >= 3600 else f"{t // 60}:{t % 60:02d}"


class Progress:
    """Progress of one epoch. ``bar``: a tqdm bar with the total and the ETA (for a terminal);
    ``lines``: a plain line about every ``every_s`` seconds with the iteration, the total, the
    loss, the elapsed time and the ETA (for log files: no ``\\r`` frames; the epoch's summary
    line follows at its end); ``off``."""

    def __init__(self, mode: str, desc: str, total: Optional[int], log=print, every_s: float = 30.0):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.desc, self.total, self.log, self.every_s = mode, desc, total, log, every_s
        self.t0 = self.last = time.time()
        self.n = 0
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, loss: float):
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        elif self.mode == "lines":
            now = time.time()
            if now - self.last >= self.every_s:
                self.last = now
                self.log(self._line(loss, now))

    def _line(self, loss, now):
        el = now - self.t0
        tot = f"/{self.total}" if self.total else ""
        eta = f" eta {_fmt_seconds(el / self.n * (self.total - self.n))}" if self.total and self.n else ""
        return f"{self.desc} iter {self.n}{tot} loss {loss:.4f} elapsed {_fmt_seconds(el)}{eta}"

    def close(self):
        if self.bar is not None:
            self.bar.close()
