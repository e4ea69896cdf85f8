"""`tpipe submit` and `tpipe jobs`: the pipeline as a Ray job on a cluster (job submission SDK).

The job's runtime_env carries this repository as its working directory and the non-secret
environment the driver needs (the MLflow tracking URI, network settings). Credentials never travel
with the job: Ray's runtime_env agent logs a job's env_vars, so the cluster holds the MLflow login
itself (a Kubernetes Secret or an env file read by `ray start`; see docs/cluster.md).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from urllib.parse import urlparse

from data.errors import UserError
from data.io import redact_text, redact_uri
from pipeline.tracking import is_local_store

REPO_ROOT = Path(__file__).resolve().parent.parent
# Never uploaded: environments, run stores and data (Ray caps a working_dir's size).
EXCLUDES = [".venv", ".git", ".tpipe", "mlruns", "mlartifacts", "mlflow.db", "*.parquet", "__pycache__",
            ".pytest_cache", ".hypothesis", "*.egg-info", ".whl", ".gl"]
# Forwarded to the job when set here: settings only, no secrets.
FORWARDED_ENV = ("AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
# Never forwarded (they would land in Ray's logs); the cluster must hold its own.
SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(UserError, RuntimeError):
    """The cluster or the job cannot be reached or refused the submission."""


def _is_loopback(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def tracking_uri_for_cluster(address: str, configured: str | None) -> str:
    """The tracking URI the job will use; a local sqlite/file store is refused for a remote cluster."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        from pipeline.home import Home

        uri = Home.resolve().tracking_uri()
    if is_local_store(uri) and not _is_loopback(address):
        raise SubmitError(
            f"MLflow store {uri} is a file on this machine, which the cluster at {address} cannot reach; "
            "use a tracking server: set MLFLOW_TRACKING_URI=http://HOST:5000 (see docs/cluster.md)"
        )
    return uri


def ray_token() -> tuple[str | None, str]:
    """The Ray cluster token as Ray's own clients find it, and where it came from.

    Ray's loader is asked directly (ignoring RAY_AUTH_MODE, which only decides whether Ray's client
    sends it unasked), so the order is Ray's: RAY_AUTH_TOKEN, then the file at RAY_AUTH_TOKEN_PATH
    (an error when set but unreadable), then ~/.ray/auth_token.
    """
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    source = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN")
              else f"RAY_AUTH_TOKEN_PATH={path}" if path else str(Path.home() / ".ray" / "auth_token"))
    try:
        token = AuthenticationTokenLoader.instance().get_raw_token(ignore_auth_mode=True)
    except AuthenticationError:
        raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read or is empty; point it at the file "
                          "holding the cluster's token") from None
    return token or None, source


def _check_reachable(address: str) -> None:
    """Fail in seconds, naming the address, when nothing listens there (before Ray's clients, which
    retry for half a minute and log from C++ for an address they take for a GCS)."""
    import socket

    url = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    except ValueError:
        raise SubmitError(f"{address} is not a cluster address; the job API is http://HEAD:8265") from None
    if not url.hostname or port is None:
        return  # "auto", ray://...: left to Ray
    try:
        socket.create_connection((url.hostname, port), timeout=10).close()
    except OSError as e:
        raise SubmitError(f"cannot reach a Ray job API at {address} ({e.strerror or e}): is the head running "
                          "and its port (8265 by default) forwarded?") from None


def client(address: str):
    """A job-API client for the cluster at `address`.

    A cluster with token authentication answers 401 to a request without the token; only then is
    the token looked up (ray_token) and sent, so a token is never handed to a cluster that did not
    ask for one (Ray's own client sends it unasked under RAY_AUTH_MODE=token). Every failure to
    connect is one SubmitError naming the address.
    """
    import logging

    from ray.exceptions import AuthenticationError, RpcError
    from ray.job_submission import JobSubmissionClient

    # Ray warns on its own when RAY_AUTH_MODE=token and no token is found; the SubmitError below says it.
    logging.getLogger("ray._private.authentication.http_token_authentication").setLevel(logging.ERROR)
    _check_reachable(address)
    source = None
    try:
        try:
            return JobSubmissionClient(address)
        except AuthenticationError as e:
            token, source = ray_token()
            if token is None:
                raise SubmitError(
                    f"the Ray cluster at {address} requires a token and none was found: set RAY_AUTH_TOKEN "
                    "(or RAY_AUTH_TOKEN_PATH to a file holding it; default ~/.ray/auth_token); "
                    "`ray get-auth-token` on the head prints it"
                ) from None
            if not e.message.startswith("Authentication required"):  # 403: Ray's client sent a wrong token
                raise
            return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    except SubmitError:
        raise
    except AuthenticationError:
        raise SubmitError(f"the Ray cluster at {address} refused the token from {source}; "
                          "set RAY_AUTH_TOKEN to the cluster's token") from None
    except (ConnectionError, RpcError):  # RpcError: an address without http:// is taken for Ray's GCS
        hint = "" if "://" in address else f" (as a GCS address; the job API is http://{address.split(':')[0]}:8265)"
        raise SubmitError(f"cannot reach a Ray job API at {address}{hint}: is the head running and the port "
                          "(8265 by default) forwarded?") from None
    except RuntimeError as e:  # Ray's version check: something answered, but not a Ray job API
        raise SubmitError(f"{address} does not answer as a Ray job API: {str(e).splitlines()[0]}") from None


def submit(address: str, items: list[str], *, tracking_uri: str | None = None, run_args: list[str] = ()) -> str:
    """Submit `tpipe run ITEMS` as a Ray job; returns the submission id."""
    uri = tracking_uri_for_cluster(address, tracking_uri)
    # Nothing sent carries a login: the URI goes without its user-info, and so do the overrides
    # that become the entrypoint and the metadata (e.g. mlflow.tracking_uri=http://me:pw@host).
    sent_items = [redact_text(i) for i in items]
    if redact_uri(uri) != uri or sent_items != list(items):
        print("tpipe: not sending the login inside a URI with the job (Ray logs a job's environment and "
              "entrypoint); the cluster uses its own credentials", file=sys.stderr)
    uri, items = redact_uri(uri), sent_items
    env = {"MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    if is_local_store(uri) and "TPIPE_HOME" in os.environ:  # the cluster is this machine: share its home
        env["TPIPE_HOME"] = os.environ["TPIPE_HOME"]
    env.update({k: redact_text(os.environ[k]) for k in FORWARDED_ENV if k in os.environ})
    held_here = [k for k in SECRET_ENV if k in os.environ]
    if held_here:
        print(f"tpipe: not sending {', '.join(held_here)} with the job (Ray logs a job's environment); "
              "the cluster uses its own credentials", file=sys.stderr)
    entrypoint = " ".join(["python", "-m", "pipeline.cli", "run", *map(shlex.quote, items), *map(shlex.quote, run_args)])
    return client(address).submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO_ROOT), "excludes": EXCLUDES, "env_vars": env},
        metadata={"tool": "tpipe", "config": " ".join(items)[:200]},
    )


def follow(address: str, job_id: str, out=sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    import asyncio

    c = client(address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    return wait(address, job_id, timeout_s=60)


def wait(address: str, job_id: str, timeout_s: float = 3600) -> str:
    import time

    c = client(address)
    deadline = time.time() + timeout_s
    while True:
        status = str(c.get_job_status(job_id).value)
        if status in TERMINAL or time.time() > deadline:
            return status
        time.sleep(1.0)
