"""What `tpipe submit` sends to a cluster, and what it refuses (the submission itself runs in
tests/deploy/test_rehearsal.py against a real `ray start --head` and `mlflow server`)."""

from __future__ import annotations

import pytest

from pipeline.submit import EXCLUDES, SECRET_ENV, SubmitError, tracking_uri_for_cluster


@pytest.mark.parametrize("uri", ["sqlite:////home/me/.tpipe/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns"])
def test_local_store_refused_for_a_remote_cluster(uri):
    with pytest.raises(SubmitError, match="cannot reach; use a tracking server: set MLFLOW_TRACKING_URI=http"):
        tracking_uri_for_cluster("http://10.0.0.5:8265", uri)


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://localhost:8265", "127.0.0.1:8265"])
def test_local_store_allowed_for_a_cluster_on_this_machine(address):
    assert tracking_uri_for_cluster(address, "sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_server_uri_passes_for_any_cluster(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri_for_cluster("http://10.0.0.5:8265", "http://mlflow:5000") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example")
    assert tracking_uri_for_cluster("http://10.0.0.5:8265", None) == "https://mlflow.example"


def test_secrets_are_never_forwarded_and_stores_never_uploaded():
    import pipeline.submit as submit

    assert not set(SECRET_ENV) & set(submit.FORWARDED_ENV)
    assert {".venv", ".tpipe", ".git", "mlflow.db"} <= set(EXCLUDES)


def test_cli_refuses_bad_config_before_contacting_a_cluster(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", "smoke", "train.max_steps=-1", "--address", "http://127.0.0.1:9"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TPIPE_HOME": str(tmp_path / "h")},
    )
    assert proc.returncode == 2 and "train.max_steps: -1 is below the minimum 1" in proc.stderr


@pytest.mark.parametrize("address", ["http://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_an_unreachable_address_is_one_line_naming_it(address, tmp_path):
    """Nothing listens there: one line naming the address, in seconds (a bare host:port is what Ray
    takes for a GCS address, which its client retries for half a minute, logging from C++)."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = address.format(port=s.getsockname()[1])  # closed again: nothing listens there
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "jobs", "list", "--address", address],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TPIPE_HOME": str(tmp_path / "h")},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"tpipe: cannot reach a Ray job API at {address} (Connection refused): is the head " \
                                  "running and its port (8265 by default) forwarded?"
    assert time.perf_counter() - t0 < 20
