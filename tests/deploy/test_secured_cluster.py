"""`tpipe submit` and `tpipe jobs` against a Ray head that demands a token, as a new user meets it.

Ray 2.60 turns token authentication on for a new local cluster and writes ~/.ray/auth_token; a
`ray start --head` on a machine where that file exists then requires the token, though the shell
has no RAY_AUTH_MODE. tpipe finds the token as Ray's clients do (RAY_AUTH_TOKEN, the file at
RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) and sends it when the cluster asks; without one it says, in
one line, what to set. HOME is a temporary folder: the real ~/.ray/auth_token is never touched.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from deploy_testlib import REPO, clean_env, start_ray_head

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head started from a HOME whose ~/.ray/auth_token exists (as after `make run`)."""
    home = tmp_path_factory.mktemp("user-home")
    (home / ".ray").mkdir()
    token = secrets.token_hex(32)
    (home / ".ray" / "auth_token").write_text(token)
    with start_ray_head(clean_env(HOME=str(home)), num_cpus=1) as (address, _):
        yield address, home, token


def tpipe(*args: str, home: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env=clean_env(HOME=str(home), TPIPE_HOME=str(tmp_path / "tpipe"), **env))


def test_the_token_is_found_where_ray_keeps_it_and_used(head, tmp_path):
    address, home, token = head
    assert requests.get(address + "/api/jobs/", timeout=30).status_code == 401  # the head demands it

    # ~/.ray/auth_token, no RAY_AUTH_MODE: submit, then status and stop of that job
    sub = tpipe("submit", "smoke", "--address", address, home=home, tmp_path=tmp_path)
    assert sub.returncode == 0, sub.stderr[-3000:]
    job_id = sub.stdout.split()[0]
    status = tpipe("jobs", "status", job_id, "--address", address, home=home, tmp_path=tmp_path)
    assert status.returncode == 0 and status.stdout.strip() in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED"), status
    stop = tpipe("jobs", "stop", job_id, "--address", address, home=home, tmp_path=tmp_path)
    assert stop.returncode == 0, stop.stderr[-3000:]

    # RAY_AUTH_TOKEN_PATH and RAY_AUTH_TOKEN, from a HOME without the file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "token").write_text(token)
    for env in ({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}, {"RAY_AUTH_TOKEN": token}):
        listed = tpipe("jobs", "list", "--address", address, home=elsewhere, tmp_path=tmp_path, **env)
        assert listed.returncode == 0 and job_id in listed.stdout, (env, listed.stderr[-3000:])


def test_a_missing_or_wrong_token_is_one_line_saying_what_to_set(head, tmp_path):
    address, _, _ = head
    cases = [
        ({}, "requires a token and none was found: set RAY_AUTH_TOKEN"),
        ({"RAY_AUTH_MODE": "token"}, "requires a token and none was found: set RAY_AUTH_TOKEN"),
        ({"RAY_AUTH_TOKEN": "not-the-token"}, "refused the token from RAY_AUTH_TOKEN"),
        ({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "absent")}, f"RAY_AUTH_TOKEN_PATH={tmp_path / 'absent'} cannot be read"),
    ]
    for i, (env, message) in enumerate(cases):
        for args in [("jobs", "list")] + [("submit", "smoke")] * (i == 0):
            proc = tpipe(*args, "--address", address, home=tmp_path, tmp_path=tmp_path, **env)
            assert proc.returncode == 2, (env, args, proc.stdout, proc.stderr)
            assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr, (env, args, proc.stderr)
            assert address in proc.stderr or "RAY_AUTH_TOKEN_PATH" in env
