"""The MLflow model registry: log a model package as a pyfunc, register it, move aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pipeline
from data.errors import UserError

CANDIDATE = "candidate"
CHAMPION = "champion"
_PKG_ROOT = Path(pipeline.__file__).resolve().parent.parent


def log_and_register(package_dir: Path, model_name: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Log `package_dir` as a pyfunc model in the active run and register it; alias `candidate`.

    Idempotent per training run: if an interrupted attempt already registered a version from the
    active run, that version is completed (tags, alias) instead of registering a second one.
    Returns {"version", "model_uri", "run_id"}.
    """
    import warnings

    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    # params let callers change decoding per call: predict(texts, params={"beam_size": 5}).
    client = MlflowClient()
    run_id = mlflow.active_run().info.run_id
    existing = [mv for mv in client.search_model_versions(f"name = '{model_name}'") if mv.run_id == run_id]
    if existing:
        mv = max(existing, key=lambda m: int(m.version))
        for k, v in (tags or {}).items():
            client.set_model_version_tag(model_name, mv.version, k, v)
        client.set_registered_model_alias(model_name, CANDIDATE, mv.version)
        return {"version": int(mv.version), "model_uri": f"models:/{model_name}/{mv.version}", "run_id": mv.run_id}

    signature = infer_signature(["a sentence"], ["a translation"], params={"beam_size": 1, "max_len": 64, "length_penalty": 1.0})
    with warnings.catch_warnings():
        # The signature is explicit (no type hints, no input example needed): silence MLflow's advice.
        warnings.filterwarnings("ignore", message=".*(type hints|input example).*")
        info = _log_pyfunc(package_dir, signature)
    mv = mlflow.register_model(info.model_uri, model_name, tags=tags or {})
    client.set_registered_model_alias(model_name, CANDIDATE, mv.version)
    return {"version": int(mv.version), "model_uri": f"models:/{model_name}/{mv.version}", "run_id": mv.run_id}


def _log_pyfunc(package_dir: Path, signature):
    import mlflow

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(_PKG_ROOT / "pipeline" / "pyfunc_model.py"),
        artifacts={"package": str(package_dir)},
        # tpipe's own packages travel with the model so a fresh process can load it.
        code_paths=[str(_PKG_ROOT / p) for p in ("pipeline", "model", "data")],
        signature=signature,
        pip_requirements=_requirements(),
    )


def _requirements() -> list[str]:
    """Pinned to what is installed: pip requirements inference would import every module (slow)."""
    from importlib.metadata import version

    reqs = []
    for dist in ("torch", "safetensors", "regex", "sentencepiece", "pyarrow", "pyyaml", "numpy", "mlflow"):
        try:
            v = version(dist)
        except Exception:
            continue
        reqs.append(f"{dist}=={v.split('+')[0]}")
    return reqs


def champion_version(model_name: str) -> int | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return int(MlflowClient().get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException:
        return None


def version_metric(model_name: str, version: int, metric: str) -> float | None:
    """The test-set score recorded on a version by its evaluation (tag `eval.<metric>`)."""
    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version(model_name, str(version))
    value = mv.tags.get(f"eval.{metric}")
    return float(value) if value is not None else None


def promote_if_better(model_name: str, version: int, metric: str, alias: str = CHAMPION) -> tuple[bool, str]:
    """Move `alias` to `version` when there is no holder or the version scores higher on `metric`."""
    from mlflow import MlflowClient

    client = MlflowClient()
    new = version_metric(model_name, version, metric)
    if new is None:
        return False, f"version {version} has no eval.{metric}; evaluate it first"
    current = champion_version(model_name) if alias == CHAMPION else None
    if current == version:
        return True, f"version {version} already holds @{alias}"
    old = version_metric(model_name, current, metric) if current is not None else None
    if current is None or old is None or new > old:
        client.set_registered_model_alias(model_name, alias, str(version))
        was = f"v{current} ({metric} {old:.2f})" if old is not None else "none"
        return True, f"@{alias} -> v{version} ({metric} {new:.2f}; was {was})"
    return False, f"@{alias} stays v{current} ({metric} {old:.2f} >= {new:.2f})"


class ModelNotFound(UserError, LookupError):
    """A model URI that is malformed or names no registered model, version or alias."""


def resolve_model_uri(model_uri: str) -> tuple[str, int]:
    """models:/NAME/VERSION or models:/NAME@ALIAS -> (NAME, VERSION), checked against the registry.

    Raises ModelNotFound with one line naming the URI and what exists instead.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        raise ModelNotFound(f"{model_uri!r} is not a registered model URI (models:/NAME/VERSION or models:/NAME@ALIAS)")
    rest = model_uri[len("models:/"):]
    name, sep, alias = rest.partition("@")
    version = ""
    if not sep:
        name, _, version = rest.rpartition("/")
        if not name or not version.isdigit():
            raise ModelNotFound(f"{model_uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise ModelNotFound(f"{model_uri}: no registered model {name!r} in {mlflow.get_tracking_uri()}; "
                            f"registered: {', '.join(names) or 'none'}") from None
    if sep:
        if alias not in model.aliases:
            raise ModelNotFound(f"{model_uri}: model {name!r} has no alias {alias!r}; "
                                f"aliases: {', '.join(f'{a} -> v{v}' for a, v in sorted(model.aliases.items())) or 'none'}")
        return name, int(model.aliases[alias])
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ModelNotFound(f"{model_uri}: model {name!r} has no version {version}") from None
    return name, int(version)

