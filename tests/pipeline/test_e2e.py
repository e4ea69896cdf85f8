"""The whole pipeline on real Ray, real MLflow (sqlite store) and real Parquet: the smoke config.

Marked e2e: `pytest -m e2e` runs only these, `-m "not e2e"` skips them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_testlib import (
    REPO,
    fresh_ray,
    kill_everything_of,
    processes_of,
    tpipe,
    tpipe_env,
    tpipe_home,
    wait_for,
)

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with tpipe_home(tmp_path_factory.mktemp("tpipe-home")) as home, fresh_ray(num_cpus=2, dashboard_host="127.0.0.1"):
        yield home


@pytest.fixture(scope="module")
def first_run(home):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    cfg = load_config("smoke")
    t0, started = time.perf_counter(), time.time()
    out = run_pipeline(cfg, quiet=True)
    out["seconds"], out["started"] = time.perf_counter() - t0, started
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
    # the workers leave nothing in the machine's temp dir (Ray's Lightning callback stages reports there)
    import tempfile

    left = [p for p in Path(tempfile.gettempdir()).glob(f"lightning_checkpoints-*-name=train-{results['train'].key}-*")
            if p.stat().st_mtime >= first_run["started"]]  # (not another run's, from before this one)
    assert not left, left
    # no placement-group cleaner outside a sweep: on a busy machine it kills live runs (pipeline/train.py)
    import ray
    from ray.util.state import list_actors

    here = ray.get_runtime_context().gcs_address  # this module's Ray (others may run on the machine)
    assert not list_actors(address=here, filters=[("class_name", "=", "PlacementGroupCleaner")], detail=False)


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
    # A parent run of its own, linking each reused step to the run that made it; the first run's
    # parent keeps its own tags (each step 'done'), status and end time.
    from mlflow import MlflowClient

    client = MlflowClient(first_run["summary"]["tracking_uri"])
    first_id, again_id = first_run["summary"]["mlflow_run_id"], again["summary"]["mlflow_run_id"]
    assert again_id != first_id
    first, rerun = client.get_run(first_id), client.get_run(again_id)
    assert rerun.info.run_name != first.info.run_name and rerun.info.run_name.startswith("smoke-")
    assert first.data.tags["tpipe.step.train"].startswith("done ") and first.info.status == "FINISHED"
    assert rerun.data.tags["tpipe.step.train"].startswith("cached ")
    assert rerun.data.tags["tpipe.step.train.run_id"] == first_run["results"]["train"].summary["mlflow_run_id"]
    assert first.info.end_time < rerun.info.start_time
    # the parent shows the scores and the total time in the UI's run list
    assert first.data.metrics["test/bleu"] == first_run["summary"]["evaluation"]["candidate"]["bleu"]
    assert "pipeline/wall_seconds" in first.data.metrics and "pipeline/train_seconds" in first.data.metrics
    assert rerun.data.metrics["test/bleu"] == first.data.metrics["test/bleu"]
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


# ---- one home, four runs at once, a SIGKILL in encode, a Ctrl-C in training, re-runs -------
# Run once, in a home of its own, against the module's uninterrupted first run:
#   R1  four `tpipe run smoke` at once in an empty home: three are refused; the winner (driver and
#       its local Ray) is SIGKILLed as encoding starts, as if its machine lost power;
#   R2  a re-run takes the dead run's lock over, reuses prepare and tokenizer, and gets Ctrl-C once
#       training has written a checkpoint;
#   R3  a re-run continues training from that checkpoint and ends identical to the first run;
#   R4  one more run reuses everything.


def _output(logs: Path, name: str) -> tuple[str, str]:
    return (logs / f"{name}.out").read_text(), (logs / f"{name}.err").read_text()


def _started(home: Path, logs: Path, name: str) -> subprocess.Popen:
    return tpipe(home, "run", "smoke", stdout=open(logs / f"{name}.out", "w"), stderr=open(logs / f"{name}.err", "w"))


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    """R1 and R2."""
    home, logs = tmp_path_factory.mktemp("race"), tmp_path_factory.mktemp("race-logs")
    procs = [_started(home, logs, str(i)) for i in range(4)]
    snapshots = lambda: list(home.glob("ray_results/train-*/checkpoint_manager_snapshot.json"))  # noqa: E731
    try:
        # the three that lose exit on their own, in seconds; the winner is killed as encoding starts
        wait_for(lambda: sum(p.poll() is not None for p in procs) >= 3, 300, "three runs to be refused")
        (winner,) = [p for p in procs if p.poll() is None]
        name = str(procs.index(winner))
        wait_for(lambda: "▶ encode" in "".join(_output(logs, name)) or winner.poll() is not None, 600, "encode to start")
        kill_everything_of(home)
        winner.wait(timeout=60)
        killed_in_encode = "".join(_output(logs, name))

        second = _started(home, logs, "second")
        wait_for(lambda: any("checkpoint_" in p.read_text(errors="replace") for p in snapshots())
                 or second.poll() is not None, 600, "a training checkpoint")
        assert second.poll() is None, "the run ended before it could be interrupted"
        os.killpg(second.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
        t0 = time.monotonic()
        second.wait(timeout=120)
        exit_seconds = time.monotonic() - t0
        checkpoints_at_exit = sorted(str(p) for p in home.glob("ray_results/train-*/checkpoint_*"))
        finished = list((home / "artifacts" / "train").glob("*/_COMPLETE.json"))
        time.sleep(3)
        yield {
            "home": home, "procs": procs, "winner": winner, "killed_in_encode": killed_in_encode,
            "second": second, "exit_seconds": exit_seconds, "left": processes_of(home), "finished": finished,
            "checkpoints_at_exit": checkpoints_at_exit,
            "checkpoints_later": sorted(str(p) for p in home.glob("ray_results/train-*/checkpoint_*")),
            "out": [_output(logs, str(i))[0] for i in range(4)], "err": [_output(logs, str(i))[1] for i in range(4)],
            "second_out": _output(logs, "second"),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        kill_everything_of(home)


@pytest.fixture(scope="module")
def resumed(race):
    """R3: the re-run that finishes the interrupted pipeline."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke", "--json"], cwd=REPO,
                          env=tpipe_env(race["home"]), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def test_four_runs_at_once_one_works_the_others_are_refused_naming_it(race):
    for i, p in enumerate(race["procs"]):
        if p is race["winner"]:
            continue
        lines = race["err"][i].strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, race["err"][i][-2000:]
        assert lines[0].startswith(f"tpipe: another run is working in {race['home']}: pid {race['winner'].pid}, started ")
        assert "tpipe run smoke" in lines[0]
        assert "▶" not in race["out"][i]  # refused before any step


