"""Fault injection, for tests only: the one place that reads tpipe's fault-injection variables.

Nothing here does anything unless a test sets one of these in the environment:

    TPIPE_INJECT_TASK_KILL=encode TPIPE_INJECT_DIR=/tmp/x   a data task SIGKILLs itself once (maybe_kill)
    TPIPE_INJECT_KILL_WORKER=RANK:STEP                       a training worker kills itself once (worker_kill)
    TPIPE_INJECT_KILL_TRANSLATE_ACTOR=BATCH:MARKER_FILE      a decoding actor kills itself once (translate_actor_kill)

Each fault fires once: a marker file says it already has, so Ray's retry of the task, worker or
actor carries on, as it would after a lost worker.
"""

from __future__ import annotations

import os
import signal

TASK_KILL = "TPIPE_INJECT_TASK_KILL"
TASK_KILL_DIR = "TPIPE_INJECT_DIR"
WORKER_KILL = "TPIPE_INJECT_KILL_WORKER"
TRANSLATE_ACTOR_KILL = "TPIPE_INJECT_KILL_TRANSLATE_ACTOR"


def maybe_kill(point: str) -> None:
    """The first task that reaches `maybe_kill(point)` SIGKILLs its own worker after leaving a marker."""
    if os.environ.get(TASK_KILL) != point or not os.environ.get(TASK_KILL_DIR):
        return
    marker = os.path.join(os.environ[TASK_KILL_DIR], f"killed-{point}")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one task wins
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def worker_kill(marker_dir: str) -> list | None:
    """TPIPE_INJECT_KILL_WORKER='1:20' -> [1, 20, '<marker_dir>/.injected-kill']: rank 1 dies after step 20."""
    spec = os.environ.get(WORKER_KILL)
    if not spec:
        return None
    rank, step = (int(x) for x in spec.split(":"))
    return [rank, step, os.path.join(marker_dir, ".injected-kill")]


def translate_actor_kill() -> list | None:
    """TPIPE_INJECT_KILL_TRANSLATE_ACTOR='150:/tmp/m' -> [150, '/tmp/m']: the actor decoding batch 150 dies."""
    spec = os.environ.get(TRANSLATE_ACTOR_KILL)
    if not spec:
        return None
    batch, marker = spec.split(":", 1)
    return [int(batch), marker]
