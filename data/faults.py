"""Fault injection for durability tests: make one Ray task die once, as a lost worker would.

    TPIPE_INJECT_TASK_KILL=encode TPIPE_INJECT_DIR=/tmp/x tpipe run ...

The first task that reaches `maybe_kill("encode")` SIGKILLs its own worker process after leaving a
marker in TPIPE_INJECT_DIR; Ray retries the task (tasks keep Ray's default max_retries) and the
retry finds the marker and carries on. Nothing happens unless both variables are set.
"""

from __future__ import annotations

import os
import signal


def maybe_kill(point: str) -> None:
    if os.environ.get("TPIPE_INJECT_TASK_KILL") != point or not os.environ.get("TPIPE_INJECT_DIR"):
        return
    marker = os.path.join(os.environ["TPIPE_INJECT_DIR"], f"killed-{point}")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one task wins
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