def test_ctrl_c_in_training_stops_the_run_and_its_workers_and_says_how_to_resume(race):
    out, err = race["second_out"]
    assert race["second"].returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "tpipe: run interrupted (SIGINT) during step train; finished steps are kept, training continues from its "
        "last checkpoint: resume with `tpipe run smoke`")
    # tpipe's own traceback, that is (lines Ray forwards from its actors carry a "(Name pid=N)" prefix)
    assert not any(line.startswith("Traceback") for line in err.splitlines()), err[-3000:]
    assert race["exit_seconds"] < 60, race["exit_seconds"]
    assert race["left"] == [], f"processes of the run still alive after it exited: {race['left']}"
    assert race["checkpoints_later"] == race["checkpoints_at_exit"]  # nothing kept checkpointing

    status = subprocess.run([sys.executable, "-m", "pipeline.cli", "status"], cwd=REPO, env=tpipe_env(race["home"]),
                            capture_output=True, text=True, timeout=120)
    rows = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[2:]}
    # prepare and tokenizer were made by the run killed in encode, and reused by this one
    assert rows == {"prepare": "cached", "tokenizer": "cached", "encode": "done", "train": "interrupted"}, status.stdout

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{race['home']}/mlflow.db")
    train = client.search_runs(client.get_experiment_by_name("tpipe").experiment_id, "tags.`tpipe.step` = 'train'")
    assert [r.info.status for r in train] == ["KILLED"]


