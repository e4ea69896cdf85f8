"""Two simulated nodes (ray.cluster_utils.Cluster): DDP workers land on both, checkpoints in shared storage."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_testlib import tpipe_home

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    with tpipe_home(tmp_path_factory.mktemp("home")) as home:
        if ray.is_initialized():  # another folder's session-wide Ray
            ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "dashboard_host": "127.0.0.1"})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        yield home
        ray.shutdown()
        cluster.shutdown()


def test_workers_spread_over_nodes_and_checkpoints_reach_shared_storage(two_nodes):
    import ray
    from ray.util.state import list_actors

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    # 1 CPU per node and 1 per worker: the two DDP workers cannot share a node.
    cfg = load_config("smoke", ["train.max_steps=16", "train.val_every_steps=8", "train.storage_path=" + str(two_nodes / "shared")])
    out = run_pipeline(cfg, until_step="train", quiet=True)
    assert out["results"]["train"].summary["metrics"]["step"] == 16
    workers = [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=100)]
    nodes = {a["node_id"] for a in workers}
    assert len(nodes) == 2, workers
    run_dirs = list(Path(two_nodes / "shared").glob("train-*"))
    assert len(run_dirs) == 1
    checkpoints = sorted(run_dirs[0].glob("checkpoint_*"))
    assert checkpoints, "no checkpoint reached the shared storage path"
    assert any((c / "checkpoint.ckpt").exists() for c in checkpoints)  # Lightning state, from validation
    assert any((c / "model.safetensors").exists() for c in checkpoints)  # the final weights
