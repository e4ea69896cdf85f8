"""Progress of work that takes a while: `label: done/total unit, rate/s, eta`, readable anywhere.

    progress = Progress("encode: shards", total=8, unit="shards")
    progress.update(3)   # on a terminal: one line rewritten in place
    progress.close()     # elsewhere (a file, a Ray job log): plain lines, at most one per `every` s

Not a terminal means no carriage returns or escape codes: a log holds one readable line per report.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts finished work and reports it with its rate and the time left."""

    def __init__(self, label: str, total: int, unit: str = "tasks", stream: TextIO | None = None, every: float = 10.0):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.5 if self.tty else every
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = self.t0

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f"eta {(self.total - self.done) / rate:.0f}s" if 0 < rate and self.done < self.total else f"{elapsed:.1f}s"
        return f"{self.label}: {self.done}/{self.total} {self.unit}  {rate:.1f}/s  {eta}"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            self._write(self.line(), final=False)

    def close(self) -> None:
        self._write(self.line(), final=True)

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(79) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
