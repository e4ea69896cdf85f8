"""Training workers on nodes with private disks: no driver-local path reaches them (issue 18).

`ray.cluster_utils.Cluster` puts every node on this machine, so a worker that opens a path of the
driver's TPIPE_HOME would succeed here and fail on a real second machine. Here the two training
nodes are made private: each has its own scratch folder (TMPDIR, TPIPE_NODE_CACHE) and loads
private_disk_audit/sitecustomize.py, whose audit hook refuses (and records) any open() under the
driver's test folder, which holds its TPIPE_HOME. The shared store is moto S3 on 127.0.0.1;
MLflow's sqlite file lies outside the refused folder, standing in for a tracking server.

The head, where the driver runs, keeps the CPUs, so the data steps' tasks run there: they still
exchange files through the driver's step folders (see docs/cluster.md). The training nodes offer
only the custom resource `trainer`, which the workers ask for (train.node_resource).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pipeline_testlib import free_port, moto_s3, tpipe_home

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
AUDIT = Path(__file__).resolve().parent / "private_disk_audit"
WEIGHTS = "package/model.safetensors"


@pytest.fixture(scope="module")
def private_nodes(tmp_path_factory):
    """(driver's folder, artifact root URI, [(node id, scratch folder)] of the two training nodes)."""
    import ray
    from ray.cluster_utils import Cluster

    driver = tmp_path_factory.mktemp("driver")
    with moto_s3(tmp_path_factory.mktemp("moto")) as s3, tpipe_home(driver / "home"):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"
        if ray.is_initialized():  # another folder's session-wide Ray
            ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "dashboard_host": "127.0.0.1",
                                                                "dashboard_port": free_port()})
        nodes = []
        try:
            for i in range(2):
                scratch = tmp_path_factory.mktemp(f"node{i}")
                env = {"PYTHONPATH": f"{AUDIT}{os.pathsep}{REPO}", "TMPDIR": str(scratch),
                       "TPIPE_NODE_CACHE": str(scratch / "cache"), "TPIPE_AUDIT_FORBIDDEN": str(driver),
                       "TPIPE_AUDIT_LOG": str(scratch / "audit.log")}
                node = cluster.add_node(num_cpus=0, resources={"trainer": 1}, env_vars=env)
                nodes.append((node.node_id, scratch))
            ray.init(address=cluster.address)
            cluster.wait_for_nodes()
            yield driver, s3("private-disks"), nodes
        finally:
            ray.shutdown()
            cluster.shutdown()
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_training_nodes_never_open_a_driver_path_and_train_the_same_weights(private_nodes):
    import ray
    from ray.util.state import list_actors

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    driver, root, nodes = private_nodes
    overrides = [f"artifact_root={root}", "train.max_steps=8", "train.val_every_steps=4", "train.max_failures=0"]
    private = load_config("smoke", overrides + ["train.node_resource=trainer", "train.cpus_per_worker=0"])
    out = run_pipeline(private, quiet=True)
    assert list(out["results"]) == ["prepare", "tokenizer", "encode", "train", "register", "evaluate"]

    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=100)
    assert {a["node_id"] for a in workers} == {node_id for node_id, _ in nodes}, workers  # one on each
    for _, scratch in nodes:
        assert not (scratch / "audit.log").exists(), (scratch / "audit.log").read_text()
        cached = [p.name for p in (scratch / "cache").rglob("*.parquet")]
        assert cached, f"no token shard reached the node cache {scratch / 'cache'}"

    # The same config trained on the driver's node alone (the data steps are reused from the bucket).
    single = load_config("smoke", overrides + ["train.cpus_per_worker=1"])
    alone = run_pipeline(single, until_step="train", quiet=True)
    assert [r.cached for r in alone["results"].values()] == [True, True, True, False]
    seen = {a["actor_id"] for a in workers}
    later = [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=100) if a["actor_id"] not in seen]
    assert len(later) == 2 and {a["node_id"] for a in later} == {ray.get_runtime_context().get_node_id()}, later
    ours = (out["results"]["train"].out_dir / WEIGHTS).read_bytes()
    assert ours == (alone["results"]["train"].out_dir / WEIGHTS).read_bytes()
