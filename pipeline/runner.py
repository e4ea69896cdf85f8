"""`tpipe run`: connect to Ray and MLflow, run the steps, print a summary."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.artifacts import RemoteRoot, is_remote
from pipeline.config import PipelineConfig
from pipeline.home import Home
from pipeline.steps import STEPS
from pipeline.workflow import PipelineRun, Step, code_version


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


def connect_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        return True
    ray.init(
        address="local",  # always a Ray of our own: never a stale or foreign `ray start` cluster on this machine
        num_cpus=num_cpus,
        logging_level=logging.WARNING,
        log_to_driver=True,
        dashboard_host="127.0.0.1",  # Ray Train's state queries need the dashboard; never on 0.0.0.0
    )
    return True


def run_pipeline(
    cfg: PipelineConfig,
    *,
    from_step: str | None = None,
    until_step: str | None = None,
    address: str | None = None,
    steps: list[Step] | None = None,
    quiet: bool = False,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) the pipeline for `cfg`; returns {"run_dir", "results", "summary"}.

    `parent_run_id`: an existing MLflow run to run under (`tpipe sweep` passes its own) instead of
    a new pipeline run, on the first run of this config.
    """
    import mlflow

    from pipeline.tracking import check_tracking_server, log_artifact_file, log_dict_params, setup_mlflow
    from pipeline.translate import write_json

    printer = _Printer(quiet)
    home = Home.resolve()
    tracking_uri = home.tracking_uri(cfg.mlflow.tracking_uri)
    remote = address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if remote and remote not in ("local", "auto") and tracking_uri.startswith("sqlite:") and not os.environ.get("TPIPE_ALLOW_LOCAL_STORE"):
        # Workers on other machines cannot write to this machine's sqlite file.
        raise SystemExit(
            f"MLflow store {tracking_uri} is a local sqlite file but Ray is at {remote}; "
            "set MLFLOW_TRACKING_URI (or mlflow.tracking_uri) to a tracking server, e.g. http://HOST:5000"
        )
    check_tracking_server(tracking_uri)  # before Ray starts or anything is written
    artifacts, remote = artifact_root(cfg, home)
    # (Ray Train workers get tracking_uri explicitly in their config, not through the environment.)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    setup_mlflow(tracking_uri, cfg.mlflow.experiment, home)
    mlflow.set_experiment(cfg.mlflow.experiment)

    t0 = time.perf_counter()
    printer.line(f"mlflow: {tracking_uri}")
    ray_started: list[bool] = []  # empty until the first step that runs asks for Ray

    def step_scope(step: Step, key: str, state_dir: Path):
        # Ray is connected on the first step that actually runs: a fully reused pipeline never
        # pays Ray's start-up (most of a re-run's cost otherwise).
        if not ray_started:
            t = time.perf_counter()
            ray_started.append(connect_ray(address or cfg.ray.address, cfg.ray.num_cpus))
            printer.line(f"ray: {'started locally' if ray_started[0] else 'connected'} in {time.perf_counter() - t:.1f}s")
        return mlflow_step_run(step, key, state_dir)

    version = code_version()
    run_key = cfg.fingerprint()
    run_dir = home.runs / f"{cfg.run_name}-{run_key[:10]}-{version[:6]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")

    parent_file = run_dir / "mlflow_run_id"
    if parent_run_id is not None and not parent_file.exists():
        parent_file.write_text(parent_run_id)
    parent_id = parent_file.read_text().strip() if parent_file.exists() else None
    if parent_id is not None:
        try:
            mlflow.get_run(parent_id)
        except Exception:
            parent_id = None  # the store was reset; start a new parent run
    run = PipelineRun(
        cfg, steps or STEPS, artifacts, run_dir, on_event=printer.event, step_scope=step_scope, version=version,
        remote=remote,
    )
    try:
        with mlflow.start_run(run_id=parent_id, run_name=None if parent_id else f"{cfg.run_name}-pipeline") as parent:
            parent_file.write_text(parent.info.run_id)
            if parent_id is None:
                log_dict_params(cfg.to_dict())
                mlflow.set_tags({"tpipe.pipeline_run": run_dir.name, "tpipe.code_version": version})
            log_artifact_file(run_dir / "config.yaml")
            results = run.run(from_step, until_step)
            for name, r in results.items():
                mlflow.set_tag(f"tpipe.step.{name}", f"{'cached' if r.cached else 'done'} {r.key}")
            if "prepare" in results:
                for f in ("data_report.json", "lengths.png"):
                    log_artifact_file(results["prepare"].out_dir / f, "data")
            if "tokenizer" in results:
                for f in ("vocab.json", "merges.txt", "tokenizer.json"):
                    log_artifact_file(results["tokenizer"].out_dir / f, "tokenizer")
            if "evaluate" in results:
                log_artifact_file(results["evaluate"].out_dir / "evaluation.json")
    finally:
        if ray_started and ray_started[0]:
            import ray

            ray.shutdown()
    summary = {
        "run_dir": str(run_dir),
        "mlflow_run_id": parent_file.read_text().strip(),
        "tracking_uri": tracking_uri,
        "steps": {n: {"cached": r.cached, "seconds": round(r.seconds, 1), "key": r.key} for n, r in results.items()},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    if "evaluate" in results:
        summary["evaluation"] = results["evaluate"].summary
    write_json(run_dir / "summary.json", summary)
    printer.summary(summary, home)
    return {"run_dir": run_dir, "results": results, "summary": summary}


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
        id_file.write_text(run.info.run_id)
        mlflow.set_tags({"tpipe.step": step.name, "tpipe.step_key": key, "tpipe.step_inputs": ",".join(step.inputs)})
        t0 = time.perf_counter()
        yield run
        mlflow.log_metric(f"step/{step.name}_seconds", time.perf_counter() - t0)


class _Printer:
    """Terminal progress: which step runs, how long each took, and a closing table."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=False, quiet=quiet, highlight=False)

    def line(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")

    def event(self, event: str, step: Step, info: dict[str, Any]) -> None:
        if event == "start":
            self.console.print(f"[bold cyan]▶ {step.name}[/bold cyan]  {step.description}  [dim]({info['key']})[/dim]")
        elif event == "cached":
            self.console.print(f"[green]✓ {step.name}[/green]  reused [dim]{info['out_dir']}[/dim]")
        elif event == "done":
            self.console.print(f"[green]✓ {step.name}[/green]  {info['seconds']:.1f}s  [dim]{_short(info['summary'])}[/dim]")

    def summary(self, s: dict[str, Any], home: Home) -> None:
        from rich.table import Table

        table = Table(title="tpipe run", show_header=True)
        table.add_column("step")
        table.add_column("state")
        table.add_column("seconds", justify="right")
        for name, st in s["steps"].items():
            table.add_row(name, "reused" if st["cached"] else "ran", f"{st['seconds']:.1f}")
        self.console.print(table)
        ev = s.get("evaluation")
        if ev:
            t = Table(title=f"test set ({ev['n_sentences']} sentences)")
            for col in ("", "BLEU", "chrF", "TER", "exact match %"):
                t.add_column(col, justify="right")
            for label, r in (("candidate " + ev["model"], ev["candidate"]), ("@champion", ev["champion"]), ("copy source (baseline)", ev["baseline_copy"])):
                t.add_row(label, f"{r['bleu']:.1f}", f"{r['chrf']:.1f}", f"{r['ter']:.1f}", f"{r['exact_match']:.1f}")
            self.console.print(t)
            self.console.print(f"promotion: {ev['promotion']}")
            self.console.print(f"[dim]sacreBLEU {ev['signature']['bleu']}[/dim]")
        self.console.print(f"total {s['wall_seconds']:.1f}s; run folder {s['run_dir']}")
        self.console.print(f"open the MLflow UI:  [bold]tpipe ui[/bold]   (or: {home.ui_command(s['tracking_uri'])})")


def _short(summary: dict[str, Any]) -> str:
    text = json.dumps({k: v for k, v in summary.items() if k not in ("samples", "signature")}, ensure_ascii=False)
    return text if len(text) < 160 else text[:157] + "..."
