"""The commands of `tpipe` that run, inspect and submit pipelines: run, sweep, config, status, submit, jobs, ui.

Heavy imports (torch, ray, mlflow) happen inside the commands, so `tpipe --help` and config
errors are instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from data.errors import UserError
from pipeline.config import ConfigError, PipelineConfig, describe, load_config


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [key=value ...]`: the first item without '=' names the config."""
    config, overrides = None, []
    for i, item in enumerate(items):
        if "=" not in item and i == 0:
            config = item
        elif "=" not in item:
            raise ConfigError(f"'{item}' is not an override of the form key.sub=value (the config is given first)")
        else:
            overrides.append(item)
    return config, overrides


def _load(args) -> PipelineConfig:
    config, overrides = _split_config_args(args.items)
    return load_config(config, overrides)


def cmd_run(args) -> int:
    cfg = _load(args)  # validated before Ray or MLflow start
    from pipeline.interrupts import RunInterrupted
    from pipeline.runner import run_pipeline

    try:
        out = run_pipeline(cfg, from_step=args.from_step, until_step=args.until_step, address=args.address,
                           log_to_file=not args.verbose)
    except RunInterrupted as e:
        import shlex

        from data.io import redact_text

        during = f" during step {e.step}" if e.step else ""
        kept = "finished steps are kept" + (", training continues from its last checkpoint" if e.step == "train" else "")
        resume = redact_text(shlex.join(["tpipe", *sys.argv[1:]]))
        print(f"tpipe: run interrupted ({e.signal_name}){during}; {kept}: resume with `{resume}`", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(out["summary"], ensure_ascii=False, default=str))
    return 0


def cmd_sweep(args) -> int:
    cfg = _load(args)  # the base config and the whole space are checked before Ray or MLflow start
    from pipeline.sweep_space import load_space

    load_space(args.space, cfg)
    from pipeline.sweep import run_sweep

    out = run_sweep(cfg, args.space, trials=args.trials, address=args.address)
    print(f"best config: {out['best_config']}  (tpipe run {out['best_config']})")
    return 0


def cmd_config(args) -> int:
    cfg = _load(args)
    if args.keys:  # the values of this config (defaults, the named config and the overrides applied)
        for key, value, help_ in describe(cfg):
            print(f"{key:36s} {value:>14s}  {help_}")
        return 0
    print(cfg.to_yaml(), end="")
    return 0


def cmd_status(args) -> int:
    from pipeline.home import Home, describe_holder

    home = Home.resolve()
    runs_dir = home.runs
    runs = sorted(runs_dir.glob("*/state.json"), key=lambda p: p.stat().st_mtime) if runs_dir.exists() else []
    if not runs:
        raise UserError(f"no pipeline runs under {runs_dir}")
    if args.run:
        picked = [p for p in runs if p.parent.name.startswith(args.run)]
        if not picked:
            raise UserError(f"no run named {args.run}*; runs: {', '.join(p.parent.name for p in runs)}")
        state_file = picked[-1]
    else:
        state_file = runs[-1]
    state = json.loads(state_file.read_text(encoding="utf-8"))
    active = home.active_run()
    print(f"run {state_file.parent.name}  ({state_file.parent})")
    print(f"{'step':12s} {'state':11s} {'seconds':>8s}  output")
    for name, st in state["steps"].items():
        secs = f"{st['seconds']:.1f}" if "seconds" in st else "-"
        # 'running' with no live run in this home: its process was killed before it could say so
        shown = "killed" if st["state"] == "running" and active is None else st["state"]
        print(f"{name:12s} {shown:11s} {secs:>8s}  {st.get('out_dir', '')}")
    if active is not None:
        print(f"a run is working in this home: {describe_holder(active)}")
    return 0


