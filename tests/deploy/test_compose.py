"""deploy/mlflow: the compose file is valid Compose, binds 127.0.0.1 only and has no default secret;
the MLflow image and basic_auth.ini carry no password either."""

from __future__ import annotations

import json
import re
from importlib import resources

import jsonschema
import pytest
import yaml
from sqlalchemy.engine import make_url

from deploy_testlib import COMPOSE, DEPLOY, SECRET_NAME, constraints, dockerfile_args, read_ini

REQUIRED = re.compile(r"^\$\{(?P<name>[A-Z][A-Z0-9_]*):\?(?P<message>[^}]+)\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose_schema() -> dict:
    # The Compose Specification's JSON schema, as vendored by check-jsonschema.
    text = (resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    return json.loads(text)


def test_compose_file_matches_the_compose_spec(compose, compose_schema):
    jsonschema.validators.validator_for(compose_schema)(compose_schema).validate(compose)
    bad = {**compose, "services": {**compose["services"], "mlflow": {**compose["services"]["mlflow"], "portz": []}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, compose_schema)  # the schema is live: a typo is refused


def test_only_mlflow_publishes_a_port_and_only_on_loopback(compose):
    published = {name: svc["ports"] for name, svc in compose["services"].items() if svc.get("ports")}
    assert list(published) == ["mlflow"], "PostgreSQL and MinIO stay on the compose network"
    for port in published["mlflow"]:
        assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{port} is not bound to 127.0.0.1"
    for svc in compose["services"].values():
        assert svc.get("network_mode") != "host"


def test_every_credential_is_a_required_variable(compose):
    """`${VAR:?message}`: compose refuses to start without it, and there is no default to fall back on."""
    seen = set()
    for name, svc in compose["services"].items():
        for key, value in svc.get("environment", {}).items():
            if SECRET_NAME.search(key) or key in ("AWS_ACCESS_KEY_ID", "MINIO_ROOT_USER"):
                m = REQUIRED.match(str(value))
                assert m, f"{name}.{key} = {value!r}: use ${{VAR:?set VAR}}"
                seen.add(m["name"])
    assert ":-" not in COMPOSE.read_text().split("services:", 1)[1], "no ${VAR:-default} anywhere"
    assert seen == {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD",
                    "MLFLOW_FLASK_SERVER_SECRET_KEY"}


def test_mlflow_service_runs_basic_auth_on_postgres_and_minio(compose):
    svc = compose["services"]["mlflow"]
    args = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), True) for a in svc["command"])
    assert args["app-name"] == "basic-auth"
    url = make_url(args["backend-store-uri"])
    assert url.get_backend_name() == "postgresql" and url.host == "postgres" and url.password is None
    assert args["serve-artifacts"] is True and args["artifacts-destination"].startswith("s3://")
    assert svc["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert svc["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert svc["image"].endswith(":" + constraints()["mlflow"]), "server and client on the same MLflow"
    assert "healthcheck" in svc and "healthcheck" in compose["services"]["postgres"]


def test_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        tag = svc["image"].rpartition(":")[2]
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {svc['image']} is not pinned"


def test_postgres_creates_the_auth_database(compose):
    mounts = compose["services"]["postgres"]["volumes"]
    assert "./postgres-init:/docker-entrypoint-initdb.d:ro" in mounts
    sql = (DEPLOY / "mlflow/postgres-init/10-mlflow-auth-db.sql").read_text()
    auth_db = make_url(read_ini(DEPLOY / "mlflow/basic_auth.ini")["mlflow"]["database_uri"]).database
    assert f"CREATE DATABASE {auth_db} OWNER mlflow;" in sql


def test_basic_auth_ini_has_no_password():
    """The admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD, the database's from PGPASSWORD (libpq).
    That MLflow accepts this file is shown by test_rehearsal.py, which runs a server on it."""
    section = read_ini(DEPLOY / "mlflow/basic_auth.ini")["mlflow"]
    assert "admin_password" not in section
    assert make_url(section["database_uri"]).password is None
    assert section["default_permission"] == "READ"
    assert section["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"


def test_mlflow_image_pins_the_client_version():
    args = dockerfile_args(DEPLOY / "mlflow/Dockerfile")
    assert args["MLFLOW_VERSION"] == constraints()["mlflow"]
    text = (DEPLOY / "mlflow/Dockerfile").read_text()
    for pkg in re.findall(r'"([A-Za-z0-9_.\[\]-]+)==', text):
        assert pkg in ("mlflow[auth]", "psycopg2-binary", "boto3"), pkg
    assert "ENTRYPOINT [\"mlflow\", \"server\"]" in text and "USER 1000:1000" in text
