"""pipeline/registry.py helpers that need no trained model, on a real MLflow store."""

from __future__ import annotations

import pytest

from pipeline.registry import ModelNotFound, fetch_package, parse_model_uri


def _package(folder):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "generation.json").write_text('{"max_len": 24}\n')
    return folder


def test_a_package_this_machine_sees_is_read_in_place(tmp_path):
    pkg = _package(tmp_path / "package")
    assert fetch_package(pkg.as_uri(), "sqlite:///unused.db") == pkg


def test_any_other_package_is_downloaded_through_mlflow(tmp_path):
    import mlflow

    pkg = _package(tmp_path / "package")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    experiment = mlflow.create_experiment("registry-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(pkg), "package")
    got = fetch_package(f"runs:/{run.info.run_id}/package", store)
    assert got != pkg and (got / "model.safetensors").read_bytes() == b"weights"
    assert (got / "generation.json").read_text() == '{"max_len": 24}\n'


@pytest.mark.parametrize("uri, parsed", [
    ("models:/tpipe-smoke/3", ("tpipe-smoke", "3", None)),
    ("models:/tpipe-smoke@champion", ("tpipe-smoke", None, "champion")),
])
def test_parse_model_uri(uri, parsed):
    assert parse_model_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/tpipe-smoke", "models:/tpipe-smoke/latest"])
def test_parse_model_uri_refuses_what_is_not_a_version_or_alias(uri):
    with pytest.raises(ModelNotFound, match="models:/NAME/VERSION or models:/NAME@ALIAS"):
        parse_model_uri(uri)
