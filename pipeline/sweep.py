"""`tpipe sweep CONFIG --space SPACE.yaml`: a hyperparameter search on Ray Tune over any config key.

    space     SPACE.yaml maps config keys to `choice`, `uniform`, `loguniform` or `grid`; every value a
              trial can take is checked by the config's own checks before anything starts
    trials    drawn here, up front, from the sweep's seed: `--trials` draws per grid point (as Tune's
              num_samples), duplicates skipped; each trial is a full, valid PipelineConfig
    data      prepare, tokenizer, encode run here once per distinct data fingerprint (usually once);
              every trial finds them in the workflow's cache
    train     each trial runs the pipeline's own train step (Ray Train, the same train_func) inside a
              Tune trial; ASHA stops the trials whose validation loss lags; a killed trial resumes
              from its Ray Train checkpoint; a killed sweep continues with Tuner.restore
    best      the trial with the lowest final validation loss: its config is written as YAML that
              `tpipe run` accepts, and `tpipe run` of it (train reused) registers it as
              @candidate and evaluates it, so @champion moves only by evaluation

Drawing the trials here rather than letting Tune sample them is what lets the data steps run once
per fingerprint before any trial starts, and lets a bad value be refused before Ray starts.
The space is pipeline/sweep_space.py; the table of trials pipeline/sweep_table.py.
MLflow: one parent run for the sweep; a child run per trial (the trial's train step logs its
params and curves there); the registration and evaluation runs nest under the parent too.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.io import write_atomic, write_json_atomic
from pipeline.config import ConfigError, PipelineConfig
from pipeline.sweep_space import Dimension, draw_trials, load_space, with_value
from pipeline.sweep_table import LiveTable, TrialRow, collect, print_table

DATA_STEPS = ("prepare", "tokenizer", "encode")


# --------------------------------------------------------------------------------------------
# The sweep's state on disk: what a re-run needs to continue it


@dataclass
class SweepState:
    """sweep.json in the sweep's folder: written before Tune starts, read back by a re-run."""

    name: str
    base: dict[str, Any]  # the base config
    trials: list[dict[str, Any]]  # overrides per trial
    parent_run_id: str = ""
    trial_run_ids: list[str] = field(default_factory=list)
    data_keys: dict[str, dict[str, str]] = field(default_factory=dict)  # data fingerprint -> step keys

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / "sweep.json", self.__dict__, sort_keys=True)

    @classmethod
    def load(cls, folder: Path) -> SweepState | None:
        f = folder / "sweep.json"
        return cls(**json.loads(f.read_text(encoding="utf-8"))) if f.exists() else None


