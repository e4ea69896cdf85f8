"""Helpers shared by the pipeline tests (a module of its own: several test folders have a conftest.py)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


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
