"""The whole pipeline on real Ray, real MLflow (sqlite store) and real Parquet: the smoke config.

Marked e2e: `pytest -m e2e` runs only these, `-m "not e2e"` skips them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_testlib import fresh_ray, tpipe_home

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with tpipe_home(tmp_path_factory.mktemp("tpipe-home")) as home, fresh_ray(num_cpus=2, dashboard_host="127.0.0.1"):
        yield home


@pytest.fixture(scope="module")
def first_run(home):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    cfg = load_config("smoke")
    t0 = time.perf_counter()
    out = run_pipeline(cfg, quiet=True)
    out["seconds"] = time.perf_counter() - t0
    return out


def test_every_step_ran_and_wrote_its_output(first_run):
    results = first_run["results"]
    assert list(results) == ["prepare", "tokenizer", "encode", "train", "register", "evaluate"]
    assert not any(r.cached for r in results.values())
    run_dir = Path(first_run["run_dir"])
    assert (run_dir / "config.yaml").read_text().startswith("seed: 7")  # the resolved config is saved
    report = json.loads((results["prepare"].out_dir / "data_report.json").read_text())
    assert report["input"] == report["kept"] + sum(report["rejected"].values())
    assert (results["tokenizer"].out_dir / "merges.txt").exists()
    pkg = results["register"].out_dir / "package"
    for f in ("model.safetensors", "model_config.json", "generation.json", "tokenizer", "lineage.json", "README.md"):
        assert (pkg / f).exists(), f


def test_registered_with_aliases_and_tracked(first_run):
    import mlflow
    from mlflow import MlflowClient

    summary = first_run["summary"]
    mlflow.set_tracking_uri(summary["tracking_uri"])
    client = MlflowClient(summary["tracking_uri"], registry_uri=summary["tracking_uri"])
    name = "tpipe-smoke"
    champion = client.get_model_version_by_alias(name, "champion")
    candidate = client.get_model_version_by_alias(name, "candidate")
    assert str(champion.version) == str(candidate.version) == "1"
    assert "eval.bleu" in champion.tags and champion.tags["tpipe.tokenizer_fingerprint"]
    train_run = client.get_run(first_run["results"]["train"].summary["mlflow_run_id"])
    assert train_run.data.params["train.max_steps"] == "30"
    assert "train/loss" in train_run.data.metrics and "val/loss" in train_run.data.metrics
    history = client.get_metric_history(train_run.info.run_id, "train/loss")
    assert len(history) >= 3  # per-step metrics, logged by rank 0 only: no duplicated steps
    assert len({m.step for m in history}) == len(history)
    # a validation every 15 of the 30 steps, each on the whole validation split (a fresh pass each time)
    val = client.get_metric_history(train_run.info.run_id, "val/loss")
    assert sorted(m.step for m in val) == [14, 29]
    assert val[0].value != val[1].value
    ev = first_run["summary"]["evaluation"]
    assert ev["n_sentences"] > 0 and 0 <= ev["candidate"]["chrf"] <= 100
    # one parent run per pipeline run, one nested run per step, with lineage tags
    parent_id = summary["mlflow_run_id"]
    children = client.search_runs(
        [train_run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(r.data.tags["tpipe.step"] for r in children) == sorted(
        ["prepare", "tokenizer", "encode", "train", "register", "evaluate"]
    )
    assert all(r.data.tags["tpipe.step_key"] for r in children)
    artifacts = {a.path for a in client.list_artifacts(train_run.info.run_id, "pictures")}
    assert {"pictures/attention.png", "pictures/loss_curves.png"} <= artifacts
    parent_artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"config.yaml", "data", "tokenizer", "evaluation.json"} <= parent_artifacts
    assert "system/cpu_utilization_percentage" in train_run.data.metrics or any(
        k.startswith("system/") for k in client.get_run(train_run.info.run_id).data.metrics
    )


def test_champion_loads_in_a_fresh_process(first_run):
    uri = first_run["summary"]["tracking_uri"]
    code = (
        "import json, mlflow; mlflow.set_tracking_uri(%r); mlflow.set_registry_uri(%r);"
        "m = mlflow.pyfunc.load_model('models:/tpipe-smoke@champion');"
        "print(json.dumps(list(m.predict(['three hundred and six', 'March 5, 2021']))))"
    ) % (uri, uri)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out) == 2 and all(isinstance(x, str) for x in out)


def test_rerun_reuses_every_step(first_run, home):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    t0 = time.perf_counter()
    again = run_pipeline(load_config("smoke"), quiet=True)
    elapsed = time.perf_counter() - t0
    not_reused = [n for n, r in again["results"].items() if not r.cached]
    assert not not_reused, f"re-run redid {not_reused}"
    assert {n: r.key for n, r in again["results"].items()} == {n: r.key for n, r in first_run["results"].items()}
    assert again["summary"]["mlflow_run_id"] == first_run["summary"]["mlflow_run_id"]  # same parent run
    print(f"first run {first_run['seconds']:.1f}s, full re-run {elapsed:.1f}s")


def test_killed_worker_resumes_exactly(first_run, tmp_path, monkeypatch):
    """Rank 1 SIGKILLs itself at step 20; Ray Train restarts the workers from the step-15 checkpoint.

    The run completes, its one MLflow run's loss curve continues, and every logged loss equals the
    uninterrupted run's bit for bit (same config and seed, CPU): the resume is exact.
    """
    from mlflow import MlflowClient

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    monkeypatch.setenv("TPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TPIPE_INJECT_KILL_WORKER", "1:20")
    out = run_pipeline(load_config("smoke"), until_step="train", quiet=True)
    marker = list((tmp_path / "home" / "ray_results").glob("train-*/.injected-kill"))
    assert marker, "the injected failure did not fire"

    def curve(tracking_uri, run_id):
        hist = MlflowClient(tracking_uri).get_metric_history(run_id, "train/loss")
        last = {}
        for m in sorted(hist, key=lambda m: m.timestamp):
            last[m.step] = m.value  # a step logged twice (before the kill, after the resume): the latest
        return last

    resumed = curve(out["summary"]["tracking_uri"], out["results"]["train"].summary["mlflow_run_id"])
    reference = curve(first_run["summary"]["tracking_uri"], first_run["results"]["train"].summary["mlflow_run_id"])
    assert max(resumed) == max(reference) and sorted(resumed) == sorted(reference)
    assert resumed == reference  # every logged loss, exactly
    assert out["results"]["train"].summary["metrics"]["step"] == 30


def _kill_everything_of(home: Path) -> None:
    """SIGKILL every process whose environment has TPIPE_HOME=home: the driver, and the local Ray
    it started (GCS, raylet, workers), as if the machine running `tpipe run` had lost power."""
    import signal

    needle = f"TPIPE_HOME={home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _run_until(home: Path, pattern: str | None = None, checkpoint: bool = False, timeout: float = 600) -> str:
    """Start `tpipe run smoke` in its own home and kill it (and its Ray) as soon as `pattern` is
    printed, or as soon as a training checkpoint with Lightning state exists on disk."""
    import re
    import threading

    env = {**os.environ, "TPIPE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    for k in ("TPIPE_INJECT_KILL_WORKER", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "smoke"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if pattern is not None and any(re.search(pattern, line) for line in list(seen)):
            break
        # the step-15 checkpoint, once Ray Train has recorded it in its run snapshot (what a re-run
        # restores from); the kill lands a few steps later, before step 30
        if checkpoint and any("checkpoint_" in p.read_text(errors="replace")
                              for p in home.glob("ray_results/train-*/checkpoint_manager_snapshot.json")):
            break
        time.sleep(0.02)
    _kill_everything_of(home)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return "".join(seen)


def test_driver_killed_during_encode_and_train_continues_identically(first_run, tmp_path):
    """Kill `tpipe run` (driver and its local Ray) as encoding starts, then mid-training; re-run.

    Completed steps are not redone, training resumes from its checkpoint, and the tokenizer,
    token shards and final weights are identical to the uninterrupted run's.
    """
    import torch
    from safetensors.torch import load_file

    home = tmp_path / "home"
    out1 = _run_until(home, r"▶ encode")
    assert "✓ tokenizer" in out1
    out2 = _run_until(home, checkpoint=True)
    assert "reused" in out2 and "▶ prepare" not in out2 and "▶ tokenizer" not in out2
    assert not list((home / "artifacts" / "train").glob("*/_COMPLETE.json")), "killed too late: training had finished"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "smoke", "--json"], cwd=REPO,
        env={**env, "TPIPE_HOME": str(home), "PYTHONUNBUFFERED": "1"},
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "resuming from" in proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    ran = [n for n, s in summary["steps"].items() if not s["cached"]]
    assert ran == ["train", "register", "evaluate"], ran
    ref = first_run["results"]
    for step in ("prepare", "tokenizer", "encode", "train"):
        assert summary["steps"][step]["key"] == ref[step].key
    art = home / "artifacts"
    for f in ("merges.txt", "vocab.json"):
        assert (art / "tokenizer" / ref["tokenizer"].key / f).read_bytes() == (ref["tokenizer"].out_dir / f).read_bytes()
    manifest = lambda d: {s: [x["sha256"] for x in v] for s, v in json.loads((d / "_manifest.json").read_text())["splits"].items()}  # noqa: E731
    assert manifest(art / "encode" / ref["encode"].key) == manifest(ref["encode"].out_dir)
    resumed = load_file(str(art / "train" / ref["train"].key / "package" / "model.safetensors"))
    reference = load_file(str(ref["train"].out_dir / "package" / "model.safetensors"))
    # bit-identical, every tensor: the model, optimizer, schedule and loader position come from the
    # checkpoint, and dropout is seeded per batch (pipeline/train.py, TrainingState)
    differing = {name: float((resumed[name] - value).abs().max()) for name, value in reference.items()
                 if not torch.equal(resumed[name], value)}
    assert not differing, f"{len(differing)} tensors differ after a driver restart: {differing}"


def test_mlflow_models_serve_over_http(first_run, tmp_path):
    """`mlflow models serve` on 127.0.0.1 serves the champion; /invocations translates over HTTP."""
    import signal
    import socket

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = first_run["summary"]["tracking_uri"]
    # as in an activated virtualenv: the scoring server runs `uvicorn` from the PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", "models:/tpipe-smoke@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, "mlflow models serve did not come up"
            time.sleep(0.5)
        r = requests.post(f"http://127.0.0.1:{port}/invocations",
                          json={"inputs": ["three hundred and six", "March 5, 2021"]}, timeout=120)
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_ray_task_killed_once_is_retried(first_run, tmp_path):
    """One encode task's worker process dies (injected); Ray retries the task and the run succeeds
    with the same token shards as the uninterrupted run."""
    home, inject = tmp_path / "home", tmp_path / "inject"
    inject.mkdir()
    env = {**os.environ, "TPIPE_HOME": str(home), "TPIPE_INJECT_TASK_KILL": "encode", "TPIPE_INJECT_DIR": str(inject)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke", "--until", "encode"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (inject / "killed-encode").exists(), "the injected failure did not fire"
    # The terminal gets tpipe's own lines; Ray's warnings and the dead worker's report go to the log.
    assert len(proc.stderr.splitlines()) <= 2, proc.stderr[-3000:]
    (log,) = (home / "runs").glob("*/tpipe.log")
    assert log.stat().st_size > 0
    key = first_run["results"]["encode"].key
    ours = json.loads((home / "artifacts" / "encode" / key / "_manifest.json").read_text())
    ref = json.loads((first_run["results"]["encode"].out_dir / "_manifest.json").read_text())
    assert ours["splits"] == ref["splits"]


def test_tpipe_evaluate_reproduces_the_pipelines_scores(first_run):
    """`tpipe evaluate models:/NAME/VERSION --split test` in a fresh process: the same test set, the
    same scores as the pipeline's own evaluation step; it logs its own evaluation run."""
    env = {**os.environ, "TPIPE_HOME": os.environ["TPIPE_HOME"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "models:/tpipe-smoke/1", "--split", "test",
                           "--compare", "models:/tpipe-smoke@champion", "--json"],
                          cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sacreBLEU nrefs:1|case:mixed|eff:no|tok:zh" in proc.stdout
    ours, champion = json.loads(proc.stdout.strip().splitlines()[-1])
    pipeline_scores = first_run["summary"]["evaluation"]["candidate"]
    for metric in ("bleu", "chrf", "ter", "exact_match", "length_ratio"):
        assert ours[metric] == pipeline_scores[metric], metric
        assert champion[metric] == ours[metric]  # v1 is the champion
    assert ours["n_sentences"] == first_run["summary"]["evaluation"]["n_sentences"]
