"""Helpers shared by the pipeline tests (a module of its own: several test folders have a conftest.py)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tpipe_home(home: Path):
    """Point TPIPE_HOME at `home` (its sqlite MLflow store included) for the duration, then restore."""
    saved = {k: os.environ.get(k) for k in ("TPIPE_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["TPIPE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def fresh_ray(**init_kwargs):
    """A Ray of this module's own: one left running by another test folder's session fixture is
    shut down first (ray.init refuses a second), and ours is shut down afterwards."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", **init_kwargs)  # never join another cluster on this machine
    try:
        yield ray
    finally:
        ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3(log_dir: Path):
    """A moto S3 server on 127.0.0.1 with the bucket `tpipe-artifacts` and test credentials in the
    environment; yields a function making URIs under that bucket (the endpoint in the query)."""
    import subprocess
    import sys
    import time

    import requests

    port = free_port()
    log = log_dir / "moto-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="tpipe-test", AWS_SECRET_ACCESS_KEY="tpipe-test", AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.time() + 120
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        requests.put(f"http://127.0.0.1:{port}/tpipe-artifacts", timeout=10).raise_for_status()  # the bucket

        def uri(prefix: str) -> str:
            return f"s3://tpipe-artifacts/{prefix}?endpoint_override=127.0.0.1:{port}&scheme=http"

        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
