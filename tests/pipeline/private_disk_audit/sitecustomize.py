"""Loaded by every Python process of a simulated node with a private disk (its PYTHONPATH starts here).

An audit hook refuses to open any path under TPIPE_AUDIT_FORBIDDEN (the driver's TPIPE_HOME and
test folder, separated by os.pathsep), as a real second machine would not have them, and appends
each attempt to TPIPE_AUDIT_LOG so the test sees attempts whose error was caught and retried.
"""

import os
import sys

_FORBIDDEN = tuple(os.path.join(p, "") for p in os.environ.get("TPIPE_AUDIT_FORBIDDEN", "").split(os.pathsep) if p)
_LOG = os.environ.get("TPIPE_AUDIT_LOG", "")
_busy = False


def _audit(event: str, args: tuple) -> None:
    global _busy
    if event != "open" or _busy or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    if not os.path.join(path, "").startswith(_FORBIDDEN):
        return
    _busy = True  # the log write below is an open() too
    try:
        if _LOG:
            with open(_LOG, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {path}\n")
    finally:
        _busy = False
    raise PermissionError(f"private-disk audit: {path} is on the driver's disk, not on this node")


if _FORBIDDEN:
    sys.addaudithook(_audit)
