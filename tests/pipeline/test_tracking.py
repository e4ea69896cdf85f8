"""The MLflow store tpipe sets up: created once under a lock, and URIs without their credentials."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from data.io import redact_text, redact_uri, uri_credentials

REPO = Path(__file__).resolve().parents[2]

FIRST_CONTACT = textwrap.dedent(
    """
    import os, sys, time
    import mlflow
    from pipeline.tracking import setup_mlflow
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):  # every process reaches the empty store at once
        time.sleep(0.01)
    print(setup_mlflow(sys.argv[1], "tpipe"))
    """
)


def test_first_contacts_at_once_create_one_sound_store(tmp_path):
    """Four processes meet an empty sqlite store at the same moment (two `tpipe run` in a new home).

    Without the lock each runs MLflow's schema migration and all but one fail on
    `table _alembic_tmp_... already exists`, leaving a store no later run can use.
    """
    uri, go = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_CONTACT, uri, str(go)], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.communicate()
    go.touch()
    outs = [p.communicate(timeout=180) for p in procs]
    failed = [err[-1500:] for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    assert not failed, failed
    assert len({out.strip().splitlines()[-1] for out, _ in outs}) == 1  # one experiment, the same id for all
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert not [t for (t,) in db.execute("select name from sqlite_master where type='table'") if "alembic_tmp" in t]


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://me:s3cret@mlflow:5000/x", "http://mlflow:5000/x"),
        ("https://TOKEN@host/api", "https://host/api"),
        ("postgresql://u:p@ss@db:5432/mlflow", "postgresql://db:5432/mlflow"),  # an unescaped '@' in the password
        ("cannot reach http://me:pw@h:5000 (nor 'https://t@x/y')", "cannot reach http://h:5000 (nor 'https://x/y')"),
        ("sqlite:////home/me/.tpipe/mlflow.db", "sqlite:////home/me/.tpipe/mlflow.db"),
        ("http://h:5000, write to me@example.com", "http://h:5000, write to me@example.com"),
    ],
)
def test_redaction_removes_the_user_info_of_every_uri_and_nothing_else(text, shown):
    assert redact_text(text) == shown
    assert redact_uri(text) == shown


def test_credentials_of_a_uri_are_read_percent_decoded():
    assert uri_credentials("http://me:p%40ss%3A@h/") == ("me", "p@ss:")
    assert uri_credentials("https://TOKEN@h/") == ("TOKEN", None)
    assert uri_credentials("http://h:5000") == (None, None)


def test_unreachable_server_is_one_line_without_the_password(tmp_path):
    """The password of the URI (and of the environment) appears nowhere in the failure, which says
    which server did not answer."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    password = "planted-Pw-7d1e"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TPIPE_HOME": str(tmp_path / "h"), "PYTHONPATH": str(REPO),
           "MLFLOW_TRACKING_URI": f"http://ci:{password}@127.0.0.1:{port}", "MLFLOW_TRACKING_PASSWORD": password,
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert password not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"MLflow tracking server http://127.0.0.1:{port} did not answer" in lines[0], proc.stderr


def test_a_login_in_the_uri_moves_to_mlflows_variables_and_the_uri_goes_on_bare(monkeypatch):
    from pipeline.tracking import credentials_to_env

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "older")
    assert credentials_to_env("http://ci:p%40ss@127.0.0.1:5000/") == "http://127.0.0.1:5000/"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ci", "p@ss")
    assert credentials_to_env("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
