"""`tpipe sweep`: the search space and its checks (no Ray), then a 4-trial sweep of the smoke config on
real Ray Tune, Ray Train and MLflow, and a sweep whose driver is killed and re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pipeline_testlib import fresh_ray, kill_everything_of, tpipe_home

from pipeline.config import ConfigError, load_config
from pipeline.sweep import data_fingerprint
from pipeline.sweep_space import Dimension, draw_trials, load_space, with_value

REPO = Path(__file__).resolve().parents[2]
# The smoke config made smaller still: 1 Ray Train worker per trial (2 trials at once on 2 CPUs),
# 10 steps with a validation every 5, so ASHA has two rungs to cut at.
TINY = ["data.builtin_size=400", "train.num_workers=1", "train.max_steps=10", "train.val_every_steps=5",
        "train.log_every_steps=5", "eval.max_sentences=20"]
SPACE = "train.lr: {choice: [0.00001, 0.003]}\ntrain.warmup_steps: {grid: [2, 4]}\n"


def _space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text, encoding="utf-8")
    return p


# ---- the space, no Ray ----------------------------------------------------------------------


def test_space_reads_dotted_and_nested_keys(tmp_path):
    base = load_config("smoke")
    dims = load_space(_space(tmp_path, "train:\n  lr: {loguniform: [0.0001, 0.01]}\nmodel.dropout: {uniform: [0, 0.3]}\n"
                                       "train.warmup_steps: {uniform: [2, 9]}\nseed: {grid: [1, 2]}\n"), base)
    assert [(d.key, d.kind) for d in dims] == [("train.lr", "loguniform"), ("model.dropout", "uniform"),
                                               ("train.warmup_steps", "uniform"), ("seed", "grid")]
    trials = draw_trials(dims, 3, seed=5)
    assert len(trials) == 6 and trials == draw_trials(dims, 3, seed=5)  # 3 per grid point, reproducible
    assert all(1e-4 <= t["train.lr"] <= 1e-2 and isinstance(t["train.warmup_steps"], int) for t in trials)
    assert all(with_value(base, t).train.lr == t["train.lr"] for t in trials)


@pytest.mark.parametrize("text, message", [
    ("train.lrr: {choice: [1]}", "space.yaml train.lrr: unknown config key 'train.lrr'"),
    ("train.lr: {uniform: [-1, 0.1]}", "space.yaml train.lr: train.lr: -1.0 is below the minimum 0.0"),
    ("train.schedule: {choice: [cosine, nosuch]}", "train.schedule: 'nosuch' is not allowed"),
    ("model.dropout: {uniform: [0.1, 0.95]}", "model.dropout: 0.95 is above the maximum 0.9"),
    ("train.lr: {loguniform: [0, 0.1]}", "train.lr: loguniform needs low > 0"),
    ("train.lr: {uniform: [0.1, 0.01]}", "train.lr: uniform needs low < high"),
    ("train.lr: {normal: [0, 1]}", "train.lr: expected one of {choice, uniform, loguniform, grid}"),
    ("train: {choice: [1]}", "'train' is a section, not a value"),
    ("train.max_steps: {grid: [10, ten]}", "train.max_steps: expected int, got 'ten'"),
])
def test_a_bad_space_is_refused_with_the_key_path(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        load_space(_space(tmp_path, text), load_config("smoke"))


def test_a_small_space_gives_fewer_trials_never_repeated():
    dims = [Dimension("train.lr", "choice", (0.1, 0.2))]
    assert sorted(t["train.lr"] for t in draw_trials(dims, 4, seed=0)) == [0.1, 0.2]


def test_only_data_keys_change_the_data_fingerprint():
    base = load_config("smoke")
    assert data_fingerprint(with_value(base, {"train.lr": 0.1})) == data_fingerprint(base)
    assert data_fingerprint(with_value(base, {"model.d_model": 64})) == data_fingerprint(base)
    assert data_fingerprint(with_value(base, {"tokenizer.vocab_size": 400})) != data_fingerprint(base)


def test_cli_refuses_a_bad_space_in_one_line_before_ray(tmp_path):
    env = {**os.environ, "TPIPE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "sweep", "smoke", "--space", str(_space(tmp_path, "train.lr: {uniform: [-1, 1]}"))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"tpipe: config error: {tmp_path / 'space.yaml'} train.lr: train.lr: -1.0 is below the minimum 0.0; allowed: >= 0.0"]
    assert not (tmp_path / "home" / "runs").exists()  # nothing started


# ---- a real sweep ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from pipeline.sweep import run_sweep

    root = tmp_path_factory.mktemp("sweep")
    space = _space(root, SPACE)
    with tpipe_home(root / "home") as home, fresh_ray(num_cpus=2, dashboard_host="127.0.0.1"):
        t0 = time.perf_counter()
        out = run_sweep(load_config("smoke", TINY), space, trials=2, quiet=False)
        out["seconds"] = time.perf_counter() - t0
        out["home"] = home
        yield out


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.heavy
def test_sweep_finishes_stops_the_laggards_and_reuses_the_data_steps(sweep):
    rows = sweep["rows"]
    assert len(rows) == 4 and all(r.state in ("FINISHED", "STOPPED") for r in rows), rows
    assert any(r.state == "STOPPED" and r.step < 10 for r in rows), "ASHA stopped no trial"
    assert all(r.step == 10 for r in rows if r.state == "FINISHED")
    folder = sweep["folder"]
    (data_state,) = [json.loads(p.read_text()) for p in folder.glob("data-*/state.json")]
    assert {n: s["state"] for n, s in data_state["steps"].items()} == {"prepare": "done", "tokenizer": "done", "encode": "done"}
    trial_states = sorted(folder.glob("trial-*/state.json"))
    assert len(trial_states) == 4
    for p in trial_states:  # every trial found the data steps' outputs: the same keys, reused
        steps = json.loads(p.read_text())["steps"]
        assert {n: steps[n]["state"] for n in ("prepare", "tokenizer", "encode")} == dict.fromkeys(("prepare", "tokenizer", "encode"), "cached")
        assert all(steps[n]["key"] == data_state["steps"][n]["key"] for n in ("prepare", "tokenizer", "encode"))
    print(f"sweep {sweep['seconds']:.0f}s, data steps {sweep['data_seconds']:.1f}s once")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.heavy
def test_sweep_is_tracked_and_its_best_trial_registered_and_evaluated(sweep):
    from mlflow import MlflowClient

    state, best = sweep["state"], sweep["best"]
    client = MlflowClient()
    children = client.search_runs([client.get_run(state.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{state.parent_run_id}'")
    trial_runs = {r.info.run_id: r for r in children if "tpipe.sweep.trial" in r.data.tags}
    assert set(trial_runs) == set(state.trial_run_ids)
    for i, run_id in enumerate(state.trial_run_ids):  # params and curves in each trial's run
        run = trial_runs[run_id]
        assert float(run.data.params["sweep.train.lr"]) == state.trials[i]["train.lr"]
        assert run.data.params["train.max_steps"] == "10"
        assert client.get_metric_history(run_id, "val/loss")
    assert {r.data.tags.get("tpipe.step") for r in children} >= {"prepare", "tokenizer", "encode"}  # the data steps, once
    # the best trial's pipeline is a run of its own under the sweep's, with its register and evaluate steps
    pipeline_run_id = sweep["pipeline"]["summary"]["mlflow_run_id"]
    assert client.get_run(pipeline_run_id).data.tags["mlflow.parentRunId"] == state.parent_run_id
    steps = client.search_runs([client.get_run(state.parent_run_id).info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{pipeline_run_id}'")
    assert {r.data.tags.get("tpipe.step") for r in steps} >= {"register", "evaluate"}
    candidate = client.get_model_version_by_alias("tpipe-smoke", "candidate")
    # the best trial's own training made the version (registered in the register step's run, tagged
    # with the training's run: registration never reopens a finished run)
    assert candidate.tags["tpipe.train_run_id"] == state.trial_run_ids[best.index]
    assert "eval.bleu" in candidate.tags  # evaluated like any pipeline run
    assert client.get_model_version_by_alias("tpipe-smoke", "champion").version == candidate.version  # first: promoted
    # the best config is a config `tpipe run` accepts, and it names the trial's training
    again = load_config(str(sweep["best_config"]))
    assert again.to_dict() == with_value(load_config("smoke", TINY), state.trials[best.index]).to_dict()
    assert all(r.cached for n, r in sweep["pipeline"]["results"].items() if n in ("prepare", "tokenizer", "encode", "train"))


# ---- a killed driver ---------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.heavy
def test_a_killed_sweep_driver_is_continued_by_a_rerun(tmp_path):
    """Kill the driver (and its Ray) once a trial has a Ray Train checkpoint; the same command again
    restores the Tune experiment and finishes the sweep."""
    import threading

    home = tmp_path / "home"
    space = _space(tmp_path, "train.lr: {choice: [0.003]}\ntrain.warmup_steps: {grid: [2, 4]}\n")
    env = {**os.environ, "TPIPE_HOME": str(home), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(k, None)
    argv = [sys.executable, "-m", "pipeline.cli", "sweep", "smoke", *TINY, "ray.num_cpus=2", "--space", str(space), "--trials", "1"]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if list(home.glob("ray_results/train-*/checkpoint_*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "".join(seen)[-3000:]
    kill_everything_of(home)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "continuing the sweep" in rerun.stdout
    assert "best config:" in rerun.stdout
    (folder,) = home.glob("runs/sweep-*")
    assert len(list(folder.glob("trial-*/state.json"))) == 2
