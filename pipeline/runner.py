"""`tpipe run`: connect to Ray and MLflow, run the steps, print a summary.

Joining Ray is pipeline/ray_connect.py; Ctrl-C and SIGTERM are pipeline/interrupts.py; the
terminal lines are pipeline/output.py.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from data.checks import check_inputs
from data.io import is_remote, redact_text, redact_uri, write_atomic, write_json_atomic
from pipeline.artifacts import RemoteRoot
from pipeline.config import PipelineConfig
from pipeline.home import Home, describe_holder
from pipeline.interrupts import Interrupts, RunInterrupted, killed_on_interrupt
from pipeline.output import LOG_FILE, Printer, stderr_to_file
from pipeline import ray_connect
from pipeline.steps import STEPS
from pipeline.workflow import PipelineRun, Step, check_step_range, code_version


def artifact_root(cfg: PipelineConfig, home: Home) -> tuple[Path, RemoteRoot | None]:
    """The local folder steps write to, and the remote root it mirrors (or None).

    A remote root is checked here, before Ray starts, so a wrong bucket or missing credentials fail
    in a second with the URI in the message rather than after the first step.
    """
    root = cfg.artifact_root
    if not root:
        return home.artifacts, None
    if not is_remote(root):
        return Path(root.removeprefix("file://")).expanduser().resolve(), None
    try:
        remote = RemoteRoot(root)
        remote.check()
    except ValueError as e:
        raise SystemExit(str(e)) from e
    return home.artifacts, remote


def run_pipeline(cfg: PipelineConfig, *, quiet: bool = False, **kw: Any) -> dict[str, Any]:
    """Run (or continue) the pipeline for `cfg`; returns {"run_dir", "results", "summary"}.

    Every call is a new parent MLflow run: a re-run records itself and never touches an earlier
    run's tags, status or duration (a reused step is linked to the run that produced it).
    One run at a time per home (they would share state.json and the step folders): a second one
    is refused with the first one's pid and start time. Ctrl-C or SIGTERM ends it with
    RunInterrupted, once the step is recorded as `interrupted` and Ray is shut down.
    Keyword arguments: from_step, until_step, address, steps (see _run_pipeline).
    """
    # A refused argument is refused before the store, the lock, Ray or the run folder is touched.
    check_step_range([s.name for s in kw.get("steps") or STEPS], kw.get("from_step"), kw.get("until_step"))
    home = Home.resolve()
    interrupts = Interrupts()
    with home.run_lock() as stale, interrupts:
        if stale is not None:
            Printer(quiet).line(f"taking over the run lock of {describe_holder(stale)}, which ended without releasing it")
        try:
            return _run_pipeline(cfg, quiet=quiet, interrupts=interrupts, **kw)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            raise RunInterrupted(interrupts.step, "SIGINT") from None


def _run_pipeline(
    cfg: PipelineConfig,
    *,
    from_step: str | None = None,
    until_step: str | None = None,
    address: str | None = None,
    steps: list[Step] | None = None,
    quiet: bool = False,
    interrupts: Interrupts | None = None,
    log_to_file: bool = False,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """The pipeline itself, under the run lock (see run_pipeline).

    log_to_file: everything written to stderr while the steps run (Ray, MLflow, Lightning,
    warnings) goes to tpipe.log in the run folder instead (pipeline/output.py).
    parent_run_id: an MLflow run this run's own parent run is nested under (`tpipe sweep` passes its own).
    """
    check_inputs(cfg.data)  # input files: one line naming the file, before MLflow (seconds to import) or Ray
    printer = Printer(quiet)
    home = Home.resolve()
    cfg, tracking_uri = _connect_tracking(cfg, address, home)
    artifacts, remote = artifact_root(cfg, home)
    t0 = time.perf_counter()
    printer.line(f"mlflow: {tracking_uri}")
    ray = _LazyRay(address or cfg.ray.address, cfg.ray.num_cpus, interrupts, printer)
    version = code_version()
    run_key = cfg.fingerprint()
    run_dir = home.runs / f"{cfg.run_name}-{run_key[:10]}-{version[:6]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", redact_text(cfg.to_yaml()))  # also the artifact
    run = PipelineRun(
        cfg, steps or STEPS, artifacts, run_dir, on_event=printer.event, step_scope=ray.step_scope, version=version,
        remote=remote,
    )
    redirect = ExitStack()
    if log_to_file:
        log = redirect.enter_context(stderr_to_file(run_dir / LOG_FILE))
        printer.line(f"log: {log} (the libraries' output; tpipe --verbose shows it here)")
    try:
        results, parent = _run_in_parent_run(run, run_key, from_step, until_step, parent_run_id, redirect, t0)
    finally:
        ray.shutdown()
        redirect.close()
    summary = {
        "run_dir": str(run_dir),
        "mlflow_run_id": parent.info.run_id,
        "tracking_uri": tracking_uri,
        "steps": {n: {"cached": r.cached, "seconds": round(r.seconds, 1), "key": r.key} for n, r in results.items()},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    if "evaluate" in results:
        summary["evaluation"] = results["evaluate"].summary
    write_json_atomic(run_dir / "summary.json", summary, sort_keys=True)
    printer.summary(summary, home.ui_command(tracking_uri))
    return {"run_dir": run_dir, "results": results, "summary": summary}


def _connect_tracking(cfg: PipelineConfig, address: str | None, home: Home) -> tuple[PipelineConfig, str]:
    """Check the Ray address and the MLflow store, then set MLflow up; returns (cfg, bare tracking URI).

    A password in the tracking URI moves to MLflow's login variables here, and the URI goes on
    bare: in printed lines, summary.json, params, the saved config and the workers' config.
    """
    from pipeline.tracking import check_tracking_server, credentials_to_env, setup_mlflow

    tracking_uri = credentials_to_env(home.tracking_uri(cfg.mlflow.tracking_uri))
    if cfg.mlflow.tracking_uri:
        cfg = dataclasses.replace(cfg, mlflow=dataclasses.replace(cfg.mlflow, tracking_uri=redact_uri(cfg.mlflow.tracking_uri)))
    remote = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if remote and remote not in ("local", "auto") and tracking_uri.startswith("sqlite:") and not os.environ.get("TPIPE_ALLOW_LOCAL_STORE"):
        # Workers on other machines cannot write to this machine's sqlite file.
        raise SystemExit(
            f"MLflow store {tracking_uri} is a local sqlite file but Ray is at {remote}; "
            "set MLFLOW_TRACKING_URI (or mlflow.tracking_uri) to a tracking server, e.g. http://HOST:5000"
        )
    if remote and remote not in ("local", "auto"):
        ray_connect.check_ray_address(remote)  # a wrong address fails in seconds, naming it, before anything is written
    check_tracking_server(tracking_uri)  # before Ray starts or anything is written
    # (Ray Train workers get the bare tracking_uri in their config; a login from the URI reaches a
    # local Ray's workers in MLFLOW_TRACKING_USERNAME/PASSWORD, a cluster holds its own.)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    setup_mlflow(tracking_uri, cfg.mlflow.experiment, home)
    return cfg, tracking_uri


class _LazyRay:
    """The steps' scope: Ray is connected on the first step that actually runs, so a fully reused
    pipeline never pays Ray's start-up (most of a re-run's cost otherwise)."""

    def __init__(self, address: str | None, num_cpus: int | None, interrupts: Interrupts | None, printer: Printer):
        self.address, self.num_cpus, self.interrupts, self.printer = address, num_cpus, interrupts, printer
        self.started: bool | None = None  # None until the first step that runs asks for Ray

    def step_scope(self, step: Step, key: str, state_dir: Path):
        if self.interrupts is not None:
            self.interrupts.step = step.name
        if self.started is None:
            t = time.perf_counter()
            self.started = ray_connect.connect_ray(self.address, self.num_cpus)
            if self.interrupts is not None:
                self.interrupts.install()  # ray.init replaced our SIGTERM handler with its own
            self.printer.line(f"ray: {'started locally' if self.started else 'connected'} in {time.perf_counter() - t:.1f}s")
        return mlflow_step_run(step, key, state_dir)

    def shutdown(self) -> None:
        """Shut down a Ray this run started (a joined cluster stays up)."""
        if self.started:
            import ray

            ray.shutdown()


def _run_in_parent_run(run: PipelineRun, run_key: str, from_step: str | None, until_step: str | None,
                       parent_run_id: str | None, redirect: ExitStack, t0: float):
    """The steps inside this run's parent MLflow run, with its params, tags, artifacts and metrics."""
    import mlflow

    from pipeline.tracking import log_artifact_file, log_dict_params

    cfg, run_dir = run.cfg, run.run_dir
    if parent_run_id is not None:  # e.g. the sweep's run: this pipeline run becomes its child
        redirect.enter_context(mlflow.start_run(run_id=parent_run_id))
    with mlflow.start_run(run_name=parent_run_name(cfg.run_name, run_key), nested=parent_run_id is not None) as parent:
        write_atomic(run_dir / "mlflow_run_id", parent.info.run_id)  # the latest parent, for `tpipe status`
        log_dict_params(cfg.to_dict())
        mlflow.set_tags({"tpipe.pipeline_run": run_dir.name, "tpipe.code_version": run.version,
                         "tpipe.config_hash": run_key})
        log_artifact_file(run_dir / "config.yaml")
        with killed_on_interrupt():
            results = run.run(from_step, until_step)
        mlflow.set_tags(step_tags(results, parent.info.experiment_id))
        for step, files, folder in STEP_ARTIFACTS:
            if step in results:
                for f in files:
                    log_artifact_file(results[step].out_dir / f, folder)
        mlflow.log_metrics(parent_metrics(results, time.perf_counter() - t0))
    return results, parent


