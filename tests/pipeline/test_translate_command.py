"""`tpipe translate MODEL_URI TEXT...` as a user runs it: a fresh process, a real sqlite MLflow store.

A version in the home's own sqlite store with local artifacts is found with sqlite3 and translated
by the same Translator pyfunc's load_context builds, without importing MLflow (most of a cold
start); any other store goes through MLflow. Both must print the same translations and nothing else.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from pipeline_testlib import REPO, register_tiny_model, tpipe_env, tpipe_home

SENTENCES = ["the cat sat on the mat", "a dog ran", "ein Hund lief"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """tiny-mt v1 in a home of its own, alias @candidate (log_and_register sets it)."""
    import mlflow

    from pipeline.home import Home
    from pipeline.tracking import setup_mlflow

    root = tmp_path_factory.mktemp("translate-command")
    lines = [f"{s} {i}" for i in range(40) for s in SENTENCES]
    with tpipe_home(root / "home") as home:
        uri = Home.resolve().tracking_uri()
        setup_mlflow(uri, "tpipe", Home.resolve())
        mlflow.set_experiment("tpipe")
        model_uri = register_tiny_model(root, "tiny-mt", lines)
    return {"home": home, "tracking_uri": uri, "model_uri": model_uri}


def translate(registered, model_uri: str, *, through_mlflow: bool = False) -> subprocess.CompletedProcess:
    # MLFLOW_TRACKING_URI set (to the same store) takes the MLflow path, as for any server store
    extra = {"MLFLOW_TRACKING_URI": registered["tracking_uri"]} if through_mlflow else {}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "translate", model_uri, *SENTENCES], cwd=REPO,
                          env=tpipe_env(registered["home"], **extra), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("which", ["version", "alias"])
def test_the_local_store_and_mlflow_print_the_same_translations_and_nothing_else(registered, which):
    uri = registered["model_uri"] if which == "version" else "models:/tiny-mt@candidate"
    fast, slow = translate(registered, uri), translate(registered, uri, through_mlflow=True)
    assert fast.returncode == 0 and slow.returncode == 0, fast.stderr[-2000:] + slow.stderr[-2000:]
    assert fast.stdout == slow.stdout
    assert [line.split("\t")[0] for line in fast.stdout.splitlines()] == SENTENCES
    # MLflow's "Add type hints to the `predict` method" advice (and anything else) stays off stderr
    assert fast.stderr == "" and slow.stderr == "", slow.stderr[-2000:]


def test_a_model_of_the_local_store_loads_without_mlflow(registered):
    probe = ("import sys\nfrom pipeline.cli import main\n"
             f"rc = main(['translate', '{registered['model_uri']}', 'a dog ran'])\n"
             "print('mlflow imported' if 'mlflow' in sys.modules else 'mlflow not imported', rc)\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=tpipe_env(registered["home"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines()[-1] == "mlflow not imported 0", proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("uri,named", [("models:/tiny-mt@champion", "no alias 'champion'"),
                                       ("models:/tiny-mt/7", "no version 7"),
                                       ("models:/other@candidate", "no registered model 'other'")])
def test_what_the_local_store_lacks_is_one_line_from_the_registry(registered, uri, named):
    proc = translate(registered, uri)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and named in lines[0], proc.stderr[-2000:]
