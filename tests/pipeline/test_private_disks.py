"""Data tasks and training workers on nodes with private disks: no driver-local path reaches them (issue 18).

`ray.cluster_utils.Cluster` puts every node on this machine, so a task that opens a path of the
driver's TPIPE_HOME would succeed here and fail on a real second machine. Here two nodes are made
private: each is a `ray start` in its own mount namespace where the driver's test folder (its
TPIPE_HOME included) is an empty tmpfs, with its own scratch folder (TMPDIR, TPIPE_NODE_CACHE), and
each loads private_disk_audit/sitecustomize.py, whose audit hook refuses and records any Python
open() under the driver's folder. The shared store is moto S3 on 127.0.0.1; MLflow's sqlite file
lies outside the driver's folder, standing in for a tracking server.

Each private node offers one CPU and the custom resources `data` and `trainer`: every Ray task of
the data steps asks for `data` (ray.task_resource) and each training worker for `trainer`
(train.node_resource), so prepare's, the tokenizer's and encode's tasks and both workers run off
the driver's node and pass their files through the bucket (data/exchange.py, pipeline/train.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from pipeline_testlib import free_port, moto_s3, tpipe_home

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.heavy]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AUDIT = Path(__file__).resolve().parent / "private_disk_audit"
WEIGHTS = "package/model.safetensors"


def _can_mask() -> bool:
    """Whether this machine lets us hide a folder in a private mount namespace (root, or CAP_SYS_ADMIN)."""
    import subprocess

    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _launch(cmd: list[str], env: dict[str, str], scratch: Path):
    import subprocess

    with open(scratch / "ray-start.log", "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def private_nodes(tmp_path_factory):
    """(driver's folder, artifact root URI, node ids and scratch folders of the two private nodes).

    Each private node is a `ray start` of its own in a private mount namespace where the driver's
    folder is an empty tmpfs: a path of the driver's disk opens nothing there, through Python or
    through pyarrow's C++ (which no audit hook sees). Without the right to mount (not root), the
    audit hook alone stands guard.
    """
    import shlex
    import signal
    import time

    import ray
    from ray.cluster_utils import Cluster

    driver = tmp_path_factory.mktemp("driver")
    mask = _can_mask()
    with moto_s3(tmp_path_factory.mktemp("moto")) as s3, tpipe_home(driver / "home"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"
        if ray.is_initialized():  # another folder's session-wide Ray
            ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"head": 2},
                                                                "dashboard_host": "127.0.0.1", "dashboard_port": free_port()})
        procs, scratches, launches, started = [], [], [], []
        try:
            ray.init(address=cluster.address)
            for i in range(2):
                scratch = tmp_path_factory.mktemp(f"node{i}")
                env = {**os.environ, "PYTHONPATH": f"{AUDIT}{os.pathsep}{REPO}", "TMPDIR": str(scratch),
                       "TPIPE_NODE_CACHE": str(scratch / "cache"), "TPIPE_AUDIT_FORBIDDEN": str(driver),
                       "TPIPE_AUDIT_LOG": str(scratch / "audit.log"), "RAY_USAGE_STATS_ENABLED": "0"}
                start = (f"{shlex.quote(str(BIN / 'ray'))} start --address {cluster.address} --num-cpus 1 "
                         f"--resources '{{\"trainer\": 1, \"data\": 1}}' --block")
                cmd = (["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs tmpfs {shlex.quote(str(driver))} && exec {start}"] if mask
                       else ["sh", "-c", f"exec {start}"])
                launches.append((cmd, env, scratch))
                procs.append(_launch(cmd, env, scratch))
                started.append(procs[-1])
                scratches.append(scratch)
            deadline = time.time() + 400
            while len(trainers := [n for n in ray.nodes() if n["Alive"] and "trainer" in n["Resources"]]) < 2:
                assert time.time() < deadline, [(s / "ray-start.log").read_text()[-2000:] for s in scratches]
                for i, proc in enumerate(procs):
                    if proc.poll() is not None:  # `ray start` gives a raylet 30 s to register: a loaded machine misses it
                        procs[i] = _launch(*launches[i])
                        started.append(procs[i])
                time.sleep(1)
            yield driver, s3("private-disks"), [n["NodeID"] for n in trainers], scratches
        finally:
            ray.shutdown()
            for proc in started:  # only the `ray start` groups we started (a failed one may leave a raylet); never `ray stop`
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                        time.sleep(3)
                    except ProcessLookupError:
                        break
                proc.wait(timeout=30)
            cluster.shutdown()
            os.environ.pop("MLFLOW_TRACKING_URI", None)


# The functions of the data steps' Ray tasks with a remote artifact root (data/exchange.py).
DATA_TASKS = {"ingest_unit_published", "write_shard_published", "count_chunk", "sum_counts", "encode_shard_published"}


def test_private_nodes_never_open_a_driver_path_and_train_the_same_weights(private_nodes):
    import ray
    from ray.util.state import list_actors, list_tasks

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    driver, root, trainer_nodes, scratches = private_nodes
    overrides = [f"artifact_root={root}", "train.max_steps=8", "train.val_every_steps=4", "train.max_failures=0"]
    private = load_config("smoke", overrides + ["ray.task_resource=data", "train.node_resource=trainer",
                                                "train.cpus_per_worker=0"])
    out = run_pipeline(private, quiet=True)
    assert list(out["results"]) == ["prepare", "tokenizer", "encode", "train", "register", "evaluate"]

    tasks = [t for t in list_tasks(filters=[("type", "=", "NORMAL_TASK")], limit=10_000, detail=True)
             if t["func_or_class_name"] in DATA_TASKS]
    assert {t["func_or_class_name"] for t in tasks} == DATA_TASKS, tasks
    assert {t["node_id"] for t in tasks} <= set(trainer_nodes), [(t["func_or_class_name"], t["node_id"]) for t in tasks]

    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=100)
    assert sorted(a["node_id"] for a in workers) == sorted(trainer_nodes), workers  # one on each
    for scratch in scratches:
        assert not (scratch / "audit.log").exists(), (scratch / "audit.log").read_text()
        cached = [p.name for p in (scratch / "cache").rglob("*.parquet")]
        assert cached, f"no raw or token shard reached the node cache {scratch / 'cache'}"

    # The same config trained on the driver's node alone (the data steps are reused from the bucket).
    single = load_config("smoke", overrides + ["train.node_resource=head", "train.cpus_per_worker=1"])
    alone = run_pipeline(single, until_step="train", quiet=True)
    assert [r.cached for r in alone["results"].values()] == [True, True, True, False]
    seen = {a["actor_id"] for a in workers}
    later = [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=100) if a["actor_id"] not in seen]
    assert len(later) == 2 and {a["node_id"] for a in later} == {ray.get_runtime_context().get_node_id()}, later
    ours = (out["results"]["train"].out_dir / WEIGHTS).read_bytes()
    assert ours == (alone["results"]["train"].out_dir / WEIGHTS).read_bytes()
