"""Peak resident memory of the process while a stage runs (the report's ``peak_rss_mib``).

The peak of a stage is the largest resident set size (RSS) the whole process had while the stage ran, from
two sources:

- a light sampling thread that reads ``/proc/self/statm`` every :data:`SAMPLE_SECONDS` (one small read; it
  holds the GIL for microseconds, torch releases it in kernels), and
- ``getrusage(RUSAGE_SELF).ru_maxrss``, the kernel's exact all-time high-water mark: when it rose since the
  previous stage closed, this stage set the process's peak, and that exact value is taken.

    peak(stage) = max(max sampled RSS in the stage, ru_maxrss at its end if it rose since the last stage)

Limits: a spike shorter than the sampling interval that does not set a new all-time high is missed; RSS
counts the whole process (other threads, the caller's own data, memory the allocator keeps after a free), so
a stage's peak is an absolute number, not what the stage alone allocated. Without ``/proc`` (macOS, Windows)
only the ``ru_maxrss`` part is there; without ``resource`` (Windows) nothing is, and the peak is None.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

#: How often the sampler reads RSS: copies and runs of a large model take far longer than this.
SAMPLE_SECONDS = 0.005
MIB = 2**20
_STATM = "/proc/self/statm"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int | None:
    """The process's resident set size now, or None where ``/proc`` is missing."""
    try:
        with open(_STATM, "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def max_rss_bytes() -> int | None:
    """The process's all-time peak RSS (``ru_maxrss``: KiB on Linux, bytes on macOS), or None."""
    if resource is None:
        return None
    high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(high) if sys.platform == "darwin" else int(high) * 1024


def to_mib(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


class PeakWatch:
    """Peak RSS over consecutive windows: :meth:`open` starts one, :meth:`close` ends it and returns its
    peak in bytes (module docstring). The ``ru_maxrss`` part of a window reaches back to the previous
    :meth:`close`, so work between two windows is still counted when it set a new high."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval = interval
        self._high: int | None = max_rss_bytes()
        self._peak: list[int] = [0]  # shared with the sampler thread
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize | None = None
        self.peak: int | None = None  # the last window's, when used as a context manager

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    def open(self) -> None:
        if self.is_open:
            return
        self._peak = [current_rss_bytes() or 0]
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_sample, args=(self._stop, self._peak, self.interval), name="graphopt-rss", daemon=True
        )
        self._thread.start()
        # A window left open (a pass raised and nobody closed it) ends when the watch is collected.
        self._finalizer = weakref.finalize(self, self._stop.set)

    def close(self) -> int | None:
        """End the window; its peak RSS in bytes (None where neither source exists)."""
        if self._stop is not None and self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self._finalizer is not None:
                self._finalizer.detach()
        self._stop = self._thread = None
        now = current_rss_bytes()
        sampled = max(self._peak[0], now or 0) or None
        high = max_rss_bytes()
        rose = high is not None and (self._high is None or high > self._high)
        self._high = high
        if sampled is None:  # no /proc: the all-time high is the best bound there is
            return high
        return max(sampled, high) if rose and high is not None else sampled

    def __enter__(self) -> PeakWatch:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = self.close()


def _sample(stop: threading.Event, peak: list[int], interval: float) -> None:
    # A function, not a bound method: the thread must not keep the watch alive (see the finalizer).
    while not stop.wait(interval):
        rss = current_rss_bytes()
        if rss is None:
            return
        if rss > peak[0]:
            peak[0] = rss
