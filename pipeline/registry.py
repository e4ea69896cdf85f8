"""The MLflow model registry: log a model package as a pyfunc, register it, move aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pipeline
from data.errors import UserError
from data.io import redact_uri

CANDIDATE = "candidate"
CHAMPION = "champion"
TRAIN_RUN_TAG = "tpipe.train_run_id"  # the MLflow run of the training a version was registered from
_PKG_ROOT = Path(pipeline.__file__).resolve().parent.parent


def log_and_register(package_dir: Path, model_name: str, tags: dict[str, str] | None = None,
                     train_run_id: str | None = None) -> dict[str, Any]:
    """Log `package_dir` as a pyfunc model in the active run and register it; alias `candidate`.

    Idempotent per training run: if an interrupted attempt already registered a version of the
    same training (tag tpipe.train_run_id; without one, of the active run), that version is
    completed (tags, alias) instead of registering a second one. The training's own run is never
    reopened: a later registration must not change its status or end time.
    Returns {"version", "model_uri", "run_id"}.
    """
    import warnings

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = mlflow.active_run().info.run_id
    card = _model_card(package_dir)
    tags = dict(tags or {})
    if train_run_id:
        tags[TRAIN_RUN_TAG] = train_run_id
    same = (lambda mv: mv.tags.get(TRAIN_RUN_TAG) == train_run_id) if train_run_id else (lambda mv: mv.run_id == run_id)
    existing = [mv for mv in client.search_model_versions(f"name = '{model_name}'") if same(mv)]
    if existing:
        mv = max(existing, key=lambda m: int(m.version))
        for k, v in tags.items():
            client.set_model_version_tag(model_name, mv.version, k, v)
    else:
        with warnings.catch_warnings():
            # The signature is explicit (no type hints, no input example needed): silence MLflow's advice.
            warnings.filterwarnings("ignore", message=".*(type hints|input example).*")
            info = _log_pyfunc(package_dir, decoding_signature(), name=logged_model_name(model_name, tags or {}))
        mv = mlflow.register_model(info.model_uri, model_name, tags=tags)
    if card:
        # The model card is what the registry's pages show for the model and for this version.
        client.update_model_version(model_name, mv.version, description=card)
        client.update_registered_model(model_name, description=card)
    client.set_registered_model_alias(model_name, CANDIDATE, mv.version)
    return {"version": int(mv.version), "model_uri": f"models:/{model_name}/{mv.version}", "run_id": mv.run_id}


def decoding_signature():
    """Strings in, strings out; decoding params whose default (None) means "the package's own".

    `predict(texts)` decodes with the package's generation.json (eval.beam_size, eval.max_len,
    eval.length_penalty of the run that made it); `predict(texts, params={"beam_size": 5})`
    overrides one setting for one call. MLflow passes every declared param, filled with its
    default when the caller leaves it out, so a concrete default would override the package.
    """
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import DataType, ParamSchema, ParamSpec

    io = infer_signature(["a sentence"], ["a translation"])
    params = ParamSchema([
        ParamSpec("beam_size", DataType.long, None),
        ParamSpec("max_len", DataType.long, None),
        ParamSpec("length_penalty", DataType.double, None),
        ParamSpec("max_len_a", DataType.double, None),
        ParamSpec("max_len_b", DataType.long, None),
    ])
    return ModelSignature(inputs=io.inputs, outputs=io.outputs, params=params)


def logged_model_name(model_name: str, tags: dict[str, str]) -> str:
    """The logged model's name in the UI: the registered name and the config it was trained with."""
    config_hash = tags.get("tpipe.config_hash")
    return f"{model_name}-{config_hash[:8]}" if config_hash else model_name


def _model_card(package_dir: Path) -> str | None:
    card = Path(package_dir) / "README.md"
    return card.read_text(encoding="utf-8") if card.exists() else None


