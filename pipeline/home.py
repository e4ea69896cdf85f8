"""Where a run keeps its state: the tpipe home (step outputs, run folders, the run lock) and the MLflow store.

Every path is absolute so that Ray workers (other processes, other working directories) and
`tpipe ui` see the same store as the driver.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from data.errors import UserError
from data.io import file_lock, redact_text


class RunLocked(UserError, RuntimeError):
    """Another `tpipe run` is working in this home (they would share state.json and step folders)."""


@dataclass(frozen=True)
class Home:
    """The tpipe home: `$TPIPE_HOME`, else `./.tpipe` in the working directory."""

    root: Path

    @classmethod
    def resolve(cls) -> "Home":
        root = Path(os.environ.get("TPIPE_HOME") or ".tpipe").expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def artifacts(self) -> Path:
        """Step outputs, keyed by fingerprint (the workflow's cache)."""
        return self.root / "artifacts"

    @property
    def runs(self) -> Path:
        """One folder per pipeline run: resolved config, step states."""
        return self.root / "runs"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def run_lock_file(self) -> Path:
        """Held (fcntl.flock) by the one `tpipe run` working in this home; names it while held."""
        return self.root / "run.lock"

    @contextmanager
    def run_lock(self) -> Iterator[dict | None]:
        """Hold this home's run lock for the block, or raise RunLocked naming the run that holds it.

        Yields the record of an earlier holder that died without releasing it (a killed run), or
        None. The kernel drops a dead process's flock, so such a lock is simply taken over; its
        record is what is left in the file, which a run that ends normally empties.
        """
        try:
            with file_lock(str(self.run_lock_file), wait=False) as f:
                f.seek(0)
                stale = _holder(f.read())
                f.seek(0)
                f.truncate()
                f.write(json.dumps({"pid": os.getpid(), "started": time.time(),
                                    "command": redact_text(" ".join(["tpipe", *sys.argv[1:]]))}))
                f.flush()
                try:
                    yield stale
                finally:
                    f.seek(0)
                    f.truncate()
        except BlockingIOError:
            holder = self._live_holder()
            raise RunLocked(
                f"another run is working in {self.root}: {describe_holder(holder)}; "
                "wait for it to finish or stop it (one run per TPIPE_HOME; another home runs in parallel)"
            ) from None

    def _live_holder(self, wait_s: float = 5.0) -> dict:
        """The record of the run holding the lock, as soon as it has written it.

        A run writes its record just after taking the lock, so a run refused in between would read an
        empty file, or the record of a killed run the winner is taking over; it waits a moment for the
        winner's own record (a live pid) rather than name nobody.
        """
        deadline = time.monotonic() + wait_s
        while True:
            holder = _holder(self.run_lock_file.read_text(encoding="utf-8")) or {}
            if ("pid" in holder and _alive(holder["pid"])) or time.monotonic() > deadline:
                return holder
            time.sleep(0.05)

    def active_run(self) -> dict | None:
        """The record of the run working in this home ({pid, started, command}), or None.

        Read-only: taking the lock to test it could refuse a run starting at that moment.
        """
        try:
            holder = _holder(self.run_lock_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        if holder is None or "pid" not in holder:
            return None
        # killed without releasing the lock: the next run takes it over
        return holder if _alive(holder["pid"]) else None

    def tracking_uri(self, configured: str | None = None) -> str:
        """Config value, else `MLFLOW_TRACKING_URI`, else a sqlite store in this home."""
        return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    def ui_command(self, tracking_uri: str) -> str:
        if tracking_uri.startswith("sqlite:"):
            return (
                f"mlflow ui --backend-store-uri {tracking_uri} "
                f"--default-artifact-root {self.mlflow_artifacts} --host 127.0.0.1 --port 5000"
            )
        return f"open {redact_text(tracking_uri)}"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _holder(text: str) -> dict | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict) -> str:
    """{'pid': 4242, 'started': 1.7e9, 'command': 'tpipe run smoke'} -> 'pid 4242, started 2026-...Z: tpipe run smoke'."""
    if "pid" not in holder:
        return "pid unknown (it is starting)"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return f"pid {holder['pid']}, started {started}: {holder.get('command', '?')}"
