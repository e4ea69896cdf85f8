"""The Lightning callbacks and logger `train_func` (pipeline/train.py) hands the Trainer.

ReportOnValidation reports Ray Train checkpoints; TrainingState makes a resume exact (loader
position, RNG seeded per batch); _ProgressPrinter prints; DriverOwnedRun logs into the driver's
MLflow run; `tune_callbacks` serve a sweep's trials; _KillOnce is a fault-injection hook for tests only.
"""

from __future__ import annotations

import os
from pathlib import Path


def _callback_base():
    import lightning as L

    return L.Callback


def _report_callback_base():
    from ray.train.lightning import RayTrainReportCallback

    return RayTrainReportCallback


class ReportOnValidation(_report_callback_base()):
    """RayTrainReportCallback, fired after each validation instead of at each epoch end.

    Validation is where val_loss exists, so Ray Train can keep the top-k checkpoints by it, and
    checkpoints come every `val_every_steps` even when an epoch is long.
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            super().on_train_epoch_end(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # Ray's callback stages each report in a folder under this prefix in the node's temp dir and
        # removes the folder, not the prefix: one empty folder per rank and run would pile up in /tmp.
        import shutil

        shutil.rmtree(self.tmpdir_prefix, ignore_errors=True)


class _Batches:
    """The loader as a plain iterable (no state_dict), so Lightning leaves its state to TrainingState."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class _FullPasses:
    """The validation loader as an iterable that starts from its first batch on every pass.

    Lightning stops after len() batches without exhausting the generator, so the loader's own
    position would stay at the end and every second validation would see no batches at all.
    """

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        self.loader.load_state_dict({"epoch": 0, "position": 0})
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class TrainingState(_callback_base()):
    """What Lightning's checkpoint lacks for an exact resume: the loader's position and the RNG.

    The position counts batches *consumed* by training steps, not batches fetched (Lightning
    prefetches one). The RNG is not saved but re-derived: before every batch, torch's generator is
    seeded from (seed, rank, epoch, position). Each rank draws a different number of dropout bits
    (batch shapes differ), so one saved RNG state could not serve every rank; a state that is a
    function of the position needs nothing saved and is the same however the run got there.
    """

    def __init__(self, loader, seed: int):
        self.loader, self.seed = loader, seed
        self.epoch, self.consumed = 0, 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # Each epoch has its own deterministic shuffle; a restored epoch keeps its position.
        self.loader.set_epoch(trainer.current_epoch)
        if self.epoch != trainer.current_epoch:
            self.epoch, self.consumed = trainer.current_epoch, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seed_generators(batch_seed(self.seed, trainer.global_rank, self.epoch, self.consumed), pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.epoch, self.consumed = trainer.current_epoch, self.consumed + 1

    def state_dict(self) -> dict:
        return {"loader": {"epoch": self.epoch, "position": self.consumed}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = state["loader"]["epoch"], state["loader"]["position"]
        self.loader.load_state_dict({"epoch": self.epoch, "position": self.consumed})


def seed_generators(seed: int, device) -> None:
    """Seed the generators a training step on `device` draws from, as torch.manual_seed would.

    torch.manual_seed also seeds every accelerator torch was built for; one that is not
    initialized (XPU in a CUDA or CPU build, CUDA on a CPU-only run) queues the seed with a
    formatted stack trace, about 2 ms at Lightning's stack depth, every step.
    """
    import torch

    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    elif device.type != "cpu":  # MPS and the rest: let torch find them
        torch.manual_seed(seed)


def batch_seed(seed: int, rank: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one training batch on one rank (stable across processes and platforms)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{rank}:{epoch}:{position}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _KillOnce(_callback_base()):
    """Test hook: worker `rank` SIGKILLs its own process once, after optimizer step `step`.

    Enabled only by TPIPE_INJECT_KILL_WORKER="RANK:STEP" in the driver's environment; a marker file
    in the run's storage makes it fire on the first attempt only.
    """

    def __init__(self, rank: int, step: int, marker: str):
        self.rank, self.step, self.marker = rank, step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import signal

        if trainer.global_rank == self.rank and trainer.global_step == self.step and not os.path.exists(self.marker):
            Path(self.marker).parent.mkdir(parents=True, exist_ok=True)
            Path(self.marker).write_text(str(os.getpid()))
            print(f"[train] injected failure: rank {self.rank} kills itself at step {self.step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class _ProgressPrinter(_callback_base()):
    """One progress line per logging interval, from rank 0 only (Ray forwards it to the driver)."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self._t0: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        if trainer.global_rank != 0:
            return
        step = trainer.global_step
        if self._t0 is None:
            self._t0 = time.perf_counter()
            self._s0 = step
        every = max(trainer.log_every_n_steps * 4, 1)
        if (step % every != 0 and step != self.max_steps) or step == getattr(self, "_last", None):
            return
        self._last = step
        m = trainer.callback_metrics
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._s0) / elapsed if elapsed > 0 else 0.0
        eta = (self.max_steps - step) / rate if rate > 0 else float("nan")
        done = int(20 * step / self.max_steps)
        parts = [f"{'█' * done}{'░' * (20 - done)} {100 * step / self.max_steps:3.0f}%  step {step}/{self.max_steps}"]
        for key, name in (("train/loss", "loss"), ("val/loss", "val_loss"), ("val/bleu", "val_bleu")):
            if key in m:
                parts.append(f"{name} {float(m[key]):.3f}")
        parts.append(f"eta {eta:.0f}s")
        print("[train] " + "  ".join(parts), flush=True)


def driver_owned_run(tracking_uri: str, run_id: str):
    """Lightning's MLFlowLogger writing into the driver's run (rank 0 only: one writer, mlflow#11782)."""
    from lightning.pytorch.loggers import MLFlowLogger

    class DriverOwnedRun(MLFlowLogger):
        """Logs into the driver's run but never ends it: its status is the driver's to set
        (FINISHED, FAILED, or KILLED on Ctrl-C, which a worker's own teardown would overwrite)."""

        def finalize(self, status: str = "success") -> None:
            pass

    return DriverOwnedRun(tracking_uri=tracking_uri, run_id=run_id)


def tune_callbacks() -> list:
    """Inside a `tpipe sweep` trial (pipeline/sweep.py), every validation's metrics also go to Tune,
    whose scheduler stops the trials that lag; outside one, nothing."""
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    if not _in_tune_session():
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]
