"""What `tpipe run` shows on the terminal: tpipe's own lines; the libraries' output goes to a log file.

Ray (its start-up warnings, worker errors relayed to the driver), MLflow, Lightning and Python
warnings all write to file descriptor 2, in this process and in the processes it starts. During a
run that descriptor points at `tpipe.log` in the run folder, so the terminal (or a Ray job log)
keeps tpipe's progress and results; `tpipe --verbose run` leaves it on the terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "tpipe.log"
_terminal: list[int] = []  # the stderr descriptors that stderr_to_file set aside, innermost last


def say_on_terminal(line: str) -> None:
    """Write one line where the user sees it: the real stderr, also while stderr_to_file is on
    (for a last line before os._exit, when no `finally` will restore the descriptor)."""
    sys.stderr.flush()
    os.write(_terminal[-1] if _terminal else 2, (line + "\n").encode())


@contextmanager
def stderr_to_file(path: Path) -> Iterator[Path]:
    """Point file descriptor 2 (this process's stderr, inherited by processes started meanwhile) at
    `path`, appended to, and restore it on exit. The descriptor itself moves, so output written
    by C++ (Ray's core worker) and by child processes is caught too, not only Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 2)
    _terminal.append(saved)
    try:
        yield path
    finally:
        sys.stderr.flush()
        _terminal.remove(saved)
        os.dup2(saved, 2)
        os.close(saved)
