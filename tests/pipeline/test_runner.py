"""`tpipe run` as a process: one run per home, Ctrl-C and SIGTERM, and a cluster that does not answer.

The checks before Ray starts run without Ray. The race runs once, on real Ray and MLflow: four
`tpipe run smoke` started at once in an empty home; the one that works is interrupted with Ctrl-C
during training, a re-run continues it, and a last run reuses everything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRUBBED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS", "TPIPE_INJECT_KILL_WORKER")


def tpipe_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(TPIPE_HOME=str(home), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def tpipe(home: Path, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=tpipe_env(home), text=True,
                            start_new_session=True, **popen)


def processes_of(home: Path) -> list[int]:
    """Pids of live processes whose environment has TPIPE_HOME=home: the driver and the Ray it started."""
    needle = f"TPIPE_HOME={home}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0") and b"Z" not in (proc / "stat").read_bytes().split(b")")[-1][:3]:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


# ---- the run lock, without Ray --------------------------------------------------------------

HOLD = "import sys, time\nfrom pipeline.home import Home\nwith Home.resolve().run_lock():\n    print('held', flush=True)\n    time.sleep(600)\n"


def test_a_held_run_lock_is_refused_naming_its_holder_and_a_dead_ones_is_taken_over(tmp_path):
    from pipeline.home import Home, RunLocked

    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=REPO, env=tpipe_env(tmp_path), text=True,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held"
        home = Home(tmp_path)
        with pytest.raises(RunLocked, match=rf"another run is working in {tmp_path}: pid {holder.pid}, started 20\d\d-"):
            with home.run_lock():
                pass
    finally:
        holder.kill()  # SIGKILL: no chance to release or empty the lock file
        holder.wait()
    with home.run_lock() as stale:
        assert stale is not None and stale["pid"] == holder.pid  # taken over, and the dead holder is named
        assert json.loads(home.run_lock_file.read_text())["pid"] == os.getpid()
    with home.run_lock() as stale:
        assert stale is None  # a run that ends normally leaves nothing to take over


# ---- a cluster that does not answer ---------------------------------------------------------

def test_unreachable_ray_address_fails_in_seconds_naming_it(tmp_path):
    env = tpipe_env(tmp_path / "h", TPIPE_ALLOW_LOCAL_STORE="1")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke", "--address", "127.0.0.1:1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "tpipe: cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused); start it (ray start --head) "
        "or fix --address / ray.address / RAY_ADDRESS"]
    assert not (tmp_path / "h" / "runs").exists()  # refused before anything was written
    print(f"refused in {time.monotonic() - t0:.1f}s")


def test_sigterm_while_joining_a_silent_cluster_ends_the_run_at_once(tmp_path):
    """A port that accepts connections and never answers: ray.init waits inside Ray's C++ client
    (for minutes, deaf to signals); SIGTERM must still end `tpipe run` at once, with one line."""
    from ray._private.services import get_node_ip_address

    ip = get_node_ip_address()  # what Ray turns 127.0.0.1 into: the address it will really dial
    with socket.socket() as silent:
        silent.bind((ip, 0))
        silent.listen(16)  # connections complete in the kernel's backlog; nobody ever answers
        port = silent.getsockname()[1]
        home = tmp_path / "h"
        env = tpipe_env(home, TPIPE_ALLOW_LOCAL_STORE="1")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "smoke", "--address", f"{ip}:{port}"],
                                cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # The first connection is tpipe's probe of the port, the second ray.init's own: from then on
        # the run waits inside Ray's C++ client.
        silent.settimeout(240)
        held = [silent.accept()[0] for _ in range(2)]
        time.sleep(1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("SIGTERM was ignored while joining the cluster")
        for conn in held:
            conn.close()
    assert proc.returncode != 0 and time.monotonic() - t0 < 20
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    assert lines[0] == f"tpipe: interrupted (SIGTERM) while connecting to the Ray cluster at {ip}:{port}"


# ---- four runs at once, Ctrl-C during training, re-runs (real Ray and MLflow) --------------


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    """Four `tpipe run smoke` at once in an empty home; Ctrl-C to the one that works, in training."""
    home = tmp_path_factory.mktemp("race")
    logs = tmp_path_factory.mktemp("race-logs")
    procs = []
    for i in range(4):
        procs.append(tpipe(home, "run", "smoke", stdout=open(logs / f"{i}.out", "w"), stderr=open(logs / f"{i}.err", "w")))
    try:
        # the three that lose exit on their own; the winner trains until a checkpoint exists
        _wait_for(lambda: sum(p.poll() is not None for p in procs) >= 3, 300, "three runs to be refused")
        (winner,) = [p for p in procs if p.poll() is None]
        snapshots = lambda: list(home.glob("ray_results/train-*/checkpoint_manager_snapshot.json"))  # noqa: E731
        _wait_for(lambda: any("checkpoint_" in p.read_text(errors="replace") for p in snapshots())
                  or winner.poll() is not None, 600, "a training checkpoint")
        assert winner.poll() is None, "the run ended before it could be interrupted"
        os.killpg(winner.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
        t0 = time.monotonic()
        winner.wait(timeout=120)
        exit_seconds = time.monotonic() - t0
        checkpoints_at_exit = sorted(str(p) for p in home.glob("ray_results/train-*/checkpoint_*"))
        time.sleep(3)
        yield {
            "home": home, "procs": procs, "winner": winner, "exit_seconds": exit_seconds,
            "left": processes_of(home), "checkpoints_at_exit": checkpoints_at_exit,
            "checkpoints_later": sorted(str(p) for p in home.glob("ray_results/train-*/checkpoint_*")),
            "out": [(logs / f"{i}.out").read_text() for i in range(4)],
            "err": [(logs / f"{i}.err").read_text() for i in range(4)],
        }
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for pid in processes_of(home):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.e2e
def test_four_runs_at_once_one_works_the_others_are_refused_naming_it(race):
    winner = race["procs"].index(race["winner"])
    for i, p in enumerate(race["procs"]):
        if i == winner:
            continue
        lines = race["err"][i].strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, race["err"][i][-2000:]
        assert lines[0].startswith(f"tpipe: another run is working in {race['home']}: pid {race['winner'].pid}, started ")
        assert "tpipe run smoke" in lines[0]
        assert "▶" not in race["out"][i]  # refused before any step


@pytest.mark.e2e
def test_ctrl_c_in_training_stops_the_run_and_its_workers_and_says_how_to_resume(race):
    err = race["err"][race["procs"].index(race["winner"])]
    assert race["winner"].returncode == 130, err[-3000:]
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
    assert rows == {"prepare": "done", "tokenizer": "done", "encode": "done", "train": "interrupted"}, status.stdout

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{race['home']}/mlflow.db")
    train = client.search_runs(client.get_experiment_by_name("tpipe").experiment_id, "tags.`tpipe.step` = 'train'")
    assert [r.info.status for r in train] == ["KILLED"]


@pytest.mark.e2e
def test_a_rerun_continues_then_one_more_reuses_everything_and_the_store_is_sound(race):
    home = race["home"]
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke", "--json"], cwd=REPO,
                           env=tpipe_env(home), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert [n for n, s in summary["steps"].items() if not s["cached"]] == ["train", "register", "evaluate"]
    assert "resuming from" in again.stdout + again.stderr
    last = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "smoke", "--json"], cwd=REPO,
                          env=tpipe_env(home), capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, (last.stdout + last.stderr)[-4000:]
    assert all(s["cached"] for s in json.loads(last.stdout.strip().splitlines()[-1])["steps"].values())
    with sqlite3.connect(home / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
