"""What both data steps do around their Ray tasks: insist on Ray, gather the results with progress
and readable errors, and join the tasks' per-shard rejects files into one."""

from __future__ import annotations

import os
import shutil

from data.errors import UserError
from data.io import atomic_path
from data.progress import Progress


def require_ray():
    import ray

    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised; call ray.init(...) before the data steps")
    return ray


# The refs of tasks still running when another failed: held so that their errors, if any, are not
# reported as unhandled when the refs are garbage-collected; the tasks finish on their own.
_left_running: list = []


def gather(ray, refs: list, label: str = "", unit: str = "tasks", settle_s: float = 30.0) -> list:
    """ray.get, but bad input surfaces as the DataError the task raised, not wrapped in a Ray traceback.

    With a label, reports the tasks finished so far, their rate and the time left (data/progress.py).
    On a failure the other tasks are given settle_s to finish and their results are collected, so
    that Ray does not print their errors later as unhandled ones (a traceback per task for one bad
    file). They are not cancelled: in Ray 2.60 a `ray.cancel` that races with the task's own reply
    fails a RAY_CHECK in the driver ("Tried to complete task that was not pending", the
    `it != submissible_tasks_.end()` family of ray-project/ray#54846), which ends the calling
    process with exit 1 and nothing on its terminal.
    """
    try:
        if label and refs:
            progress, remaining = Progress(label, len(refs), unit), list(refs)
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=1)
                ray.get(ready)  # a failed task fails the step now, not after the others finish
                progress.update(len(ready))
            progress.close()
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        finished, running = ray.wait(refs, num_returns=len(refs), timeout=settle_s)
        for r in finished:
            try:
                ray.get(r)
            except Exception:  # noqa: BLE001 - collected only so that it counts as handled
                pass
        _left_running.extend(running)
        if isinstance(getattr(e, "cause", None), UserError):
            raise e.cause from None
        raise


def concat_files(parts: list[str], dest: str, *, missing_ok: bool = False) -> None:
    """Write dest atomically as the bytes of the parts, in order (the rejects files); missing_ok skips absent parts."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for p in parts:
            if missing_ok and not os.path.exists(p):
                continue
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
