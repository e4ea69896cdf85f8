"""deploy/ray-cluster-aws.yaml: valid for Ray's cluster launcher, GPU workers, nothing open."""

from __future__ import annotations

import copy

import pytest
import yaml

from deploy_testlib import RAY_LAUNCHER, constraints


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(RAY_LAUNCHER.read_text())


def test_launcher_config_passes_rays_own_validation(launcher):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))  # what `ray up` runs before touching AWS


def test_gpu_workers_run_the_cuda_image_with_gpus(launcher):
    docker = launcher["docker"]
    assert docker["image"].endswith("-cpu") and docker["worker_image"].endswith("-gpu")
    assert "--gpus all" in docker["worker_run_options"]
    for opts in (docker["head_run_options"], docker["worker_run_options"]):
        assert any(o.startswith("--shm-size=") for o in opts), "Docker's 64 MB /dev/shm starves the object store"
    assert '--entrypoint ""' in docker["run_options"], "the image's entry point is tpipe; the launcher runs bash"
    worker = launcher["available_node_types"]["ray.worker.gpu"]
    assert worker["node_config"]["InstanceType"].startswith(("g", "p")), "a GPU instance type"
    assert worker["max_workers"] >= 1


def test_nothing_listens_publicly(launcher):
    head_cmd = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd, "dashboard and job API through `ray dashboard` (SSH)"
    assert "--env RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]
    assert "/home/ray/.ray/auth_token" in launcher["file_mounts"]
    for perm in launcher["provider"]["security_group"]["IpPermissions"]:
        for r in perm.get("IpRanges", []):
            assert r["CidrIp"] != "0.0.0.0/0", "SSH only from your own range"


def test_mlflow_login_reaches_every_raylet_not_the_jobs(launcher):
    """`ray start` reads the login from a synced file, so workers inherit it and no job carries it."""
    assert "/home/ray/.config/tpipe/mlflow.env" in launcher["file_mounts"]
    for cmds in (launcher["head_start_ray_commands"], launcher["worker_start_ray_commands"]):
        start = next(c for c in cmds if "ray start" in c)
        assert start.index(". /home/ray/.config/tpipe/mlflow.env") < start.index("ray start")
    assert "--env TPIPE_HOME=/mnt/tpipe" in launcher["docker"]["run_options"]


def test_images_are_pinned_to_the_project_version(launcher):
    for image in (launcher["docker"]["image"], launcher["docker"]["worker_image"]):
        assert image.rpartition(":")[2].split("-")[0].count(".") == 2, image
    assert "ray" in constraints()
