"""`tpipe translate MODEL_URI TEXT...` as a user runs it: a fresh process, a real sqlite MLflow store.

A version in the home's own sqlite store with local artifacts is found with sqlite3 and translated
by the same Translator pyfunc's load_context builds, without importing MLflow (most of a cold
start); any other store goes through MLflow. Both must print the same translations and nothing else.
"""

from __future__ import annotations

import json
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


# What a cold `tpipe translate` must not import: each is seconds or tenths of one on 2 cores, and none
# of it is used to translate a sentence (bench/translate.py measures the start; this keeps it so).
NOT_ON_THE_TRANSLATE_PATH = ("mlflow", "lightning", "ray", "pyarrow", "numba", "pandas", "sacrebleu", "matplotlib",
                             "yaml", "pipeline.config", "pipeline.runner", "pipeline.workflow", "pipeline.evaluate")


def test_a_model_of_the_local_store_translates_without_heavy_imports_on_one_thread(registered):
    probe = ("import json, sys, torch\nfrom pipeline.cli import main\n"
             f"rc = main(['translate', '{registered['model_uri']}', 'a dog ran'])\n"
             f"print(json.dumps({{'rc': rc, 'threads': torch.get_num_threads(), "
             f"'imported': [m for m in {NOT_ON_THE_TRANSLATE_PATH!r} if m in sys.modules]}}))\n")
    env = tpipe_env(registered["home"])
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # one decoding thread (pipeline/model_commands.py:_decode_on_one_thread), none of the heavy modules
    assert json.loads(proc.stdout.splitlines()[-1]) == {"rc": 0, "threads": 1, "imported": []}, proc.stdout


@pytest.mark.parametrize("uri,named", [("models:/tiny-mt@champion", "no alias 'champion'"),
                                       ("models:/tiny-mt/7", "no version 7"),
                                       ("models:/other@candidate", "no registered model 'other'")])
def test_what_the_local_store_lacks_is_one_line_from_the_registry(registered, uri, named):
    proc = translate(registered, uri)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and named in lines[0], proc.stderr[-2000:]
