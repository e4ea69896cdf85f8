"""Helpers shared by the pipeline tests (a module of its own: several test folders have a conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRUBBED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS", "TPIPE_INJECT_KILL_WORKER")


def tpipe_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `tpipe` process of its own: `home`, and none of this shell's tracking or Ray settings."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(TPIPE_HOME=str(home), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


# `python -m pipeline.cli`, with Ctrl-C as a terminal delivers it. A process started with SIGINT
# ignored (under nohup, or `cmd &` in a script: how CI and developers often start the suite) passes
# that on to its children, and a Python started so never raises KeyboardInterrupt; ignored signals
# survive exec, so the child itself has to install Python's handler again.
_AS_FROM_A_TERMINAL = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                       "runpy.run_module('pipeline.cli', run_name='__main__', alter_sys=True)")


def tpipe(home: Path, *args: str, **popen) -> subprocess.Popen:
    """Start `tpipe ARGS` in a session of its own (killpg reaches it and all it starts), as from a terminal."""
    return subprocess.Popen([sys.executable, "-c", _AS_FROM_A_TERMINAL, *args], cwd=REPO, env=tpipe_env(home),
                            text=True, start_new_session=True, **popen)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


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


@contextmanager
def tpipe_home(home: Path):
    """Point TPIPE_HOME at `home` (its sqlite MLflow store included) for the duration, then restore."""
    saved = {k: os.environ.get(k) for k in ("TPIPE_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["TPIPE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def fresh_ray(**init_kwargs):
    """A Ray of this module's own: one left running by another test folder's session fixture is
    shut down first (ray.init refuses a second), and ours is shut down afterwards."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", **init_kwargs)  # never join another cluster on this machine
    try:
        yield ray
    finally:
        ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3(log_dir: Path):
    """A moto S3 server on 127.0.0.1 with the bucket `tpipe-artifacts` and test credentials in the
    environment; yields a function making URIs under that bucket (the endpoint in the query)."""
    import subprocess
    import sys
    import time

    import requests

    port = free_port()
    log = log_dir / "moto-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="tpipe-test", AWS_SECRET_ACCESS_KEY="tpipe-test", AWS_DEFAULT_REGION="us-east-1")
    try:
        deadline = time.time() + 120
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        requests.put(f"http://127.0.0.1:{port}/tpipe-artifacts", timeout=10).raise_for_status()  # the bucket

        def uri(prefix: str) -> str:
            return f"s3://tpipe-artifacts/{prefix}?endpoint_override=127.0.0.1:{port}&scheme=http"

        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def register_tiny_model(root: Path, name: str, lines: list[str], max_len: int = 8) -> str:
    """Register a small untrained model (seeded weights, a BPE tokenizer learnt from `lines`) in the
    MLflow store MLflow currently points at, as the pipeline's register step would; returns
    models:/NAME/VERSION. No Ray and no training: for tests of what happens to a registered model.
    `max_len` bounds decoding (an untrained model rarely says EOS)."""
    import mlflow
    import torch

    from data.tokenizer import TokenizerConfig, train_tokenizer
    from model.config import ModelConfig
    from model.transformer import Transformer
    from pipeline.registry import log_and_register
    from pipeline.package import save as save_model_package

    corpus = root / "tokenizer-corpus.txt"
    corpus.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tok = train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=2), [str(corpus)], split=None)
    tok.save(root / "tokenizer")
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                      d_ff=64, max_seq_len=64, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    torch.manual_seed(0)
    generation = {"beam_size": 1, "length_penalty": 1.0, "max_len": max_len, "batch_size": 64}
    package = save_model_package(root / "package", Transformer(cfg), cfg, generation, root / "tokenizer")
    with mlflow.start_run(run_name=f"register-{name}"):
        info = log_and_register(package, name)
    return info["model_uri"]


def kill_everything_of(home: Path) -> None:
    """SIGKILL every process whose environment has TPIPE_HOME=home: the driver, and the local Ray
    it started (GCS, raylet, workers), as if the machine running `tpipe run` had lost power."""
    import signal

    for pid in processes_of(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
