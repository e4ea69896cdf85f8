"""`tpipe run` as a process, without a pipeline: the run lock, and a cluster that does not answer.

(Four runs at once in one home, a SIGKILL and a Ctrl-C during a run, and the re-runs that continue
it are in test_e2e.py, beside the uninterrupted run they are compared with.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from pipeline_testlib import REPO, tpipe_env

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


# A run between taking the lock and writing its record: the file still holds a killed run's record.
TAKING = (
    "import json, os, time\nfrom data.io import file_lock\nfrom pipeline.home import Home\n"
    "home = Home.resolve()\nwith file_lock(str(home.run_lock_file), wait=False) as f:\n"
    "    print('locked', flush=True)\n    time.sleep(1.5)\n"
    "    f.seek(0); f.truncate(); f.write(json.dumps({'pid': os.getpid(), 'started': time.time(), 'command': 'tpipe run x'})); f.flush()\n"
    "    time.sleep(600)\n"
)


def test_a_run_refused_while_the_winner_is_starting_still_names_the_winner(tmp_path):
    """Four runs started at once: the losers can read the lock file in the moment between the
    winner's flock and its record, when it is empty or still holds a killed run's record."""
    from pipeline.home import Home, RunLocked

    home = Home(tmp_path)
    home.run_lock_file.parent.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    home.run_lock_file.write_text(json.dumps({"pid": dead.pid, "started": 1.0, "command": "tpipe run killed"}))
    winner = subprocess.Popen([sys.executable, "-c", TAKING], cwd=REPO, env=tpipe_env(tmp_path), text=True,
                              stdout=subprocess.PIPE)
    try:
        assert winner.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"working in {tmp_path}: pid {winner.pid}, started 20\d\d-.*: tpipe run x;"):
            with home.run_lock():
                pass
    finally:
        winner.kill()
        winner.wait()


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

