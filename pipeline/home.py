"""Where a run keeps its state: the tpipe home, the MLflow store and the Ray connection.

Every path is absolute so that Ray workers (other processes, other working directories) and
`tpipe ui` see the same store as the driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
    def ray_results(self) -> Path:
        """Ray Train's storage_path when none is configured."""
        return self.root / "ray_results"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    def tracking_uri(self, configured: str | None = None) -> str:
        """Config value, else `MLFLOW_TRACKING_URI`, else a sqlite store in this home."""
        return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    def ui_command(self, tracking_uri: str) -> str:
        if tracking_uri.startswith("sqlite:"):
            return (
                f"mlflow ui --backend-store-uri {tracking_uri} "
                f"--default-artifact-root {self.mlflow_artifacts} --host 127.0.0.1 --port 5000"
            )
        return f"open {tracking_uri}"
