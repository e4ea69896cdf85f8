"""`tpipe run`: connect to Ray and MLflow, run the steps, print a summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from data.checks import check_inputs
from data.errors import UserError
from data.io import is_remote, redact_text, redact_uri, write_atomic, write_json_atomic
from pipeline.artifacts import RemoteRoot
from pipeline.config import PipelineConfig
from pipeline.home import Home, describe_holder
from pipeline.output import LOG_FILE, say_on_terminal, stderr_to_file
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


class RayUnreachable(UserError, RuntimeError):
    """The Ray cluster named by --address, ray.address or RAY_ADDRESS does not answer."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped `tpipe run`; finished steps are kept and a re-run continues."""

    def __init__(self, step: str | None, signal_name: str):
        super().__init__(step, signal_name)
        self.step, self.signal_name = step, signal_name


RAY_CONNECT_TIMEOUT_S = 30.0  # a cluster that has not answered by then is not coming


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds with the address in the message when nothing listens there.

    ray.init retries an unreachable GCS for minutes inside Ray's C++ client, where neither Ctrl-C
    nor SIGTERM gets through; a plain TCP connect with a deadline answers first.
    '127.0.0.1:1' -> RayUnreachable; 'ray://head:10001' probes head:10001; 'auto' and 'local' pass.
    """
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnreachable(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379 or ray://head:10001)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = f"no answer within {timeout_s:.0f} s" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise RayUnreachable(
            f"cannot reach the Ray cluster at {address} ({reason}); start it "
            "(ray start --head) or fix --address / ray.address / RAY_ADDRESS"
        ) from None


@contextmanager
def _exit_unless_done_within(timeout_s: float, what: str):
    """End the process with one line if the block is not done in `timeout_s`, or at once on a signal.

    For ray.init on an address that accepts connections but never answers: its wait runs in Ray's
    C++ client, where Python's signal handlers get no turn (SIGTERM and Ctrl-C would wait minutes).
    The kernel still writes each signal to the wakeup fd, which a watching thread reads.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import select

    r, w = os.pipe()
    os.set_blocking(w, False)
    previous = signal.set_wakeup_fd(w)
    done = threading.Event()

    def watch() -> None:
        ready, _, _ = select.select([r], [], [], timeout_s)
        if done.is_set():
            return
        if ready:
            signum = os.read(r, 1)[0]
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = f"signal {signum}"
            line, code = f"tpipe: interrupted ({name}) while connecting to the {what}", 128 + signum
        else:
            line, code = f"tpipe: {what} did not answer within {timeout_s:.0f} s; check the address and that the cluster is up", 2
        say_on_terminal(line)  # not into tpipe.log: the user must see why the run ended
        os._exit(code)  # the lock and sockets go with the process; nothing else is half-written here

    watcher = threading.Thread(target=watch, name="tpipe-connect-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        os.write(w, b"\0")  # wake the watcher, which sees `done` and returns
        watcher.join(timeout=5)
        os.close(r)
        os.close(w)


def connect_ray(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local Ray. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:  # (run_pipeline has probed it: check_ray_address)
        try:
            with _exit_unless_done_within(RAY_CONNECT_TIMEOUT_S, f"Ray cluster at {address}"):
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except (ConnectionError, TimeoutError, RuntimeError) as e:
            raise RayUnreachable(f"Ray cluster at {address}: {redact_text(str(e).splitlines()[0][:300])}") from None
        return True
    ray.init(
        address="local",  # always a Ray of our own: never a stale or foreign `ray start` cluster on this machine
        num_cpus=num_cpus,
        logging_level=logging.WARNING,
        log_to_driver=True,
        dashboard_host="127.0.0.1",  # Ray Train's state queries need the dashboard; never on 0.0.0.0
    )
    return True


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
    interrupts = _Interrupts()
    with home.run_lock() as stale, interrupts:
        if stale is not None:
            _Printer(quiet).line(f"taking over the run lock of {describe_holder(stale)}, which ended without releasing it")
        try:
            return _run_pipeline(cfg, quiet=quiet, interrupts=interrupts, **kw)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            raise RunInterrupted(interrupts.step, "SIGINT") from None


class _Interrupts:
    """SIGTERM raises RunInterrupted as Ctrl-C raises KeyboardInterrupt, while a run is on.

    Both then unwind the same way: the step is recorded as interrupted, its MLflow run is marked
    KILLED, Ray (and with a local Ray its Train workers) is shut down. `step` names the running step
    for the message. ray.init installs a SIGTERM handler of its own, so `install` runs again after it.
    """

    def __init__(self) -> None:
        self.step: str | None = None
        self._previous: Any = None

    def _on_sigterm(self, signum, frame) -> None:
        raise RunInterrupted(self.step, "SIGTERM")

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def __enter__(self) -> "_Interrupts":
        self._previous = signal.getsignal(signal.SIGTERM)
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is threading.main_thread() and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _run_pipeline(
    cfg: PipelineConfig,
    *,
    from_step: str | None = None,
    until_step: str | None = None,
    address: str | None = None,
    steps: list[Step] | None = None,
    quiet: bool = False,
    interrupts: _Interrupts | None = None,
    log_to_file: bool = False,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """The pipeline itself, under the run lock (see run_pipeline).

    log_to_file: everything written to stderr while the steps run (Ray, MLflow, Lightning,
    warnings) goes to tpipe.log in the run folder instead (pipeline/output.py).
    parent_run_id: an MLflow run this run's own parent run is nested under (`tpipe sweep` passes its own).
    """
    check_inputs(cfg.data)  # input files: one line naming the file, before MLflow (seconds to import) or Ray
    import mlflow

    from pipeline.tracking import (
        check_tracking_server, credentials_to_env, log_artifact_file, log_dict_params, setup_mlflow,
    )

    printer = _Printer(quiet)
    home = Home.resolve()
    # A password in the tracking URI moves to MLflow's login variables here, and the URI goes on
    # bare: in printed lines, summary.json, params, the saved config and the workers' config.
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
        check_ray_address(remote)  # a wrong address fails in seconds, naming it, before anything is written
    check_tracking_server(tracking_uri)  # before Ray starts or anything is written
    artifacts, remote = artifact_root(cfg, home)
    # (Ray Train workers get the bare tracking_uri in their config; a login from the URI reaches a
    # local Ray's workers in MLFLOW_TRACKING_USERNAME/PASSWORD, a cluster holds its own.)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    setup_mlflow(tracking_uri, cfg.mlflow.experiment, home)

    t0 = time.perf_counter()
    printer.line(f"mlflow: {tracking_uri}")
    ray_started: list[bool] = []  # empty until the first step that runs asks for Ray

    def step_scope(step: Step, key: str, state_dir: Path):
        # Ray is connected on the first step that actually runs: a fully reused pipeline never
        # pays Ray's start-up (most of a re-run's cost otherwise).
        if interrupts is not None:
            interrupts.step = step.name
        if not ray_started:
            t = time.perf_counter()
            ray_started.append(connect_ray(address or cfg.ray.address, cfg.ray.num_cpus))
            if interrupts is not None:
                interrupts.install()  # ray.init replaced our SIGTERM handler with its own
            printer.line(f"ray: {'started locally' if ray_started[0] else 'connected'} in {time.perf_counter() - t:.1f}s")
        return mlflow_step_run(step, key, state_dir)

    version = code_version()
    run_key = cfg.fingerprint()
    run_dir = home.runs / f"{cfg.run_name}-{run_key[:10]}-{version[:6]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(redact_text(cfg.to_yaml()), encoding="utf-8")  # also the artifact

    parent_file = run_dir / "mlflow_run_id"
    run = PipelineRun(
        cfg, steps or STEPS, artifacts, run_dir, on_event=printer.event, step_scope=step_scope, version=version,
        remote=remote,
    )
    redirect = ExitStack()
    if log_to_file:
        log = redirect.enter_context(stderr_to_file(run_dir / LOG_FILE))
        printer.line(f"log: {log} (the libraries' output; tpipe --verbose shows it here)")
    try:
        if parent_run_id is not None:  # e.g. the sweep's run: this pipeline run becomes its child
            redirect.enter_context(mlflow.start_run(run_id=parent_run_id))
        with mlflow.start_run(run_name=parent_run_name(cfg.run_name, run_key), nested=parent_run_id is not None) as parent:
            write_atomic(parent_file, parent.info.run_id)  # the latest parent, for `tpipe status`
            log_dict_params(cfg.to_dict())
            mlflow.set_tags({"tpipe.pipeline_run": run_dir.name, "tpipe.code_version": version,
                             "tpipe.config_hash": run_key})
            log_artifact_file(run_dir / "config.yaml")
            with killed_on_interrupt():
                results = run.run(from_step, until_step)
            mlflow.set_tags(step_tags(results, parent.info.experiment_id))
            if "prepare" in results:
                for f in ("data_report.json", "lengths.png"):
                    log_artifact_file(results["prepare"].out_dir / f, "data")
            if "tokenizer" in results:
                for f in ("vocab.json", "merges.txt", "tokenizer.json"):
                    log_artifact_file(results["tokenizer"].out_dir / f, "tokenizer")
            if "evaluate" in results:
                log_artifact_file(results["evaluate"].out_dir / "evaluation.json")
            mlflow.log_metrics(parent_metrics(results, time.perf_counter() - t0))
    finally:
        if ray_started and ray_started[0]:
            import ray

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
    printer.summary(summary, home)
    return {"run_dir": run_dir, "results": results, "summary": summary}


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
        id_file.write_text(run.info.run_id)
        mlflow.set_tags({"tpipe.step": step.name, "tpipe.step_key": key, "tpipe.step_inputs": ",".join(step.inputs)})
        t0 = time.perf_counter()
        with killed_on_interrupt():
            yield run
        mlflow.log_metric(f"step/{step.name}_seconds", time.perf_counter() - t0)


@contextmanager
def killed_on_interrupt():
    """An interrupt ends the active MLflow run as KILLED, not FAILED (MLflow's choice for any exception)."""
    try:
        yield
    except KeyboardInterrupt:
        import mlflow

        mlflow.end_run("KILLED")
        raise


class _Printer:
    """Terminal progress: which step runs, how long each took, and a closing table."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=False, quiet=quiet, highlight=False)

    def _print(self, text: str) -> None:
        self.console.print(redact_text(text))  # every line: a URI's password never reaches the terminal

    def line(self, text: str) -> None:
        self._print(f"[dim]{text}[/dim]")

    def event(self, event: str, step: Step, info: dict[str, Any]) -> None:
        if event == "start":
            self._print(f"[bold cyan]▶ {step.name}[/bold cyan]  {step.description}  [dim]({info['key']})[/dim]")
        elif event == "cached":
            self._print(f"[green]✓ {step.name}[/green]  reused [dim]{info['out_dir']}[/dim]")
        elif event == "done":
            self._print(f"[green]✓ {step.name}[/green]  {info['seconds']:.1f}s  [dim]{_short(info['summary'])}[/dim]")

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
            self._print(f"promotion: {ev['promotion']}")
            self._print(f"[dim]sacreBLEU {ev['signature']['bleu']}[/dim]")
        self._print(f"total {s['wall_seconds']:.1f}s; run folder {s['run_dir']}")
        self._print(f"open the MLflow UI:  [bold]tpipe ui[/bold]   (or: {home.ui_command(s['tracking_uri'])})")


def _short(summary: dict[str, Any]) -> str:
    text = json.dumps({k: v for k, v in summary.items() if k not in ("samples", "signature")}, ensure_ascii=False)
    return text if len(text) < 160 else text[:157] + "..."
