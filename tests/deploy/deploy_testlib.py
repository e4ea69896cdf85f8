"""Helpers shared by the tests of deploy/: loading manifests, walking them, reading Dockerfiles.

Example:
    >>> [d["kind"] for d in load_docs(DEPLOY / "mlflow/k8s/postgres.yaml")]
    ['ConfigMap', 'Service', 'StatefulSet']
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOY = REPO / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
# Where schemas/vendor_kuberay.py cut an embedded pod template out of KubeRay's CRD schemas.
POD_TEMPLATE_MARKER = "x-tpipe-pod-template"

# Every Kubernetes manifest we ship; the tests also assert this list covers deploy/**.yaml.
K8S_MANIFESTS = sorted(
    [DEPLOY / "kuberay" / name for name in ("raycluster.yaml", "rayjob.yaml", "networkpolicy.yaml", "storage.yaml")]
    + list((DEPLOY / "mlflow/k8s").glob("*.yaml"))
)
COMPOSE = DEPLOY / "mlflow/docker-compose.yaml"
RAY_LAUNCHER = DEPLOY / "ray-cluster-aws.yaml"

# Env var names that carry credentials: such a value must come from a Secret or a required variable.
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


def load_docs(path: Path) -> list[dict[str, Any]]:
    """All YAML documents of a file, empty ones dropped."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (json-path, value) pair below `node`, the node itself first.

    Example: walk({"a": [1]}) -> ("", {...}), (".a", [1]), (".a[0]", 1)
    """
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(json-path, PodSpec) for every pod a manifest makes: Deployments, StatefulSets, Ray groups."""
    for path, node in walk(doc):
        if isinstance(node, dict) and isinstance(node.get("containers"), list):
            yield path, node


def containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(json-path, container, its PodSpec) for every container and init container of a manifest."""
    for path, spec in pod_specs(doc):
        for key in ("initContainers", "containers"):
            for i, c in enumerate(spec.get(key, [])):
                yield f"{path}.{key}[{i}]", c, spec


def ray_groups(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, group spec) for the head and every worker group of a RayCluster or a RayJob."""
    spec = doc["spec"]
    cluster = spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec
    yield "head", cluster["headGroupSpec"]
    for g in cluster.get("workerGroupSpecs", []):
        yield g["groupName"], g


def quantity(q: str | int | float) -> float:
    """A Kubernetes quantity as a number: '8Gi' -> 8 * 2**30, '500m' -> 0.5, '2' -> 2."""
    if isinstance(q, (int, float)):
        return float(q)
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", q)
    assert m, f"not a quantity: {q!r}"
    number, unit = float(m.group(1)), m.group(2)
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    decimal = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    return number * (binary.get(unit) or decimal[unit])


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped.

    Heredocs are not used in our Dockerfiles; `# syntax=` and comments are skipped.
    """
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment line inside a continued RUN
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_args(path: Path) -> dict[str, str]:
    """Default values of every `ARG NAME=value` (global and per stage)."""
    args = {}
    for instr, rest in dockerfile_instructions(path):
        if instr == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip().strip('"')
    return args


def exec_form(rest: str) -> list[str]:
    """ENTRYPOINT/CMD arguments: the JSON exec form, or a shell string split."""
    rest = rest.strip()
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def constraints() -> dict[str, str]:
    """deploy/docker/constraints.txt as {normalized name: version}."""
    pins = {}
    for line in (DEPLOY / "docker/constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: '{line}' is not pinned with =="
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def read_ini(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.read(path)
    return cp


# ---- processes of the rehearsal: servers and Ray heads on 127.0.0.1 ------------------------
# Variables of the developer's shell that would change what the servers and clients do.
SCRUBBED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_AUTH_CONFIG_PATH", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    # As with an activated virtualenv: a Ray job's entrypoint runs `python` from the PATH.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **extra)
    return env


def stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group we started (start_new_session=True), then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace_s
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def start_ray_head(env: dict[str, str], num_cpus: int = 2) -> Iterator[tuple[str, Path]]:
    """A `ray start --head` on 127.0.0.1 with `env`; yields (job API address, its temp dir).

    Stopped by its process group on exit: `ray stop` would stop every Ray on this machine.
    """
    # A short temp dir: Ray's unix socket paths must stay under 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    dash_port = free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(free_port()),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
           "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
           "--num-cpus", str(num_cpus), "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
        yield f"http://127.0.0.1:{dash_port}", temp_dir
    finally:
        stop_group(proc)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)
