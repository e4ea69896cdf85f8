"""MLflow setup: one store for the driver, the Ray workers and `tpipe ui`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.home import Home


def setup_mlflow(tracking_uri: str, experiment: str, home: Home | None = None) -> str:
    """Point MLflow at `tracking_uri` and make sure `experiment` exists; returns its id.

    A sqlite store keeps its artifacts under the tpipe home (absolute path), not in the
    working directory where MLflow would put them by default.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:") and home is not None:
        artifact_location = (home.mlflow_artifacts / experiment).as_uri()
    try:
        return mlflow.create_experiment(experiment, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 0.1}} -> {'train.lr': '0.1'}: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, ensure_ascii=False) if isinstance(v, (list, tuple)) else str(v)
    return out


def log_dict_params(params: dict[str, Any]) -> None:
    """Log a nested config as params, in chunks (MLflow caps a batch at 100)."""
    import mlflow

    items = list(flatten(params).items())
    for i in range(0, len(items), 90):
        mlflow.log_params(dict(items[i : i + 90]))


def log_artifact_file(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    if Path(path).exists():
        mlflow.log_artifact(str(path), artifact_path)
