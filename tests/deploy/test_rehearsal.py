"""The local rehearsal of docs/cluster.md, on 127.0.0.1 only.

First half: `mlflow server --app-name basic-auth` configured like deploy/mlflow (its basic_auth.ini,
credentials from the environment); requests without valid credentials are refused; a client that
has only MLFLOW_TRACKING_USERNAME/PASSWORD tracks a run and registers a model; no credential shows
up in a param, tag, artifact or log.

Second half: a local `ray start --head` with token authentication (as the KubeRay manifests set
it) whose processes hold the pipeline's MLflow login in their environment (as the Ray pods do,
from the Secret tpipe-mlflow-client); the smoke pipeline sent with `tpipe submit --follow` from a
shell that has only the tracking URI and the Ray token; its model registered on that server, and
again no credential in a param, tag, artifact, job record or log, Ray's own logs included.
A last test checks that credentials in the submitting shell do not travel in a job's runtime_env,
which Ray logs.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deploy_testlib import BIN, DEPLOY, REPO, clean_env, free_port, read_ini, start_ray_head, stop_group

pytestmark = pytest.mark.e2e

ADMIN = "admin"
CLIENT_USER = "tpipe-ci"
SEARCH = "/api/2.0/mlflow/experiments/search"


def listening_addresses(port: int) -> set[str]:
    """Local IPs with a TCP socket in LISTEN on `port`, read from /proc/net/tcp and tcp6."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            hex_ip, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(hex_ip)
            # /proc stores each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, words))
    return found


def files_containing(root: Path, needles: list[str], max_bytes: int = 20_000_000) -> list[str]:
    """Files under `root` whose bytes contain any needle (a grep for leaked credentials)."""
    hits = []
    encoded = [n.encode() for n in needles]
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= max_bytes:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in encoded):
                hits.append(str(path.relative_to(root)))
    return hits


