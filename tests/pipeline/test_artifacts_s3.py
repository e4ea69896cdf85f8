"""The workflow with an s3:// artifact root, against a real S3 endpoint on 127.0.0.1 (moto_server).

pyarrow's S3 client talks HTTP to it exactly as to AWS; the endpoint goes in the URI
(`?endpoint_override=...&scheme=http`), credentials in the usual AWS variables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_testlib import free_port, fresh_ray, moto_s3, tpipe_home


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with one bucket; yields a function making artifact-root URIs."""
    with moto_s3(tmp_path_factory.mktemp("moto")) as uri:
        yield uri


def _listing(uri: str) -> dict[str, bytes]:
    from pipeline.artifacts import RemoteRoot
    import pyarrow.fs as pafs

    root = RemoteRoot(uri)
    out = {}
    for info in root.fs.get_file_info(pafs.FileSelector(root.base, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            with root.fs.open_input_stream(info.path) as f:
                out[os.path.relpath(info.path, root.base)] = f.read()
    return out


def _delete_remote(uri: str, step: str, key: str) -> None:
    from pipeline.artifacts import RemoteRoot

    root = RemoteRoot(uri)
    root.fs.delete_dir(f"{root.base}/{step}/{key}")


def _toy_run(artifacts: Path, remote_uri: str, calls: list[str], tmp: Path):
    from pipeline.artifacts import RemoteRoot
    from pipeline.config import PipelineConfig
    from pipeline.workflow import PipelineRun, Step

    def make(ctx):
        calls.append("make")
        (ctx.out_dir / "sub").mkdir()
        (ctx.out_dir / "sub" / "numbers.txt").write_text("1 2 3\n")
        return {"n": 3}

    def double(ctx):
        calls.append("double")
        nums = (ctx.input_dir("make") / "sub" / "numbers.txt").read_text().split()
        (ctx.out_dir / "doubled.txt").write_text(" ".join(str(2 * int(x)) for x in nums))
        return {"sum": 2 * sum(int(x) for x in nums)}

    steps = [Step("make", make, ("seed",)), Step("double", double, ("seed",), ("make",))]
    run_dir = tmp / f"run-{len(calls)}-{time.time_ns()}"
    run_dir.mkdir(parents=True)
    return PipelineRun(PipelineConfig(), steps, artifacts, run_dir, remote=RemoteRoot(remote_uri), version="test")


def test_outputs_reach_s3_marker_last_and_another_machine_reuses_them(s3, tmp_path):
    uri = s3("toy")
    calls: list[str] = []
    first = _toy_run(tmp_path / "machine-a", uri, calls, tmp_path).run()
    assert calls == ["make", "double"]
    remote = _listing(uri)
    keys = {r.key for r in first.values()}
    assert {f"make/{first['make'].key}/sub/numbers.txt", f"make/{first['make'].key}/_COMPLETE.json",
            f"double/{first['double'].key}/doubled.txt", f"double/{first['double'].key}/_COMPLETE.json"} == set(remote)
    assert len(keys) == 2

    # Another machine: empty local folder, same root. Nothing runs; outputs come down byte for byte.
    second = _toy_run(tmp_path / "machine-b", uri, calls, tmp_path).run()
    assert calls == ["make", "double"]
    assert all(r.cached for r in second.values())
    assert (second["double"].out_dir / "doubled.txt").read_text() == "2 4 6"
    assert second["double"].summary == {"sum": 12}
    assert not list((tmp_path / "machine-b").rglob(".*download*"))  # no temporary folder left behind


def test_an_upload_cut_short_is_not_trusted(s3, tmp_path):
    """Objects without the marker (an upload killed half-way) are not an output: the step runs again,
    the stale objects are cleared, and the marker arrives last."""
    from pipeline.artifacts import RemoteRoot

    uri = s3("cut-short")
    calls: list[str] = []
    run = _toy_run(tmp_path / "a", uri, calls, tmp_path)
    key = run.step_key(run.steps[0])
    root = RemoteRoot(uri)
    root.fs.create_dir(f"{root.base}/make/{key}", recursive=True)
    with root.fs.open_output_stream(f"{root.base}/make/{key}/stale.bin") as f:
        f.write(b"half an upload")
    assert not root.has("make", key)
    run.run(until_step="make")
    assert calls == ["make"]
    remote = _listing(uri)
    assert f"make/{key}/stale.bin" not in remote and f"make/{key}/_COMPLETE.json" in remote


def test_a_local_output_missing_remotely_is_uploaded_on_reuse(s3, tmp_path):
    uri = s3("late")
    calls: list[str] = []
    first = _toy_run(tmp_path / "a", uri, calls, tmp_path).run()
    for r in first.values():  # as if the root had been set only after the first run
        _delete_remote(uri, r.name, r.key)
    assert _listing(uri) == {}
    again = _toy_run(tmp_path / "a", uri, calls, tmp_path).run()
    assert all(r.cached for r in again.values()) and calls == ["make", "double"]
    assert len(_listing(uri)) == 4


def test_unreachable_root_is_refused_before_anything_starts(tmp_path, monkeypatch):
    """A root that cannot be listed stops `tpipe run` at once, naming the key and the URI."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("TPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    root = f"s3://nowhere/x?endpoint_override=127.0.0.1:{port}&scheme=http&connect_timeout=1&request_timeout=1"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke", f"artifact_root={root}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "artifact_root" in proc.stderr and "s3://nowhere/x" in proc.stderr, proc.stderr[-2000:]
    assert "ray: started" not in proc.stdout  # refused before Ray started
    assert time.perf_counter() - t0 < 120


@pytest.mark.e2e
def test_pipeline_on_s3_is_reused_by_a_second_home(s3, tmp_path, monkeypatch):
    """The smoke pipeline up to `train` with its artifact root and Ray Train's storage_path both on
    S3, then again from an empty TPIPE_HOME: the second run reuses all four steps from S3 (the
    same token shards, the same weights) and the training checkpoints are in the bucket."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    uri = s3("pipeline")
    endpoint = uri.split("endpoint_override=")[1].split("&")[0]
    # Ray Train and its workers open storage_path themselves: the endpoint comes from the environment
    # (AWS_ENDPOINT_URL_S3, as on a cluster pointed at MinIO), which the local Ray started below inherits.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{endpoint}")
    cfg = load_config("smoke", [f"artifact_root={uri}", "train.storage_path=s3://tpipe-artifacts/ray_results",
                                "train.max_steps=15"])
    with fresh_ray(num_cpus=2):
        with tpipe_home(tmp_path / "home-a"):
            first = run_pipeline(cfg, until_step="train", quiet=True)
        with tpipe_home(tmp_path / "home-b"):
            second = run_pipeline(cfg, until_step="train", quiet=True)
    assert not any(r.cached for r in first["results"].values())
    assert all(r.cached for r in second["results"].values())
    manifest = lambda r: {s: [x["sha256"] for x in v]  # noqa: E731
                          for s, v in json.loads((r.out_dir / "_manifest.json").read_text())["splits"].items()}
    assert manifest(second["results"]["encode"]) == manifest(first["results"]["encode"])
    weights = "package/model.safetensors"
    assert (second["results"]["train"].out_dir / weights).read_bytes() == (first["results"]["train"].out_dir / weights).read_bytes()
    assert str(second["results"]["train"].out_dir).startswith(str(tmp_path / "home-b"))
    remote = _listing(uri)
    for name, r in first["results"].items():
        assert f"{name}/{r.key}/_COMPLETE.json" in remote
    checkpoints = [k for k in _listing(uri.replace("/pipeline?", "/ray_results?")) if k.endswith("checkpoint.ckpt")]
    assert checkpoints, "no training checkpoint reached s3://tpipe-artifacts/ray_results"
    shutil.rmtree(tmp_path / "home-a")


def test_a_corpus_on_s3_without_s3fs_is_refused_before_ray_starts(tmp_path):
    """data.paths goes through fsspec, which needs s3fs for s3://: its absence is one line naming the
    URI and the extra to install, before Ray starts (it was a 67-line traceback from a Ray task)."""
    hidden = tmp_path / "hidden" / "s3fs"  # as on a machine without s3fs, whatever this venv holds
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named s3fs')\n")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TPIPE_HOME": str(tmp_path / "home"), "PYTHONPATH": f"{repo}{os.pathsep}{hidden.parent}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke", "data.source=files",
                           "data.paths=[s3://corpus/train.*.tsv]"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("tpipe: data.paths: s3://corpus/train.*.tsv needs s3fs, which is not installed: "
                                   "pip install 'transformer-pipeline[s3]'"), proc.stderr[-2000:]
    assert "ray: started" not in proc.stdout



def test_workers_read_remote_inputs_through_a_per_node_cache(s3, tmp_path, monkeypatch):
    """local_copy: a remote file or folder is fetched once per node and version into the node's own
    cache (never the driver's home); a re-written object gets a fresh entry; local paths pass through."""
    from data.exchange import local_copy
    from pipeline.artifacts import RemoteRoot

    monkeypatch.setenv("TPIPE_NODE_CACHE", str(tmp_path / "node-cache"))
    root = RemoteRoot(s3("cache"))
    root.fs.create_dir(f"{root.base}/tokenizer/k1/sub", recursive=True)
    for rel, data in (("tokenizer/k1/vocab.json", b"{}"), ("tokenizer/k1/sub/merges.txt", b"a b\n")):
        with root.fs.open_output_stream(f"{root.base}/{rel}") as f:
            f.write(data)
    folder = Path(local_copy(root.uri_of("tokenizer", "k1")))
    assert folder.parent == tmp_path / "node-cache"
    assert (folder / "vocab.json").read_bytes() == b"{}" and (folder / "sub" / "merges.txt").read_bytes() == b"a b\n"
    one = local_copy(root.uri_of("tokenizer", "k1", "vocab.json"))
    assert Path(one).read_bytes() == b"{}" and Path(one).name == "vocab.json"
    os.utime(one, (0, 0))  # a second call reads the cached copy: no new download
    assert local_copy(root.uri_of("tokenizer", "k1", "vocab.json")) == one and os.stat(one).st_mtime == 0
    time.sleep(1.1)  # S3 modification times have a one-second resolution
    with root.fs.open_output_stream(f"{root.base}/tokenizer/k1/vocab.json") as f:
        f.write(b'{"a": 1}')
    again = local_copy(root.uri_of("tokenizer", "k1", "vocab.json"))
    assert again != one and Path(again).read_bytes() == b'{"a": 1}' and Path(one).read_bytes() == b"{}"
    assert local_copy(str(tmp_path / "x.parquet")) == str(tmp_path / "x.parquet")
    with pytest.raises(FileNotFoundError, match="tokenizer/none"):
        local_copy(root.uri_of("tokenizer", "none"))
    assert not list((tmp_path / "node-cache").glob(".*tmp*"))