# The steps' files the parent run shows as its own artifacts: (step, files, artifact folder).
STEP_ARTIFACTS = (
    ("prepare", ("data_report.json", "lengths.png"), "data"),
    ("tokenizer", ("vocab.json", "merges.txt", "tokenizer.json"), "tokenizer"),
    ("evaluate", ("evaluation.json",), None),
)


def parent_run_name(run_name: str, config_hash: str) -> str:
    """`smoke-3f2a1c9e-20261129-223105-7c1d`: the config, its fingerprint, when, and four random hex
    digits (two runs can start in the same second); unique per `tpipe run`."""
    return f"{run_name}-{config_hash[:8]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def step_tags(results: dict[str, Any], experiment_id: str) -> dict[str, str]:
    """`tpipe.step.<name>`: 'done KEY' or 'cached KEY'; a reused step also names the run that made it.

    The producing run is the step run with the same step key (`tpipe.step_key`) that finished,
    found in the store; a reused output made before this store existed has none.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {}
    for name, r in results.items():
        tags[f"tpipe.step.{name}"] = f"{'cached' if r.cached else 'done'} {r.key}"
        if r.cached:
            made = client.search_runs(
                [experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                filter_string=f"tags.`tpipe.step` = '{name}' and tags.`tpipe.step_key` = '{r.key}' "
                              "and attributes.status = 'FINISHED'",
            )
            if made:
                tags[f"tpipe.step.{name}.run_id"] = made[0].info.run_id
    return tags


def parent_metrics(results: dict[str, Any], wall_seconds: float) -> dict[str, float]:
    """What the UI's run list shows for a pipeline: its total time and the candidate's scores."""
    metrics = {"pipeline/wall_seconds": wall_seconds}
    metrics |= {f"pipeline/{n}_seconds": r.seconds for n, r in results.items() if not r.cached}
    if "evaluate" in results:
        candidate = results["evaluate"].summary["candidate"]
        metrics |= {f"test/{k}": float(candidate[k]) for k in ("bleu", "chrf", "ter", "exact_match") if k in candidate}
    return metrics


@contextmanager
def mlflow_step_run(step: Step, key: str, state_dir: Path):
    """A nested MLflow run around one executed step, with its lineage as tags.

    Its id is kept in the step's state folder, so an interrupted step continues the same run when
    the pipeline is re-run (training's metrics carry on in one run).
    """
    import mlflow

    id_file = state_dir / "mlflow_run_id"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    with mlflow.start_run(
        run_id=run_id, run_name=None if run_id else step.name, nested=True, log_system_metrics=step.name == "train"
    ) as run:
        write_atomic(id_file, run.info.run_id)
        mlflow.set_tags({"tpipe.step": step.name, "tpipe.step_key": key, "tpipe.step_inputs": ",".join(step.inputs)})
        t0 = time.perf_counter()
        with killed_on_interrupt():
            yield run
        mlflow.log_metric(f"step/{step.name}_seconds", time.perf_counter() - t0)


