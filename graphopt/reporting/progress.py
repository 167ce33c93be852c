"""A minimal progress bar for long work (training, calibration, benchmarks) that can be quiet.

On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints a line at most every 10 % so logs
stay short. ``quiet=True`` prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, desc: str, *, quiet: bool = False, stream: TextIO | None = None):
        self.total, self.desc, self.quiet = max(total, 1), desc, quiet
        self.stream = stream or sys.stderr
        self.count = 0
        self.start = time.perf_counter()
        self._last_decile = -1
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, n: int = 1, **postfix: float | str) -> None:
        self.count = min(self.count + n, self.total)
        if self.quiet:
            return
        fraction = self.count / self.total
        info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())
        elapsed = time.perf_counter() - self.start
        filled = int(fraction * 20)
        bar = "#" * filled + "." * (20 - filled)
        line = f"{self.desc} [{bar}] {self.count}/{self.total} {elapsed:.1f}s {info}"
        if self._tty:
            end = "\n" if self.count == self.total else ""
            self.stream.write("\r" + line.rstrip() + end)
            self.stream.flush()
            return
        decile = int(fraction * 10)
        if decile > self._last_decile or self.count == self.total:
            self._last_decile = decile
            self.stream.write(line.rstrip() + "\n")
            self.stream.flush()
