"""Ctrl-C and SIGTERM during `tpipe run`: both end the run the same way, as RunInterrupted.

The step is recorded as interrupted, its MLflow run is marked KILLED, Ray is shut down; finished
steps are kept and a re-run continues.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped `tpipe run`; finished steps are kept and a re-run continues."""

    def __init__(self, step: str | None, signal_name: str):
        super().__init__(step, signal_name)
        self.step, self.signal_name = step, signal_name


class Interrupts:
    """SIGTERM raises RunInterrupted as Ctrl-C raises KeyboardInterrupt, while a run is on.

    Both then unwind the same way: the step is recorded as interrupted, its MLflow run is marked
    KILLED, Ray (and with a local Ray its Train workers) is shut down. `step` names the running step
    for the message. ray.init installs a SIGTERM handler of its own, so `install` runs again after it.
    """

    def __init__(self) -> None:
        self.step: str | None = None
        self._previous: Any = None

    def _on_sigterm(self, signum, frame) -> None:
        raise RunInterrupted(self.step, "SIGTERM")

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def __enter__(self) -> "Interrupts":
        self._previous = signal.getsignal(signal.SIGTERM)
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is threading.main_thread() and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@contextmanager
def killed_on_interrupt():
    """An interrupt ends the active MLflow run as KILLED, not FAILED (MLflow's choice for any exception)."""
    try:
        yield
    except KeyboardInterrupt:
        import mlflow

        mlflow.end_run("KILLED")
        raise
