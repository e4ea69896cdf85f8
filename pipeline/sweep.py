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
MLflow: one parent run for the sweep; a child run per trial (the trial's train step logs its
params and curves there); the registration and evaluation runs nest under the parent too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.io import write_json_atomic
from pipeline.config import ConfigError, PipelineConfig

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "grid")
DATA_STEPS = ("prepare", "tokenizer", "encode")


# --------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class Dimension:
    """One swept key: `train.lr: {loguniform: [1e-4, 1e-2]}` -> Dimension("train.lr", "loguniform", (1e-4, 1e-2))."""

    key: str
    kind: str
    values: tuple[Any, ...]  # the choices / grid points, or (low, high)
    integer: bool = False  # the key holds an int: uniform draws are rounded

    def draw(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.values)
        low, high = self.values
        if self.kind == "uniform":
            x = rng.uniform(low, high)
        else:
            x = math.exp(rng.uniform(math.log(low), math.log(high)))
        return round(x) if self.integer else x


def load_space(path: str | Path, base: PipelineConfig) -> list[Dimension]:
    """Read SPACE.yaml and check every value a trial can take against the config's own checks.

    Keys are dotted (`train.lr:`) or nested (`train: {lr: ...}`). A wrong key, an unknown
    distribution or an out-of-range value is a ConfigError naming the space file and the key path.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"search space {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: expected a mapping of config keys to distributions, e.g. 'train.lr: {{loguniform: [1e-4, 1e-2]}}'")
    defaults = base.to_dict()
    dims = [_dimension(p, key, spec, defaults) for key, spec in _flatten(raw, defaults)]
    for d in dims:
        for value in d.values:  # every choice and grid point; a range's two ends
            _check_value(p, base, d.key, value)
    return dims


def _flatten(raw: dict[str, Any], sections: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """{'train': {'lr': SPEC}} -> [('train.lr', SPEC)]: a mapping under a config section is read as
    more keys, any other mapping as a distribution."""
    out = []
    for k, v in raw.items():
        key, node = f"{prefix}{k}", sections.get(k) if isinstance(sections, dict) else None
        is_spec = isinstance(v, dict) and len(v) == 1 and next(iter(v)) in DISTRIBUTIONS
        if isinstance(v, dict) and isinstance(node, dict) and not is_spec:
            out += _flatten(v, node, key + ".")
        else:
            out.append((key, v))
    return out


def _dimension(path: Path, key: str, spec: Any, defaults: dict[str, Any]) -> Dimension:
    where = f"{path} {key}"
    node: Any = defaults
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            allowed = ", ".join(node) if isinstance(node, dict) else "none (it is a value)"
            raise ConfigError(f"{where}: unknown config key '{key}'; allowed at '{part}': {allowed}")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"{where}: '{key}' is a section, not a value; sweep one of its keys")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected one of {{{', '.join(DISTRIBUTIONS)}}}: [...], got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} takes a non-empty list, got {values!r}")
    integer = isinstance(node, int) and not isinstance(node, bool)
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{where}: {kind} takes [low, high] numbers, got {values!r}")
        low, high = values
        if not low < high:
            raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
        if not integer:
            values = [float(low), float(high)]
    return Dimension(key, kind, tuple(values), integer)


def _check_value(path: Path, base: PipelineConfig, key: str, value: Any) -> None:
    try:
        with_value(base, {key: value})
    except ConfigError as e:
        raise ConfigError(f"{path} {key}: {e}") from None


def with_value(base: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    """`base` with dotted keys set, through the same checks as a config file."""
    from pipeline.config import config_from_dict

    raw = base.to_dict()
    for key, value in values.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config_from_dict(raw)


def draw_trials(dims: list[Dimension], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` draws per grid point (as Tune's num_samples), in a fixed order; duplicates skipped.

    >>> dims = [Dimension("train.lr", "choice", (0.1, 0.2)), Dimension("seed", "grid", (1, 2))]
    >>> len(draw_trials(dims, 2, seed=0))
    4
    """
    rng = random.Random(seed)
    grid = [d for d in dims if d.kind == "grid"]
    drawn = [d for d in dims if d.kind != "grid"]
    trials: list[dict[str, Any]] = []
    for point in itertools.product(*(d.values for d in grid)) if grid else [()]:
        fixed = {d.key: v for d, v in zip(grid, point)}
        seen: list[dict[str, Any]] = []
        for _ in range(n * 20):  # a small discrete space runs out: fewer trials, never repeated ones
            if len(seen) == n:
                break
            t = fixed | {d.key: d.draw(rng) for d in drawn}
            if t not in seen:
                seen.append(t)
        trials += seen
    return trials


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
            id_file.write_text(plan["trial_run_ids"][i])
        return mlflow_step_run(step, key, state_dir)

    run_dir = Path(plan["folder"]) / f"trial-{i:03d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    PipelineRun(cfg, STEPS, Path(plan["artifacts"]), run_dir, step_scope=scope).run(until_step="train")


