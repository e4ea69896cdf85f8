"""MLflow setup: one store for the driver, the Ray workers and `tpipe ui`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data.errors import UserError
from data.io import file_lock, redact_text, redact_uri, uri_credentials
from pipeline.home import Home


def is_local_store(uri: str) -> bool:
    """A store on this machine's disk (sqlite, file, a bare path), not a tracking server."""
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def credentials_to_env(uri: str) -> str:
    """Move a tracking URI's user-info into MLFLOW_TRACKING_USERNAME/PASSWORD; returns the bare URI.

    From here on only the bare URI exists in tpipe (printed lines, summary.json, params, the saved
    config, the workers' config), so no later print or record can carry the password. MLflow's
    client reads the login from those variables on every request, and a local Ray started after
    this call hands them to its workers through their environment, which Ray does not log.
    'http://me:pw@h:5000' -> 'http://h:5000' with MLFLOW_TRACKING_USERNAME=me, MLFLOW_TRACKING_PASSWORD=pw.
    """
    user, password = uri_credentials(uri)
    if user is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = user  # the URI is the more specific of the two: it wins
    if password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return redact_uri(uri)


class TrackingUnreachable(UserError, RuntimeError):
    """The MLflow tracking server did not answer within the bounded retries."""


def check_tracking_server(uri: str, retries: int = 2, timeout_s: int = 10) -> None:
    """Fail fast, before any work, when a tracking *server* does not answer.

    MLflow's own client retries for minutes by default; tpipe bounds it (the MLFLOW_HTTP_REQUEST_*
    variables, unless the user set them) so a wrong URI is a clear error, not a hang.
    """
    if not uri.startswith(("http://", "https://")):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    from mlflow import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # connection refused, DNS, TLS, 5xx after retries, 401
        reason = redact_text(str(e).splitlines()[0][:300])
        raise TrackingUnreachable(
            f"MLflow tracking server {redact_uri(uri)} did not answer after "
            f"{os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES']} retries ({type(e).__name__}: {reason}); "
            "start it, fix MLFLOW_TRACKING_URI, or set MLFLOW_TRACKING_USERNAME/PASSWORD"
        ) from None


def setup_mlflow(tracking_uri: str, experiment: str | None = None, home: Home | None = None) -> str | None:
    """Point MLflow's tracking and registry at `tracking_uri`; with `experiment`, make it exist and be
    the active one, and return its id. The one MLflow set-up of tpipe (driver, trials, commands).

    A sqlite store keeps its artifacts under the tpipe home (absolute path), not in the
    working directory where MLflow would put them by default.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exported = os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_registry_uri(tracking_uri)
    # set_registry_uri also exports MLFLOW_REGISTRY_URI for child processes; a caller's later
    # subprocess (a re-run in another TPIPE_HOME, a test's client) must pick its own store.
    if exported is None:
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    else:
        os.environ["MLFLOW_REGISTRY_URI"] = exported
    if experiment is None:
        return None
    create_store(tracking_uri)
    experiment_id = _experiment_id(tracking_uri, experiment, home)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _experiment_id(tracking_uri: str, experiment: str, home: Home | None) -> str:
    """The id of `experiment`, created if missing (with its artifacts under the home for a sqlite store)."""
    import mlflow

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


def create_store(tracking_uri: str) -> None:
    """Create (and migrate) a local sqlite store once, under a lock beside the database file.

    MLflow creates a new store's tables by running its schema migrations on first contact; when
    processes do that on one file at once, all but one fail (`table _alembic_tmp_... already
    exists`) and the store is left half-migrated for every later run. Under the lock the first
    process migrates and the others find the tables made. Servers migrate on their own side.
    """
    import logging

    from mlflow import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        return
    db = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    if db in ("", ":memory:"):
        return
    # MLflow announces its migration at INFO on stderr ("Creating initial MLflow database tables...")
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with file_lock(f"{db}.lock"):
        # The first contact creates the store; MLflow caches it, so this process's later calls
        # (and any process after this one) find every table and migrate nothing.
        MlflowClient(tracking_uri).search_experiments(max_results=1)


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

    items = [(k, redact_text(v)) for k, v in flatten(params).items()]  # a URI's password is no param
    for i in range(0, len(items), 90):
        mlflow.log_params(dict(items[i : i + 90]))


def log_artifact_file(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    if Path(path).exists():
        mlflow.log_artifact(str(path), artifact_path)


def log_training_pictures(run_id: str, model, tokenizer, example: tuple[list[int], list[int]], out_dir: Path) -> None:
    """Attention heatmap of one validation example and the loss curves, as PNG artifacts of the run."""
    import mlflow
    import torch

    from data.framing import frame_source, frame_target
    from pipeline.plots import attention_heatmap_png

    src_ids, tgt_ids = example
    bos, eos, max_len = tokenizer.bos_id, tokenizer.eos_id, model.cfg.max_seq_len
    src = torch.tensor(frame_source(src_ids, eos, max_len))
    tgt = torch.tensor(frame_target(tgt_ids, bos, eos, max_len)[:-1])  # the decoder's input: BOS then the reference
    inspection = model.inspect(src, tgt)
    # bytes, not text: a byte-level token may be part of a character (the plot escapes those)
    token = lambda i: tokenizer.decode_bytes([i], skip_special=False) or f"<{i}>"  # noqa: E731
    heatmap = attention_heatmap_png(
        inspection, [token(i) for i in inspection.src], [token(i) for i in inspection.tgt], out_dir / "attention.png"
    )
    mlflow.log_artifact(str(heatmap), "pictures", run_id=run_id)
    curve = loss_curve_png(run_id, out_dir / "loss_curves.png")
    if curve is not None:
        mlflow.log_artifact(str(curve), "pictures", run_id=run_id)


def loss_curve_png(run_id: str, path: Path) -> Path | None:
    """train/loss and val/loss against the step, from the run's metric history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    client = MlflowClient()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for key in ("train/loss", "val/loss"):
        last: dict[int, float] = {}
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            last[m.step] = m.value  # after a resume, a step's latest value wins
        if last:
            steps = sorted(last)
            ax.plot(steps, [last[s] for s in steps], marker="." if key == "val/loss" else None, label=key)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