@dataclass
class MLflowServer:
    url: str
    port: int
    admin_password: str
    client_password: str
    log: Path
    proc: subprocess.Popen

    def secrets(self) -> list[str]:
        return [self.admin_password, self.client_password]

    def admin(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, self.url + path, auth=(ADMIN, self.admin_password), timeout=60, **kw)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> MLflowServer:
    root = tmp_path_factory.mktemp("mlflow-server")
    # deploy/mlflow/basic_auth.ini as shipped, except that the user store is a local sqlite file.
    ini = read_ini(DEPLOY / "mlflow/basic_auth.ini")
    ini["mlflow"]["database_uri"] = f"sqlite:///{root}/auth.db"
    with open(root / "basic_auth.ini", "w") as f:
        ini.write(f)
    admin_password = secrets.token_urlsafe(18)
    port = free_port()
    env = clean_env(
        MLFLOW_AUTH_CONFIG_PATH=str(root / "basic_auth.ini"),
        MLFLOW_AUTH_ADMIN_USERNAME=ADMIN,
        MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # as in deploy/mlflow/Dockerfile
    )
    log = root / "server.log"
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
           "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline:
                raise AssertionError(f"mlflow server not up after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        server = MLflowServer(url, port, admin_password, secrets.token_urlsafe(18), log, proc)
        # The admin makes the pipeline's own user, as docs/cluster.md does.
        r = server.admin("POST", "/api/2.0/mlflow/users/create",
                         json={"username": CLIENT_USER, "password": server.client_password})
        assert r.status_code == 200, r.text
        yield server
    finally:
        stop_group(proc)


def test_server_listens_on_loopback_only(mlflow_server):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    assert listening_addresses(mlflow_server.port) == {"127.0.0.1"}


def test_requests_without_valid_credentials_are_refused(mlflow_server):
    url = mlflow_server.url
    assert requests.get(url + "/health", timeout=30).status_code == 200  # what probes use: no login
    assert requests.post(url + SEARCH, json={"max_results": 1}, timeout=30).status_code == 401
    wrong = requests.post(url + SEARCH, json={"max_results": 1}, auth=(ADMIN, "not-the-password"), timeout=30)
    assert wrong.status_code == 401
    assert requests.get(url + "/api/2.0/mlflow-artifacts/artifacts", timeout=30).status_code == 401
    assert mlflow_server.admin("POST", SEARCH, json={"max_results": 1}).status_code == 200


CLIENT_SCRIPT = textwrap.dedent(
    """
    # Only MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD come in.
    import json, os, sys, tempfile
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment("deploy-rehearsal")
    with mlflow.start_run(run_name="client") as run:
        mlflow.log_params({"train.max_steps": 30, "model.d_model": 32})
        mlflow.log_metric("val/loss", 1.5, step=1)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "weights.txt"), "w") as f:
                f.write("not really weights")
            mlflow.log_artifacts(d, artifact_path="model")
    client = MlflowClient()
    client.create_registered_model("deploy-rehearsal-client")
    mv = client.create_model_version("deploy-rehearsal-client", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("deploy-rehearsal-client", "champion", mv.version)
    got = client.get_model_version_by_alias("deploy-rehearsal-client", "champion")
    path = mlflow.artifacts.download_artifacts("models:/deploy-rehearsal-client@champion")
    text = open(os.path.join(path, "weights.txt")).read()
    print(json.dumps({"run_id": run.info.run_id, "version": got.version, "artifact": text}))
    """
)


def test_client_with_env_credentials_tracks_and_registers(mlflow_server, tmp_path):
    env = clean_env(MLFLOW_TRACKING_URI=mlflow_server.url, MLFLOW_TRACKING_USERNAME=CLIENT_USER,
                    MLFLOW_TRACKING_PASSWORD=mlflow_server.client_password)
    proc = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == "1" and out["artifact"] == "not really weights"

    # The same registry, read by the admin over HTTP: the version is there, owned by the client.
    r = mlflow_server.admin("GET", "/api/2.0/mlflow/registered-models/get", params={"name": "deploy-rehearsal-client"})
    assert r.status_code == 200 and r.json()["registered_model"]["aliases"][0]["alias"] == "champion"
    # Without credentials the registry is closed too.
    r = requests.get(mlflow_server.url + "/api/2.0/mlflow/registered-models/get",
                     params={"name": "deploy-rehearsal-client"}, timeout=30)
    assert r.status_code == 401

    run = mlflow_server.admin("GET", "/api/2.0/mlflow/runs/get", params={"run_id": out["run_id"]}).json()["run"]
    blob = json.dumps(run) + proc.stdout + proc.stderr
    for secret in mlflow_server.secrets():
        assert secret not in blob, "a credential leaked into the run or the client's output"
    assert files_containing(tmp_path, mlflow_server.secrets()) == []
    artifacts = Path(mlflow_server.log).parent / "artifacts"
    assert files_containing(artifacts, mlflow_server.secrets()) == []
    assert not any(s in mlflow_server.log.read_text(errors="replace") for s in mlflow_server.secrets())


def test_signed_in_users_read_but_write_only_when_granted(mlflow_server):
    """default_permission = READ (deploy/mlflow/basic_auth.ini); the grant docs/cluster.md shows."""
    password = secrets.token_urlsafe(18)
    r = mlflow_server.admin("POST", "/api/2.0/mlflow/users/create", json={"username": "alice", "password": password})
    assert r.status_code == 200, r.text
    name = "deploy-rehearsal-client"  # registered by the client test above

    def as_alice(method, path, **kw):
        return requests.request(method, mlflow_server.url + path, auth=("alice", password), timeout=60, **kw)

    assert as_alice("GET", "/api/2.0/mlflow/registered-models/get", params={"name": name}).status_code == 200
    alias = {"name": name, "alias": "reviewed", "version": "1"}
    assert as_alice("POST", "/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 403
    grant = {"username": "alice", "resource_type": "registered_model", "resource_id": name, "permission": "EDIT"}
    r = mlflow_server.admin("POST", "/api/3.0/mlflow/users/permissions/grant", json=grant)
    assert r.status_code == 200, r.text
    assert as_alice("POST", "/api/2.0/mlflow/registered-models/alias", json=alias).status_code == 200


def server_records(server: MLflowServer) -> str:
    """Every experiment, run (params, tags, metrics) and model version on the server, as one JSON text."""
    experiments = server.admin("POST", SEARCH, json={"max_results": 100}).json()["experiments"]
    runs = server.admin("POST", "/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [e["experiment_id"] for e in experiments], "max_results": 1000}).json().get("runs", [])
    versions = server.admin("GET", "/api/2.0/mlflow/model-versions/search", params={"max_results": 1000}).json()
    models = server.admin("GET", "/api/2.0/mlflow/registered-models/search", params={"max_results": 1000}).json()
    return json.dumps([experiments, runs, versions, models])


def with_login(url: str, password: str) -> str:
    """http://127.0.0.1:5000 -> http://tpipe-ci:PASSWORD@127.0.0.1:5000"""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{CLIENT_USER}:{password}@{rest}"


@pytest.mark.slow
def test_local_run_with_a_password_in_the_uri_leaks_it_nowhere(mlflow_server, tmp_path):
    """`tpipe run` on a local Ray, its login planted in the tracking URI (the config key and
    MLFLOW_TRACKING_URI) and in MLFLOW_TRACKING_PASSWORD: it tracks on the server (the Ray Train
    worker too), and the password is in no printed line, no file of the home, no param, tag or
    artifact, no log of Ray's session."""
    password = mlflow_server.client_password
    uri = with_login(mlflow_server.url, password)
    home, ray_tmp = tmp_path / "home", Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))  # short: Ray's socket paths
    env = clean_env(TPIPE_HOME=str(home), RAY_TMPDIR=str(ray_tmp), MLFLOW_TRACKING_URI=uri,
                    MLFLOW_TRACKING_USERNAME=CLIENT_USER, MLFLOW_TRACKING_PASSWORD=password)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "smoke", f"mlflow.tracking_uri={uri}",
             "mlflow.experiment=leak-check", "train.max_steps=10", "train.num_workers=1", "--until", "train"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        assert f"mlflow: {mlflow_server.url}" in proc.stdout
        records = server_records(mlflow_server)
        train = [r for r in json.loads(records)[1] if {"key": "tpipe.step", "value": "train"} in r["data"].get("tags", [])
                 and {"key": "train.max_steps", "value": "10"} in r["data"].get("params", [])]
        assert train and any(m["key"] == "train/loss" for m in train[0]["data"].get("metrics", []))  # the worker logged
        assert password not in proc.stdout + proc.stderr
        assert password not in records
        assert files_containing(home, [password]) == []  # summary.json, config.yaml, state, Ray Train's storage
        assert files_containing(Path(mlflow_server.log).parent / "artifacts", [password]) == []  # config.yaml artifact
        assert list(ray_tmp.glob("**/session_*/logs/*")), "no Ray session logs to search"  # RAY_TMPDIR/ray/session_*
        assert files_containing(ray_tmp, [password]) == []  # the workers' and Ray's own logs
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


# --------------------------------------------------------------------------------------------
# Second half: `tpipe submit` to a local Ray head


def _tpipe_submit_available() -> bool:
    try:
        return subprocess.run([str(BIN / "tpipe"), "submit", "--help"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class RayHead:
    address: str
    token: str
    temp_dir: Path

    def logs(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"


@pytest.fixture(scope="module")
def ray_head(mlflow_server) -> RayHead:
    # The cluster's side holds the MLflow login, as the Ray pods do; every Ray worker, the job's
    # driver included, inherits it from the raylet.
    token = secrets.token_hex(32)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, MLFLOW_TRACKING_USERNAME=CLIENT_USER,
                    MLFLOW_TRACKING_PASSWORD=mlflow_server.client_password)
    with start_ray_head(env) as (address, temp_dir):
        yield RayHead(address, token, temp_dir)


def submit_env(mlflow_server, ray_head, home: Path, **extra: str) -> dict[str, str]:
    """The submitting shell of docs/cluster.md: the tracking URI the job uses and the Ray token."""
    return clean_env(MLFLOW_TRACKING_URI=mlflow_server.url, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_head.token,
                     TPIPE_HOME=str(home), **extra)


@pytest.mark.slow
@pytest.mark.skipif(not _tpipe_submit_available(), reason="tpipe submit not available yet")
def test_submitted_pipeline_registers_its_model_without_leaking_credentials(mlflow_server, ray_head, tmp_path):
    # The job API is closed without the cluster's token.
    assert requests.get(ray_head.address + "/api/jobs/", timeout=30).status_code == 401
    model = "deploy-rehearsal-pipeline"
    # The login is planted where users put it: in the tracking URI (the shell's and a config
    # override) and in the shell's environment. None of it may travel: the job uses the cluster's.
    planted = with_login(mlflow_server.url, mlflow_server.client_password)
    cmd = [str(BIN / "tpipe"), "submit", "smoke", f"registry.model_name={model}", "train.max_steps=10",
           "train.num_workers=1", f"mlflow.tracking_uri={planted}", "--address", ray_head.address, "--follow"]
    env = submit_env(mlflow_server, ray_head, tmp_path / "home", MLFLOW_TRACKING_USERNAME=CLIENT_USER,
                     MLFLOW_TRACKING_PASSWORD=mlflow_server.client_password)
    env["MLFLOW_TRACKING_URI"] = planted
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    job_id = proc.stdout.strip().splitlines()[0]
    assert f"job {job_id}: SUCCEEDED" in proc.stdout
    status = requests.get(f"{ray_head.address}/api/jobs/{job_id}", timeout=30,
                          headers={"Authorization": f"Bearer {ray_head.token}"}).json()
    assert status["status"] == "SUCCEEDED", status

    r = mlflow_server.admin("GET", "/api/2.0/mlflow/model-versions/search", params={"filter": f"name='{model}'"})
    versions = r.json().get("model_versions", [])
    assert versions, f"no version of {model} registered: {r.text}"
    # the pipeline's own evaluation of that version, found over HTTP (its nested `evaluate` run)
    evaluation = pipeline_evaluation(mlflow_server, model, versions[0]["version"])
    assert set(evaluation) >= {"test/bleu", "test/chrf", "test/ter", "test/exact_match"}
    SUBMITTED[model] = (versions[0]["version"], evaluation)

    secrets_ = mlflow_server.secrets() + [ray_head.token]
    experiments = mlflow_server.admin("POST", SEARCH, json={"max_results": 100}).json()["experiments"]
    runs = mlflow_server.admin(
        "POST", "/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [e["experiment_id"] for e in experiments], "max_results": 1000},
    ).json()["runs"]
    assert runs
    jobs = requests.get(ray_head.address + "/api/jobs/", headers={"Authorization": f"Bearer {ray_head.token}"},
                        timeout=30).json()
    for what, blob in [("a run's params or tags", json.dumps(runs) + json.dumps(versions) + server_records(mlflow_server)),
                       ("the job's log", proc.stdout + proc.stderr), ("Ray's job record", json.dumps(jobs))]:
        assert not any(s in blob for s in secrets_), f"a credential leaked into {what}"
    assert files_containing(ray_head.logs(), secrets_) == []
    assert files_containing(mlflow_server.log.parent / "artifacts", secrets_) == []
    assert files_containing(tmp_path / "home", secrets_) == []


SUBMITTED: dict[str, tuple[str, dict[str, float]]] = {}  # model -> (version, the pipeline's test scores)


def evaluation_runs(server: "MLflowServer", model: str, version: str) -> list[dict]:
    """The evaluation runs of models:/MODEL/VERSION (the pipeline's evaluate step, tpipe evaluate), over HTTP."""
    experiments = server.admin("POST", SEARCH, json={"max_results": 100}).json()["experiments"]
    runs = server.admin("POST", "/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [e["experiment_id"] for e in experiments], "max_results": 10,
        "filter": f"tags.`tpipe.step` = 'evaluate' and tags.`tpipe.model_name` = '{model}' "
                  f"and tags.`tpipe.model_version` = '{version}'",
    }).json().get("runs", [])
    return runs


def pipeline_evaluation(server: "MLflowServer", model: str, version: str) -> dict[str, float]:
    """The metrics of the pipeline's own `evaluate` step run for models:/MODEL/VERSION."""
    runs = evaluation_runs(server, model, version)
    assert len(runs) == 1, f"expected one evaluation run of {model} v{version}, found {len(runs)}"
    return {m["key"]: m["value"] for m in runs[0]["data"].get("metrics", [])}


@pytest.mark.slow
@pytest.mark.skipif(not _tpipe_submit_available(), reason="tpipe submit not available yet")
def test_tpipe_evaluate_pulls_the_submitted_version_and_matches_its_pipeline(mlflow_server, tmp_path):
    """Runs after the submission test: from a machine with none of the job's files (a fresh
    TPIPE_HOME), `tpipe evaluate models:/NAME/VERSION --split test` pulls the model and the test
    split from the tracking server and scores exactly what the pipeline's evaluate step scored."""
    model = "deploy-rehearsal-pipeline"
    if model not in SUBMITTED:
        pytest.skip("needs the submitted pipeline of the test above")
    version, pipeline_scores = SUBMITTED[model]
    env = clean_env(MLFLOW_TRACKING_URI=mlflow_server.url, MLFLOW_TRACKING_USERNAME=CLIENT_USER,
                    MLFLOW_TRACKING_PASSWORD=mlflow_server.client_password, TPIPE_HOME=str(tmp_path / "elsewhere"))
    proc = subprocess.run([str(BIN / "tpipe"), "evaluate", f"models:/{model}/{version}", "--split", "test", "--json"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "sacreBLEU nrefs:1" in proc.stdout
    (ours,) = json.loads(proc.stdout.strip().splitlines()[-1])
    for metric in ("bleu", "chrf", "ter", "exact_match"):
        assert ours[metric] == pytest.approx(pipeline_scores[f"test/{metric}"], abs=1e-9), metric
    assert not (tmp_path / "elsewhere" / "artifacts" / "prepare").exists()  # no local copy of the data was made
    # ... and it logged an evaluation run of its own for that version, on the server
    assert len(evaluation_runs(mlflow_server, model, version)) == 2


FORWARD_SCRIPT = textwrap.dedent(
    """
    import sys
    from pipeline.submit import submit, wait
    job = submit(sys.argv[1], ["smoke"], run_args=["--until", "prepare"])
    print(wait(sys.argv[1], job, timeout_s=600))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not _tpipe_submit_available(), reason="tpipe submit not available yet")
def test_credentials_held_by_the_submitting_shell_stay_out_of_rays_logs(mlflow_server, ray_head, tmp_path):
    """Runs after the test above (same Ray session): a submitting shell that also holds the login.

    Ray's runtime_env agent logs a job's env_vars at INFO, so tpipe submit must not send them
    (pipeline/submit.py SECRET_ENV); the job uses the cluster's own login and still succeeds.
    """
    env = submit_env(mlflow_server, ray_head, tmp_path / "home", MLFLOW_TRACKING_USERNAME=CLIENT_USER,
                     MLFLOW_TRACKING_PASSWORD=mlflow_server.client_password)
    proc = subprocess.run([sys.executable, "-c", FORWARD_SCRIPT, ray_head.address], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=700)
    if proc.returncode != 0 or proc.stdout.split()[-1:] != ["SUCCEEDED"]:  # not the expected failure
        raise RuntimeError((proc.stdout + proc.stderr)[-3000:])
    assert files_containing(ray_head.logs(), [mlflow_server.client_password]) == []