# --------------------------------------------------------------------------------------------
# The driver


@dataclass
class TrialRow:
    """One line of the live table."""

    index: int
    params: dict[str, Any]
    state: str = "PENDING"
    best_val_loss: float = float("nan")
    last_val_loss: float = float("nan")
    step: int = 0
    finished: bool = False  # trained to max_steps (not stopped early)


def _scheduler(cfg: PipelineConfig):
    """ASHA on validation loss; a rung every validation, the first after one."""
    from ray.tune.schedulers import ASHAScheduler

    validations = max(1, cfg.train.max_steps // cfg.train.val_every_steps)
    return ASHAScheduler(time_attr="training_iteration", max_t=validations + 1, grace_period=1, reduction_factor=2)


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
    import mlflow
    from mlflow import MlflowClient

    from pipeline.home import Home
    from pipeline.ray_connect import connect_ray
    from pipeline.runner import artifact_root, mlflow_step_run, run_pipeline
    from pipeline.steps import STEPS
    from pipeline.tracking import check_tracking_server, log_dict_params, setup_mlflow
    from pipeline.workflow import PipelineRun

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

    experiment_id = setup_mlflow(tracking_uri, base.mlflow.experiment, home)
    client = MlflowClient()
    if not state.parent_run_id:
        parent = client.create_run(experiment_id, run_name=name, tags={"tpipe.sweep": name})
        state.parent_run_id = parent.info.run_id
        with mlflow.start_run(run_id=state.parent_run_id):
            log_dict_params(base.to_dict())
            mlflow.log_dict({"space": [d.__dict__ for d in dims], "trials": state.trials}, "sweep/space.json")
    if not state.trial_run_ids:
        for i, t in enumerate(state.trials):
            run = client.create_run(experiment_id, run_name=f"{name}-trial-{i:03d}", tags={
                "mlflow.parentRunId": state.parent_run_id, "tpipe.sweep": name, "tpipe.sweep.trial": str(i)})
            for k, v in t.items():
                client.log_param(run.info.run_id, f"sweep.{k}", v)
            state.trial_run_ids.append(run.info.run_id)
    state.save(folder)

    started = connect_ray(address or base.ray.address, base.ray.num_cpus)
    t0 = time.perf_counter()
    try:
        # The data steps, once per distinct data fingerprint, as nested runs of the sweep's run.
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
        state.save(folder)

        rows = [TrialRow(i, t) for i, t in enumerate(state.trials)]
        result_grid = _tune(base, configs, state, folder, artifacts, tracking_uri, rows, say)
        tune_seconds = time.perf_counter() - t0 - data_seconds
        _collect(result_grid, rows, configs)
        _print_table(rows, say, final=True)
        for r in rows:  # the trials' runs: stopped ones are marked, never left RUNNING
            run_id = state.trial_run_ids[r.index]
            client.set_tag(run_id, "tpipe.sweep.outcome", "finished" if r.finished else r.state.lower())
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FINISHED" if r.finished or r.state == "STOPPED" else "FAILED")
        done = [r for r in rows if r.finished and not math.isnan(r.last_val_loss)]
        if not done:
            raise RuntimeError(f"sweep {name}: no trial finished; see the trials' errors above and {folder}")
        best = min(done, key=lambda r: r.last_val_loss)
        best_cfg = configs[best.index]
        best_yaml = folder / "best.yaml"
        best_yaml.write_text(best_cfg.to_yaml(), encoding="utf-8")
        say(f"best: trial {best.index} {best.params}  val loss {best.last_val_loss:.4f}; config {best_yaml}")
        client.set_tag(state.parent_run_id, "tpipe.sweep.best_trial", str(best.index))
        with mlflow.start_run(run_id=state.parent_run_id):
            mlflow.log_metric("sweep/best_val_loss", best.last_val_loss)
            mlflow.log_artifact(str(best_yaml), "sweep")
            mlflow.log_dict([r.__dict__ for r in rows], "sweep/trials.json")
        # The best trial through the ordinary pipeline: data and train reused, register + evaluate
        # run, nested under the sweep's run. @champion moves only if the evaluation says so.
        pipeline = run_pipeline(best_cfg, address=address, quiet=quiet, parent_run_id=state.parent_run_id)
    finally:
        if started:
            import ray

            ray.shutdown()
    return {
        "folder": folder, "rows": rows, "best": best, "best_config": best_yaml, "pipeline": pipeline,
        "data_seconds": data_seconds, "tune_seconds": tune_seconds, "state": state,
    }


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
    table = _LiveTable(rows, say)
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


def _collect(result_grid, rows: list[TrialRow], configs: list[PipelineConfig]) -> None:
    """Final states from Tune's results: finished, stopped early (by ASHA) or errored."""
    for result in result_grid:
        r = rows[result.config["trial"]]
        df = result.metrics_dataframe
        if df is not None and "val_loss" in df:
            losses = [float(x) for x in df["val_loss"].tolist() if x == x]
            if losses:
                r.best_val_loss, r.last_val_loss = min(losses), losses[-1]
        metrics = result.metrics or {}
        r.step = int(metrics.get("step", r.step) or 0)
        r.finished = bool(metrics.get("final")) and result.error is None
        r.state = "ERROR" if result.error is not None else "FINISHED" if r.finished else "STOPPED"


def _callback_base():
    from ray.tune import Callback

    return Callback


class _LiveTable(_callback_base()):
    """Tune callback on the driver: a table of the trials each time one reports or changes state."""

    def __init__(self, rows: list[TrialRow], say):
        self.rows, self.say, self.last = rows, say, 0.0

    def _row(self, trial) -> TrialRow:
        return self.rows[trial.config["trial"]]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial).state = "RUNNING"
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        r = self._row(trial)
        r.state = "RUNNING"
        loss = result.get("val_loss")
        if loss is not None:
            r.last_val_loss = float(loss)
            r.best_val_loss = min(r.best_val_loss, float(loss)) if r.best_val_loss == r.best_val_loss else float(loss)
        r.step = int(result.get("step", r.step) or r.step)
        r.finished = bool(result.get("final"))
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = self._row(trial)
        r.state = "FINISHED" if r.finished else "STOPPED"
        self._show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial).state = "ERROR"
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self.last > 5.0:
            self.last = now
            _print_table(self.rows, self.say)


def _print_table(rows: list[TrialRow], say, final: bool = False) -> None:
    keys = sorted({k for r in rows for k in r.params})
    head = f"{'trial':>5}  {'state':9s} " + " ".join(f"{k:>14s}" for k in keys) + f" {'best val':>9s} {'last val':>9s} {'steps':>6s}"
    lines = [("sweep results" if final else "trials"), head]
    for r in rows:
        params = " ".join(f"{_fmt(r.params.get(k)):>14s}" for k in keys)
        lines.append(f"{r.index:>5}  {r.state:9s} {params} {r.best_val_loss:9.4f} {r.last_val_loss:9.4f} {r.step:>6d}")
    say("\n".join(lines))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
