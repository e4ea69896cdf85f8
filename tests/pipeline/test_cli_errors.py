"""Every subcommand, given a representative wrong input, fails with one line on stderr and no traceback.

Each case runs `tpipe` as a user would (a fresh process, a fresh TPIPE_HOME); none reaches Ray or a
training. `--debug` shows the traceback of the same failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


def tpipe(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TPIPE_HOME": str(home / "tpipe"),
            "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env=base | env, cwd=home, timeout=600)


CASES = {
    "run: mistyped --from step": (["run", "smoke", "--from", "trian"], "trian"),
    "run: bad override": (["run", "smoke", "train.lr=fast"], "train.lr"),
    "config: unknown config": (["config", "nope"], "nope"),
    "status: no such run": (["status", "nosuchrun"], "pipeline runs"),
    "evaluate: unknown model": (["evaluate", "models:/no-such-model@champion"], "no-such-model"),
    "evaluate: missing --data file": (["evaluate", "models:/m/1", "--data", "missing.tsv"], "missing.tsv"),
    "translate: unknown model": (["translate", "models:/no-such-model@champion", "hello"], "no-such-model"),
    "translate: no such folder": (["translate", "no/such/dir", "hello"], "no/such/dir"),
    "submit: nobody at the address": (["submit", "smoke", "--address", "ADDR"], "127.0.0.1"),
    "jobs: no cluster given": (["jobs", "list"], "--address"),
    "ui: port taken": (["ui", "--port", "PORT"], "PORT"),
    "tokenizer: no tokenizer folder": (["tokenizer", "explain", "--tokenizer", "no/such/tok", "hi"], "no/such/tok"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line(case, tmp_path):
    args, named = CASES[case]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    subst = {"ADDR": f"http://127.0.0.1:{_closed_port()}", "PORT": port}
    args = [subst.get(a, a) for a in args]
    named = subst.get(named, named)
    try:
        proc = tpipe(args, tmp_path, RAY_ADDRESS="")
    finally:
        taken.close()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert named in lines[0], lines[0]
    if case.endswith("unknown model"):  # a lookup in an empty home leaves no empty store behind
        assert not list(tmp_path.rglob("mlflow.db")), "looking a model up created an MLflow store"


def test_debug_shows_the_traceback(tmp_path):
    proc = tpipe(["--debug", "status", "nosuchrun"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_ui_stopped_by_a_signal_stops_everything_it_started(tmp_path):
    """`tpipe ui` runs `mlflow ui` in a process group of its own; SIGTERM to tpipe stops the whole group."""
    import signal
    import time

    import psutil

    port = _closed_port()
    env = {**os.environ, "HOME": str(tmp_path), "TPIPE_HOME": str(tmp_path / "tpipe"), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = open(tmp_path / "ui.out", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=out, stderr=subprocess.DEVNULL, start_new_session=True)
    started: list[psutil.Process] = []
    try:
        deadline = time.time() + 180
        while len(started) < 3:  # mlflow ui, its server process and at least one worker
            assert proc.poll() is None, "tpipe ui exited"
            assert time.time() < deadline, "mlflow ui did not start its workers"
            time.sleep(0.5)
            started = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        gone, alive = psutil.wait_procs(started, timeout=15)
        assert not alive, [p.cmdline() for p in alive]
        # what to open, printed before `mlflow ui` starts, for a home where nothing ran yet
        printed = (tmp_path / "ui.out").read_text().splitlines()
        assert printed[1:3] == [f"open http://127.0.0.1:{port}", "  (no runs yet: `tpipe run smoke` makes some)"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in started:  # only what this test's tpipe ui started
            if p.is_running():
                p.kill()