def test_driver_killed_during_encode_and_train_continues_identically(first_run, race, resumed):
    """The run SIGKILLed as encoding started, then the one interrupted in training; the re-run.

    Completed steps are not redone, training resumes from its checkpoint, and the tokenizer,
    token shards and final weights are identical to the uninterrupted run's.
    """
    import torch
    from safetensors.torch import load_file

    assert "✓ tokenizer" in race["killed_in_encode"]
    second = "".join(race["second_out"])
    assert "reused" in second and "▶ prepare" not in second and "▶ tokenizer" not in second
    assert not race["finished"], "interrupted too late: training had finished"
    assert "resuming from" in resumed.stdout + resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    ran = [n for n, s in summary["steps"].items() if not s["cached"]]
    assert ran == ["train", "register", "evaluate"], ran
    ref = first_run["results"]
    for step in ("prepare", "tokenizer", "encode", "train"):
        assert summary["steps"][step]["key"] == ref[step].key
    art = race["home"] / "artifacts"
    for f in ("merges.txt", "vocab.json"):
        assert (art / "tokenizer" / ref["tokenizer"].key / f).read_bytes() == (ref["tokenizer"].out_dir / f).read_bytes()
    manifest = lambda d: {s: [x["sha256"] for x in v] for s, v in json.loads((d / "_manifest.json").read_text())["splits"].items()}  # noqa: E731
    assert manifest(art / "encode" / ref["encode"].key) == manifest(ref["encode"].out_dir)
    resumed_weights = load_file(str(art / "train" / ref["train"].key / "package" / "model.safetensors"))
    reference = load_file(str(ref["train"].out_dir / "package" / "model.safetensors"))
    # bit-identical, every tensor: the model, optimizer, schedule and loader position come from the
    # checkpoint, and dropout is seeded per batch (pipeline/train.py, TrainingState)
    differing = {name: float((resumed_weights[name] - value).abs().max()) for name, value in reference.items()
                 if not torch.equal(resumed_weights[name], value)}
    assert not differing, f"{len(differing)} tensors differ after a driver restart: {differing}"