def _log_pyfunc(package_dir: Path, signature, name: str):
    import mlflow

    return mlflow.pyfunc.log_model(
        name=name,
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


def alias_version(model_name: str, alias: str = CHAMPION) -> int | None:
    """The version holding `alias`, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return int(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def promote_if_better(
    model_name: str, version: int, metric: str, new: dict[str, Any], held: dict[str, Any] | None,
    alias: str = CHAMPION,
) -> tuple[bool, str]:
    """Move `alias` to `version` when no version holds it, or when `version` scores higher on `metric`
    than the holder did on the same data.

    `new` and `held` are evaluation results (pipeline.evaluate.evaluate_pyfunc) of `version` and of
    the alias's current holder, each with its `data` identity. Scores measured on different data
    are never compared: the promotion is refused, with the reason.
    """
    from mlflow import MlflowClient

    current = alias_version(model_name, alias)
    if current == version:
        return True, f"version {version} already holds @{alias}"
    if current is not None:
        if held is None:
            return False, f"@{alias} stays v{current}: v{current} was not evaluated on the same data as v{version}"
        if held["data"]["sha256"] != new["data"]["sha256"]:
            return False, (f"@{alias} stays v{current}: its score is on {held['data']['data']} "
                           f"({held['data']['n_sentences']} sentences), v{version}'s on {new['data']['data']} "
                           f"({new['data']['n_sentences']} sentences); only results on the same data are compared")
        if not new[metric] > held[metric]:
            return False, f"@{alias} stays v{current} ({metric} {held[metric]:.2f} >= {new[metric]:.2f} on {new['data']['data']})"
    MlflowClient().set_registered_model_alias(model_name, alias, str(version))
    was = f"v{current} ({metric} {held[metric]:.2f})" if current is not None else "none"
    return True, f"@{alias} -> v{version} ({metric} {new[metric]:.2f} on {new['data']['data']}; was {was})"


class ModelNotFound(UserError, LookupError):
    """A model URI that is malformed or names no registered model, version or alias."""


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME/VERSION -> (NAME, VERSION, None); models:/NAME@ALIAS -> (NAME, None, ALIAS).

    >>> parse_model_uri("models:/tpipe-smoke@champion")
    ('tpipe-smoke', None, 'champion')
    """
    if not model_uri.startswith("models:/"):
        raise ModelNotFound(f"{model_uri!r} is not a registered model URI (models:/NAME/VERSION or models:/NAME@ALIAS)")
    rest = model_uri[len("models:/"):]
    name, sep, alias = rest.partition("@")
    if sep:
        return name, None, alias
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise ModelNotFound(f"{model_uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return name, version, None


def local_package(store_uri: str, model_uri: str) -> Path | None:
    """The model package of a registered version in a sqlite store whose artifacts are local files,
    found with sqlite3 alone, read-only; None wherever anything is not so (MLflow then decides).

    Why not MLflow: importing its client and sqlite store is most of a cold `tpipe translate`
    (3 of 5 seconds on 2 cores), and all it would do here is read two rows. What pyfunc's
    load_context does with the folder found is the same `Translator(package)` (pipeline/pyfunc_model.py).
    """
    import sqlite3

    if not store_uri.startswith("sqlite:///"):
        return None
    db = Path(store_uri.removeprefix("sqlite:///"))
    name, version, alias = parse_model_uri(model_uri)
    if not db.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            if alias is not None:
                rows = con.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                                   (name, alias)).fetchall()
                if len(rows) != 1:
                    return None
                version = str(rows[0][0])
            rows = con.execute("SELECT storage_location, status FROM model_versions WHERE name = ? AND version = ?",
                               (name, int(version))).fetchall()
    except sqlite3.Error:  # another schema, a locked or broken file: MLflow's own message is better
        return None
    if len(rows) != 1 or rows[0][1] != "READY":
        return None
    return _package_in_place(str(rows[0][0]).rstrip("/") + "/artifacts/package")


def _package_in_place(uri: str) -> Path | None:
    """The package folder a file:// URI names, when this machine sees it (its weights are there)."""
    from urllib.parse import unquote, urlparse

    if not uri.startswith("file://"):
        return None
    folder = Path(unquote(urlparse(uri).path))
    return folder if (folder / "model.safetensors").is_file() else None


def package_uri(name: str, version: int) -> str:
    """The artifact URI of a registered version's model package (its pyfunc's `artifacts/package`)."""
    from mlflow import MlflowClient

    return MlflowClient().get_model_version_download_uri(name, str(version)).rstrip("/") + "/artifacts/package"


def fetch_package(uri: str, tracking_uri: str) -> Path:
    """The package folder at `uri` (from package_uri): read in place when it is a file:// folder this
    machine sees, else downloaded through MLflow (another node's disk, S3, an MLflow server).

    Reading in place imports no MLflow: that and pyfunc's loading were 5 of the ~10 s a Ray Data
    actor took to start (torch 2.1 s, mlflow 2.3 s, pyfunc.load_model 2.7 s, on 2 cores).
    """
    local = _package_in_place(uri)
    if local is not None:
        return local
    import mlflow

    from pipeline.tracking import setup_mlflow

    setup_mlflow(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))


def resolve_model_uri(model_uri: str) -> tuple[str, int]:
    """models:/NAME/VERSION or models:/NAME@ALIAS -> (NAME, VERSION), checked against the registry.

    Raises ModelNotFound with one line naming the URI and what exists instead.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(model_uri)
    store = mlflow.get_tracking_uri()
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).exists():
        # Contacting a sqlite store creates it: a lookup must not leave an empty mlflow.db behind.
        raise ModelNotFound(f"{model_uri}: no MLflow store at {store.removeprefix('sqlite:///')} (no model was "
                            "registered in this TPIPE_HOME); set TPIPE_HOME or MLFLOW_TRACKING_URI to where it was")
    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise ModelNotFound(f"{model_uri}: no registered model {name!r} in {redact_uri(mlflow.get_tracking_uri())}; "
                            f"registered: {', '.join(names) or 'none'}") from None
    if alias is not None:
        if alias not in model.aliases:
            raise ModelNotFound(f"{model_uri}: model {name!r} has no alias {alias!r}; "
                                f"aliases: {', '.join(f'{a} -> v{v}' for a, v in sorted(model.aliases.items())) or 'none'}")
        return name, int(model.aliases[alias])
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ModelNotFound(f"{model_uri}: model {name!r} has no version {version}") from None
    return name, int(version)