def sweep_name(base: PipelineConfig, dims: list[Dimension], n: int) -> str:
    """Same config, space and trial count -> same sweep (a re-run continues it)."""
    blob = json.dumps({"base": base.to_dict(), "space": [d.__dict__ for d in dims], "n": n}, sort_keys=True, default=list)
    return f"sweep-{base.run_name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def data_fingerprint(cfg: PipelineConfig) -> str:
    """What the data steps depend on (their config keys, as pipeline/steps.py declares them)."""
    from pipeline.steps import STEPS
    from pipeline.workflow import _get_path

    d = cfg.to_dict()
    keys = sorted({k for s in STEPS if s.name in DATA_STEPS for k in s.config_keys})
    return hashlib.sha256(json.dumps({k: _get_path(d, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# A trial (runs in a Tune trial actor)


def run_trial(config: dict[str, Any], plan: dict[str, Any]) -> None:
    """One trial: the pipeline up to `train`, with the data steps found in the cache.

    The train step's MLflow run is the trial's child run (its id is put where the step looks for
    the run of an interrupted attempt), so params and curves land in the trial's run. Ray Train
    reports each validation to Tune (pipeline/train.py adds Tune's callback inside a trial).
    """
    from pipeline.config import config_from_dict
    from pipeline.runner import mlflow_step_run
    from pipeline.steps import STEPS
    from pipeline.tracking import setup_mlflow
    from pipeline.workflow import PipelineRun

    i = config["trial"]
    cfg = config_from_dict(plan["configs"][i])
    setup_mlflow(plan["tracking_uri"], cfg.mlflow.experiment)

    def scope(step, key, state_dir):
        id_file = state_dir / "mlflow_run_id"
        if step.name == "train" and not id_file.exists():
            write_atomic(id_file, plan["trial_run_ids"][i])
        return mlflow_step_run(step, key, state_dir)

    run_dir = Path(plan["folder"]) / f"trial-{i:03d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", cfg.to_yaml())
    PipelineRun(cfg, STEPS, Path(plan["artifacts"]), run_dir, step_scope=scope).run(until_step="train")


# --------------------------------------------------------------------------------------------
# The driver


def _scheduler(cfg: PipelineConfig):
    """ASHA on validation loss; a rung every validation, the first after one."""
    from ray.tune.schedulers import ASHAScheduler

    validations = max(1, cfg.train.max_steps // cfg.train.val_every_steps)
    # Tune sees a report per validation plus the final-weights report (validations + 1 iterations).
    # ASHA stops a trial that reaches max_t at once, which would end the trial before its train
    # step writes the package and its completion marker; one iteration of room lets a trial that
    # trains to the end finish its step, so the best trial's pipeline reuses it.
    return ASHAScheduler(time_attr="training_iteration", max_t=validations + 2, grace_period=1, reduction_factor=2)


def concurrent_trials(cfg: PipelineConfig) -> int:
    """As many trials as the cluster's CPUs (or GPUs) hold at once, one Ray Train run each."""
    import ray

    res = ray.cluster_resources()
    t = cfg.train
    if t.use_gpu:
        return max(1, int(res.get("GPU", 0) // t.num_workers))
    return max(1, int(res.get("CPU", 1) // (t.num_workers * t.cpus_per_worker)))


def run_sweep(
    base: PipelineConfig,
    space_path: str | Path,
    *,
    trials: int = 4,
    address: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run (or continue) a sweep; returns {"folder", "rows", "best", "best_config", "pipeline"}."""
    from pipeline.home import Home
    from pipeline.ray_connect import connect_ray
    from pipeline.runner import artifact_root, run_pipeline
    from pipeline.tracking import check_tracking_server, setup_mlflow

    dims = load_space(space_path, base)  # refused here, before Ray or MLflow start
    if trials < 1:
        raise ConfigError(f"--trials {trials}: need at least 1")
    home = Home.resolve()
    tracking_uri = home.tracking_uri(base.mlflow.tracking_uri)
    check_tracking_server(tracking_uri)
    artifacts, remote = artifact_root(base, home)
    if remote is not None:
        raise ConfigError("artifact_root: tpipe sweep keeps step outputs on this machine; leave artifact_root empty")
    name = sweep_name(base, dims, trials)
    folder = home.runs / name
    folder.mkdir(parents=True, exist_ok=True)
    state = SweepState.load(folder)
    if state is None:
        state = SweepState(name, base.to_dict(), draw_trials(dims, trials, base.seed))
    configs = [with_value(base, t) for t in state.trials]
    say = (lambda *a: None) if quiet else (lambda text: print(text, flush=True))
    say(f"sweep {name}: {len(configs)} trials over {', '.join(d.key for d in dims)}  ({folder})")

    _create_runs(state, base, dims, setup_mlflow(tracking_uri, base.mlflow.experiment, home))
    state.save(folder)
    started = connect_ray(address or base.ray.address, base.ray.num_cpus)
    t0 = time.perf_counter()
    try:
        data_seconds = _run_data_steps(configs, state, folder, artifacts, say)
        state.save(folder)
        rows = [TrialRow(i, t) for i, t in enumerate(state.trials)]
        result_grid = _tune(base, configs, state, folder, artifacts, tracking_uri, rows, say)
        tune_seconds = time.perf_counter() - t0 - data_seconds
        collect(result_grid, rows, configs)
        print_table(rows, say, final=True)
        best, best_yaml = _record_outcome(rows, configs, state, folder, say)
        # The best trial through the ordinary pipeline: data and train reused, register + evaluate
        # run, nested under the sweep's run. @champion moves only if the evaluation says so.
        pipeline = run_pipeline(configs[best.index], address=address, quiet=quiet, parent_run_id=state.parent_run_id)
    finally:
        if started:
            import ray

            ray.shutdown()
    return {
        "folder": folder, "rows": rows, "best": best, "best_config": best_yaml, "pipeline": pipeline,
        "data_seconds": data_seconds, "tune_seconds": tune_seconds, "state": state,
    }


def _create_runs(state: SweepState, base: PipelineConfig, dims: list[Dimension], experiment_id: str) -> None:
    """The sweep's parent MLflow run and a child run per trial, once (a re-run finds their ids in sweep.json)."""
    import mlflow
    from mlflow import MlflowClient

    from pipeline.tracking import log_dict_params

    client = MlflowClient()
    if not state.parent_run_id:
        parent = client.create_run(experiment_id, run_name=state.name, tags={"tpipe.sweep": state.name})
        state.parent_run_id = parent.info.run_id
        with mlflow.start_run(run_id=state.parent_run_id):
            log_dict_params(base.to_dict())
            mlflow.log_dict({"space": [d.__dict__ for d in dims], "trials": state.trials}, "sweep/space.json")
    if not state.trial_run_ids:
        for i, t in enumerate(state.trials):
            run = client.create_run(experiment_id, run_name=f"{state.name}-trial-{i:03d}", tags={
                "mlflow.parentRunId": state.parent_run_id, "tpipe.sweep": state.name, "tpipe.sweep.trial": str(i)})
            for k, v in t.items():
                client.log_param(run.info.run_id, f"sweep.{k}", v)
            state.trial_run_ids.append(run.info.run_id)


def _run_data_steps(configs: list[PipelineConfig], state: SweepState, folder: Path, artifacts: Path, say) -> float:
    """The data steps, once per distinct data fingerprint, as nested runs of the sweep's run; their seconds."""
    import mlflow

    from pipeline.runner import mlflow_step_run
    from pipeline.steps import STEPS
    from pipeline.workflow import PipelineRun

    by_fingerprint: dict[str, PipelineConfig] = {}
    for c in configs:
        by_fingerprint.setdefault(data_fingerprint(c), c)
    data_seconds = 0.0
    with mlflow.start_run(run_id=state.parent_run_id):
        for fp, c in by_fingerprint.items():
            (folder / f"data-{fp}").mkdir(exist_ok=True)
            data_run = PipelineRun(c, STEPS, artifacts, folder / f"data-{fp}", step_scope=mlflow_step_run)
            results = data_run.run(until_step="encode")
            data_seconds += sum(r.seconds for r in results.values())
            state.data_keys[fp] = {n: r.key for n, r in results.items()}
            say(f"data {fp}: " + ", ".join(f"{n} {'reused' if r.cached else f'{r.seconds:.1f}s'}" for n, r in results.items()))
    return data_seconds


def _record_outcome(rows: list[TrialRow], configs: list[PipelineConfig], state: SweepState, folder: Path, say):
    """Mark each trial's run with its outcome, pick the finished trial with the lowest final validation
    loss, write its config as best.yaml and log it on the sweep's run; returns (best row, best.yaml)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    for r in rows:  # the trials' runs: stopped ones are marked, never left RUNNING
        run_id = state.trial_run_ids[r.index]
        client.set_tag(run_id, "tpipe.sweep.outcome", "finished" if r.finished else r.state.lower())
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FINISHED" if r.finished or r.state == "STOPPED" else "FAILED")
    done = [r for r in rows if r.finished and not math.isnan(r.last_val_loss)]
    if not done:
        raise RuntimeError(f"sweep {state.name}: no trial finished; see the trials' errors above and {folder}")
    best = min(done, key=lambda r: r.last_val_loss)
    best_yaml = folder / "best.yaml"
    write_atomic(best_yaml, configs[best.index].to_yaml())
    say(f"best: trial {best.index} {best.params}  val loss {best.last_val_loss:.4f}; config {best_yaml}")
    client.set_tag(state.parent_run_id, "tpipe.sweep.best_trial", str(best.index))
    with mlflow.start_run(run_id=state.parent_run_id):
        mlflow.log_metric("sweep/best_val_loss", best.last_val_loss)
        mlflow.log_artifact(str(best_yaml), "sweep")
        mlflow.log_dict([r.__dict__ for r in rows], "sweep/trials.json")
    return best, best_yaml


def _tune(base, configs, state, folder, artifacts, tracking_uri, rows, say):
    from ray import tune

    from pipeline.workflow import ray_storage

    plan = {
        "configs": [c.to_dict() for c in configs], "trial_run_ids": state.trial_run_ids, "folder": str(folder),
        "artifacts": str(artifacts), "tracking_uri": tracking_uri,
    }
    # The trial function only drives its Ray Train run (whose workers hold the CPUs): no CPU of its
    # own (a CPU each would leave no room for the workers). Tune wants some resource: a token of memory.
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), {"CPU": 0, "memory": 1 << 20})
    storage = ray_storage(Path(artifacts), None)
    path = f"{storage}/{state.name}"
    table = LiveTable(rows, say)
    run_config = tune.RunConfig(
        name=state.name, storage_path=storage, verbose=0, callbacks=[table],
        failure_config=tune.FailureConfig(max_failures=base.train.max_failures),
    )
    if tune.Tuner.can_restore(path):
        say(f"continuing the sweep from {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(list(range(len(configs))))},
            tune_config=tune.TuneConfig(
                metric="val_loss", mode="min", scheduler=_scheduler(base),
                max_concurrent_trials=concurrent_trials(base),
            ),
            run_config=run_config,
        )
    return tuner.fit()