def test_a_rerun_continues_then_one_more_reuses_everything_and_the_store_is_sound(race, resumed):
    import sqlite3

    assert "register tpipe-smoke: 3/3 stages" in resumed.stdout  # registration reports its progress too

    last = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke", "--json"], cwd=REPO,
                          env=tpipe_env(race["home"]), capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, (last.stdout + last.stderr)[-4000:]
    assert all(s["cached"] for s in json.loads(last.stdout.strip().splitlines()[-1])["steps"].values())
    with sqlite3.connect(race["home"] / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


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
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
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
    (log,) = (home / "runs").glob("*/tpipe.log")  # where they went (empty when Ray said nothing)
    key = first_run["results"]["encode"].key
    ours = json.loads((home / "artifacts" / "encode" / key / "_manifest.json").read_text())
    ref = json.loads((first_run["results"]["encode"].out_dir / "_manifest.json").read_text())
    assert ours["splits"] == ref["splits"]


def test_tpipe_evaluate_reproduces_the_pipelines_scores(first_run):
    """`tpipe evaluate models:/NAME/VERSION --split test` in a fresh process: the same test set, the
    same scores as the pipeline's own evaluation step; it logs its own evaluation run."""
    client = _use_store(first_run["summary"]["tracking_uri"])
    tags_before = client.get_model_version("tpipe-smoke", "1").tags
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
    # the same sentences as the pipeline's evaluation (its record), and that record is left as it was
    tags_after = client.get_model_version("tpipe-smoke", "1").tags
    assert ours["data"]["sha256"] == tags_before["eval.data_sha256"]
    assert {k: tags_after.get(k) for k in tags_before} == tags_before


def _use_store(uri: str):
    """Point this process's MLflow at the module's store (another test's run_pipeline may have moved it)."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


def test_registered_model_decodes_with_its_own_settings_and_describes_itself(first_run, tmp_path):
    """predict() without params decodes with the package's generation.json; a param overrides it
    for one call. The model card is the registry's description; the logged model has a name."""
    import shutil

    import mlflow

    from pipeline.evaluate import model_tgt_lang
    from pipeline.registry import log_and_register
    from pipeline.inference import Translator
    from data.io import write_json_atomic as write_json

    client = _use_store(first_run["summary"]["tracking_uri"])
    v1 = client.get_model_version("tpipe-smoke", "1")
    card = (first_run["results"]["register"].out_dir / "package" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("# tpipe-smoke")
    assert v1.description == card and client.get_registered_model("tpipe-smoke").description == card
    assert client.get_logged_model(v1.source.removeprefix("models:/")).name == f"tpipe-smoke-{v1.tags['tpipe.config_hash'][:8]}"

    # the smoke package with a decoding limit of 2 tokens, registered as a model of its own
    package = tmp_path / "package"
    shutil.copytree(first_run["results"]["register"].out_dir / "package", package)
    generation = json.loads((package / "generation.json").read_text()) | {"max_len": 2}
    write_json(package / "generation.json", generation)
    mlflow.set_experiment("tpipe")
    with mlflow.start_run(run_name="decoding-test"):
        mlflow.log_param("data.tgt_lang", "de")  # as a training run records it (pipeline/steps.py: train)
        log_and_register(package, "tpipe-decoding")
    model = mlflow.pyfunc.load_model("models:/tpipe-decoding/1")
    translator = Translator(package)
    texts = ["three hundred and six", "March 5, 2021", "the twenty-first of June"]
    own = list(model.predict(texts))
    assert own == translator.translate(texts)
    assert max(len(translator.tokenizer.encode(h)) for h in own) <= 2
    longer = list(model.predict(texts, params={"max_len": 24}))
    assert longer == translator.translate(texts, max_len=24) and longer != own
    assert list(model.predict(texts)) == own  # the override held for that call only
    # `tpipe evaluate --tgt-lang` defaults to the language the model translates into
    assert model_tgt_lang("tpipe-decoding", 1) == "de"
    assert model_tgt_lang("tpipe-smoke", 1) == "zh"


def _history(client) -> dict:
    """Every run's status, times, tags and metrics; every version's tags and the aliases."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = {r.info.run_id: {"status": r.info.status, "end_time": r.info.end_time, "name": r.info.run_name,
                            "tags": dict(r.data.tags), "metrics": dict(r.data.metrics)}
            for r in client.search_runs(experiments, max_results=5000)}
    versions = {(mv.name, mv.version): dict(mv.tags) for mv in client.search_model_versions()}
    aliases = {m.name: dict(m.aliases) for m in client.search_registered_models()}
    return {"runs": runs, "versions": versions, "aliases": aliases}


def _tpipe(home: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TPIPE_HOME": str(home)}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "TPIPE_INJECT_KILL_WORKER"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_new_users_journey_never_rewrites_history(first_run, home, tmp_path):
    """What a new user did: smoke run, re-run, a typo, a re-run from register, an evaluation on a
    2-line file with --compare @champion --promote champion, a translation. Every earlier run (the
    training's too, which registration must not reopen) keeps its status, end time,
    tags and metrics, every version its tags, and @champion moves only on a same-data comparison."""
    client = _use_store(first_run["summary"]["tracking_uri"])
    before = _history(client)

    rerun = _tpipe(home, "run", "smoke", "--json")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert all(s["cached"] for s in summary["steps"].values())
    assert summary["mlflow_run_id"] not in before["runs"]

    typo = _tpipe(home, "run", "smoke", "--from", "trian")
    assert typo.returncode == 2 and typo.stderr.startswith("tpipe: unknown step 'trian' for --from")
    assert len(typo.stderr.strip().splitlines()) == 1 and "Traceback" not in typo.stderr

    again = _tpipe(home, "run", "smoke", "--from", "register", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    steps = json.loads(again.stdout.strip().splitlines()[-1])["steps"]
    # --from forces register; it completes the version of the same training, so evaluate's inputs
    # are unchanged and its result is reused
    assert [n for n, s in steps.items() if not s["cached"]] == ["register"]
    assert len(client.search_model_versions("name = 'tpipe-smoke'")) == 1  # the same training: no second version

    # v2: the same weights registered again, so any score difference can only come from the data
    v1 = client.get_model_version("tpipe-smoke", "1")
    v2 = client.create_model_version("tpipe-smoke", v1.source, run_id=v1.run_id,
                                     tags={k: v for k, v in v1.tags.items() if not k.startswith("eval.")})
    # a 2-line file whose references are the model's own output: BLEU 100 on it
    import mlflow

    sources = ["three hundred and six", "March 5, 2021"]
    hyps = mlflow.pyfunc.load_model("models:/tpipe-smoke/1").predict(sources)
    tsv = tmp_path / "my.tsv"
    tsv.write_text("".join(f"{s}\t{h}\n" for s, h in zip(sources, hyps)), encoding="utf-8")
    ev = _tpipe(home, "evaluate", f"models:/tpipe-smoke/{v2.version}", "--data", str(tsv),
                "--compare", "models:/tpipe-smoke@champion", "--promote", "champion", "--json")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "tok:zh" in ev.stdout  # the model's target language, not a default
    ours, champion = json.loads(ev.stdout.strip().splitlines()[-1])
    assert ours["data"] == champion["data"] and ours["data"]["n_sentences"] == 2
    assert ours["bleu"] == champion["bleu"]  # same weights, same data: no reason to move
    assert "promotion: @champion stays v1" in ev.stdout
    recorded = client.get_model_version("tpipe-smoke", v2.version).tags
    assert "eval.bleu" not in recorded  # a 2-line file is not the version's test-split score
    (record,) = [json.loads(v) for k, v in recorded.items() if k.startswith("eval.")]
    assert record["data"]["sha256"] == ours["data"]["sha256"] and record["data"]["n_sentences"] == 2
    assert record["decoding"]["max_len"] == 24  # the smoke config's eval.max_len, as decoded

    tr = _tpipe(home, "translate", "models:/tpipe-smoke@champion", "three hundred and six")
    assert tr.returncode == 0, tr.stderr[-3000:]
    assert tr.stdout.startswith("three hundred and six\t")

    after = _history(client)
    for run_id, was in before["runs"].items():
        assert after["runs"][run_id] == was, f"run {was['name']} ({run_id}) changed"
    for version, tags in before["versions"].items():
        assert {k: after["versions"][version].get(k) for k in tags} == tags, f"version {version} lost or changed tags"
    assert str(after["aliases"]["tpipe-smoke"]["champion"]) == str(before["aliases"]["tpipe-smoke"]["champion"]) == "1"
    parents = [r["name"] for r in after["runs"].values() if r["tags"].get("tpipe.pipeline_run")]
    assert len(parents) == len(set(parents)) >= 2  # every `tpipe run` is a run of its own, named apart


def _result(bleu: float, data: str, sha: str, n: int = 2) -> dict:
    return {"bleu": bleu, "data": {"data": data, "split": None, "sha256": sha, "n_sentences": n}}


def test_promotion_compares_results_on_the_same_data_only(first_run):
    """The rule behind `--promote` and the pipeline's evaluate step, on real registry versions."""
    from pipeline.registry import alias_version, promote_if_better

    client = _use_store(first_run["summary"]["tracking_uri"])
    source = client.get_model_version("tpipe-smoke", "1").source
    client.create_registered_model("tpipe-promotion")
    for _ in range(2):
        client.create_model_version("tpipe-promotion", source)
    test_split = _result(5.0, "split:test", "aaa", 75)
    moved, message = promote_if_better("tpipe-promotion", 1, "bleu", test_split, None)
    assert moved and alias_version("tpipe-promotion", "champion") == 1, message
    # v2's 100 on a 2-line file against v1's 5 on the test split: not comparable, refused
    moved, message = promote_if_better("tpipe-promotion", 2, "bleu", _result(100.0, "my.tsv", "bbb"), test_split)
    assert not moved and alias_version("tpipe-promotion", "champion") == 1
    assert "same data" in message and "my.tsv" in message and "split:test" in message
    # both on the same file: a tie keeps the holder, a higher score moves the alias
    same = _result(7.0, "my.tsv", "bbb")
    moved, message = promote_if_better("tpipe-promotion", 2, "bleu", same, same)
    assert not moved and alias_version("tpipe-promotion", "champion") == 1, message
    moved, message = promote_if_better("tpipe-promotion", 2, "bleu", _result(8.0, "my.tsv", "bbb"), same)
    assert moved and alias_version("tpipe-promotion", "champion") == 2, message
    # any alias is guarded by its own holder, not only @champion
    moved, _ = promote_if_better("tpipe-promotion", 1, "bleu", _result(1.0, "my.tsv", "bbb"), None, alias="staging")
    assert moved
    moved, message = promote_if_better("tpipe-promotion", 2, "bleu", _result(9.0, "x.tsv", "ccc"), None, alias="staging")
    assert not moved and alias_version("tpipe-promotion", "staging") == 1, message


def test_truncated_encode_shard_is_redone_not_trained_on(first_run, home):
    """An encode shard cut short after the run finished: the next run finds it changed (size and hash
    recorded in the step's marker), redoes encode, and the shards are again the first run's."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    encode_dir = first_run["results"]["encode"].out_dir
    before = json.loads((encode_dir / "_manifest.json").read_text())["splits"]
    shard = encode_dir / before["train"][0]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    again = run_pipeline(load_config("smoke"), quiet=True)
    ran = [n for n, r in again["results"].items() if not r.cached]
    assert ran == ["encode"], ran
    assert shard.read_bytes() == data
    assert json.loads((encode_dir / "_manifest.json").read_text())["splits"] == before