def cmd_submit(args) -> int:
    _load(args)  # refuse a bad config here, not minutes later on the cluster
    from pipeline.submit import SubmitError, follow, submit

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("tpipe: give --address http://HEAD:8265 (or set RAY_ADDRESS)")
    try:
        job_id = submit(address, args.items, tracking_uri=args.tracking_uri)
    except SubmitError as e:
        print(f"tpipe: {e}", file=sys.stderr)
        return 2
    print(job_id, flush=True)
    if args.follow:
        status = follow(address, job_id)
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0


def cmd_jobs(args) -> int:
    from pipeline.submit import client

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("tpipe: give --address http://HEAD:8265 (or set RAY_ADDRESS)")
    c = client(address)
    if args.action == "list":
        for job in c.list_jobs():
            print(f"{job.submission_id or job.job_id}\t{job.status}\t{job.entrypoint}")
    elif not args.job_id:
        raise SystemExit(f"tpipe: jobs {args.action} needs a submission id")
    elif args.action == "status":
        print(c.get_job_status(args.job_id))
    elif args.action == "logs":
        print(c.get_job_logs(args.job_id), end="")
    elif args.action == "stop":
        print("stopped" if c.stop_job(args.job_id) else "already finished")
    return 0


def cmd_ui(args) -> int:
    import socket

    from data.io import redact_uri
    from pipeline.home import Home

    home = Home.resolve()
    uri = home.tracking_uri()
    if not uri.startswith("sqlite:"):
        print(f"the tracking store is a server: open {redact_uri(uri)}")
        return 0
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", args.port))
        except OSError:
            raise UserError(f"port {args.port} on 127.0.0.1 is in use; give a free one with --port") from None
    cmd = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
        "--default-artifact-root", str(home.mlflow_artifacts), "--host", "127.0.0.1", "--port", str(args.port),
    ]
    print(" ".join(cmd), flush=True)
    base = f"http://127.0.0.1:{args.port}"
    for line in ui_pages(home.root / "mlflow.db", base):
        print(line, flush=True)
    return run_process_group(cmd)


def ui_pages(db: Path, base: str) -> list[str]:
    """The pages of `tpipe ui` worth opening first: each experiment's runs (newest first), the models.

    A link straight to the runs table: MLflow 3 opens an experiment on its GenAI overview, which is
    empty for tpipe's runs. Read with sqlite3, read-only, so that an absent store is not created.
    """
    import sqlite3

    lines = [f"open {base}"]
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute(
                "SELECT e.experiment_id, e.name FROM experiments e WHERE e.lifecycle_stage = 'active' AND EXISTS "
                "(SELECT 1 FROM runs r WHERE r.experiment_id = e.experiment_id) ORDER BY e.last_update_time DESC"
            ).fetchall()
    except sqlite3.Error:  # no store yet (nothing has run), or not one MLflow wrote
        return lines + ["  (no runs yet: `tpipe run smoke` makes some)"]
    pages = [(f"runs of {name}", f"{base}/#/experiments/{eid}/runs") for eid, name in rows]
    pages.append(("registered models", f"{base}/#/models"))
    width = max(len(label) for label, _ in pages)
    return lines + [f"  {label:<{width}}  {url}" for label, url in pages]


def run_process_group(cmd: list[str]) -> int:
    """Run `cmd` in a process group of its own and stop the whole group when this process stops.

    `mlflow ui` starts server workers; a signal to tpipe alone would leave them running. SIGINT,
    SIGTERM and SIGHUP are forwarded to the group as SIGTERM (SIGKILL after 10 s), and the group is
    cleared however the command ends.
    """
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, start_new_session=True)
    stopped_by: list[int] = []

    def forward(signum, frame):
        stopped_by.append(signum)
        _signal_group(proc.pid, signal.SIGTERM)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    deadline = None
    try:
        while (code := proc.poll()) is None:
            if stopped_by and deadline is None:
                deadline = time.monotonic() + 10
            if deadline is not None and time.monotonic() > deadline:
                _signal_group(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
    finally:
        _signal_group(proc.pid, signal.SIGTERM)  # workers left behind by a server that exited
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 128 + stopped_by[0] if stopped_by else code


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
