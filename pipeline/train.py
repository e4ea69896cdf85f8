"""The training driver: Ray Train's TorchTrainer running a plain Lightning loop on every worker.

The Ray-specific pieces are the ones Ray's Lightning guide names, kept visible in `train_func`:
RayDDPStrategy (built by `ddp_strategy`, with its DDP options), RayLightningEnvironment,
RayTrainReportCallback and prepare_trainer. Everything else is an ordinary `lightning.Trainer`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from data.errors import UserError
from data.faults import worker_kill
from pipeline.config import PipelineConfig, config_from_dict

FINAL_WEIGHTS = "model.safetensors"
USER_ERROR = "tpipe_user_error"  # the metric a worker reports instead of raising a user's error
USER_ERROR_FILE = "user_error.json"  # the checkpoint that carries it (see report_user_error)


class TrainingInputError(UserError):
    """The token shards and the training config do not fit together (an empty split, a pair longer
    than train.max_tokens): certain from the start, so it fails once instead of being retried."""


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. `config` is plain data (it crosses process boundaries)."""
    import lightning as L
    import ray.train
    import torch
    from ray.train.lightning import RayLightningEnvironment, RayTrainReportCallback, prepare_trainer

    from data.loader import TokenBatchLoader
    from data.tokenizer import load_tokenizer
    from pipeline.artifacts import local_copy
    from pipeline.lightning_module import Seq2SeqModule

    _quiet_worker_logs()
    cfg = config_from_dict(config["pipeline"])
    tcfg = cfg.train
    torch.set_num_threads(tcfg.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    model_cfg = cfg.model
    loader_kw = dict(pad_id=model_cfg.pad_id, bos_id=model_cfg.bos_id, eos_id=model_cfg.eos_id, seed=cfg.seed)
    error = None
    try:  # a user's error here is the same on every attempt: report it once, never retry it
        # Inputs may be URIs (a remote artifact root): fetched once per node into its own cache.
        tokenizer = load_tokenizer(local_copy(config["tokenizer_dir"]))
        train_loader = TokenBatchLoader(
            [local_copy(p) for p in config["train_shards"]], max_tokens=tcfg.max_tokens, rank=rank, world_size=world, shuffle=True, **loader_kw
        )
        val_loader = TokenBatchLoader(
            [local_copy(p) for p in config["valid_shards"]], max_tokens=tcfg.max_tokens, rank=rank, world_size=world, shuffle=False, **loader_kw
        )
        len(train_loader), len(val_loader)  # the epoch plans: a split that cannot be cut fails here
    except UserError as e:
        error = str(e)
    error = first_error_of_any_rank(error)
    if error is not None:
        report_user_error(error, rank)
        return
    module = Seq2SeqModule(
        model_cfg,
        tcfg,
        decode_fn=tokenizer.decode,
        bleu_sample=[(list(ids), ref) for ids, ref in config["bleu_sample"]],
        tgt_lang=cfg.data.tgt_lang,
    )

    callbacks: list[L.Callback] = [
        ReportOnValidation(),  # a Ray Train checkpoint after every validation, scored by val_loss
        TrainingState(train_loader, cfg.seed),  # loader position in each checkpoint; RNG seeded per batch
        _ProgressPrinter(tcfg.max_steps),
    ]
    if config.get("inject_kill"):  # fault-tolerance tests only: see run_training
        callbacks.append(_KillOnce(*config["inject_kill"]))
    logger: Any = False
    if rank == 0:  # one writer: the driver created the run, rank 0 logs into it (mlflow#11782)
        from lightning.pytorch.loggers import MLFlowLogger

        class DriverOwnedRun(MLFlowLogger):
            """Logs into the driver's run but never ends it: its status is the driver's to set
            (FINISHED, FAILED, or KILLED on Ctrl-C, which a worker's own teardown would overwrite)."""

            def finalize(self, status: str = "success") -> None:
                pass

        logger = DriverOwnedRun(tracking_uri=config["tracking_uri"], run_id=config["mlflow_run_id"])
    precision = tcfg.precision if tcfg.precision != "auto" else ("bf16-mixed" if tcfg.use_gpu else "32-true")
    trainer = L.Trainer(
        max_steps=tcfg.max_steps,
        max_time=_max_time(tcfg.max_seconds),
        max_epochs=-1,
        accelerator="gpu" if tcfg.use_gpu else "cpu",
        devices="auto",
        strategy=ddp_strategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=callbacks,
        logger=logger,
        precision=precision,
        gradient_clip_val=tcfg.grad_clip or None,
        accumulate_grad_batches=tcfg.accumulate_grad_batches,
        val_check_interval=tcfg.val_every_steps,
        check_val_every_n_epoch=None,
        log_every_n_steps=tcfg.log_every_steps,
        num_sanity_val_steps=0,
        enable_checkpointing=False,  # Ray Train owns checkpoints (RayTrainReportCallback)
        enable_progress_bar=False,  # worker output is interleaved; _ProgressPrinter prints instead
        enable_model_summary=False,
        use_distributed_sampler=False,  # TokenBatchLoader already partitions by rank
        deterministic=True,
    )
    # deterministic=True also fills every new tensor with NaN (a guard against reading uninitialized
    # memory); none of our ops reads it, and the fill is a pass over every activation. The loss
    # curve stays bit-identical across runs and resumes (tests/pipeline/test_e2e.py).
    torch.utils.deterministic.fill_uninitialized_memory = False
    trainer = prepare_trainer(trainer)
    if tcfg.compile:
        module.model = torch.compile(module.model)

    ckpt_path = None
    checkpoint = ray.train.get_checkpoint()
    ckpt_dir = checkpoint.to_directory() if checkpoint is not None else None
    if ckpt_dir is not None and os.path.exists(os.path.join(ckpt_dir, USER_ERROR_FILE)):
        ckpt_dir = None  # the record of an earlier attempt's user error, not a training state
    if ckpt_dir is not None:  # resuming after a failure or a re-run of an interrupted pipeline
        if os.path.exists(os.path.join(ckpt_dir, FINAL_WEIGHTS)):
            # An earlier attempt finished training and only the driver was lost: hand the result back.
            metrics = json.loads(Path(ckpt_dir, "metrics.json").read_text())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir) if rank == 0 else None)
            return
        ckpt_path = os.path.join(ckpt_dir, RayTrainReportCallback.CHECKPOINT_NAME)
        if rank == 0:
            print(f"[train] resuming from {ckpt_path}", flush=True)
    # The loader goes to Lightning wrapped as a plain iterable: TrainingState owns its position,
    # because Lightning's own loader state is read one prefetched batch too late.
    trainer.fit(
        module,
        train_dataloaders=_Batches(train_loader),
        val_dataloaders=_FullPasses(val_loader),
        ckpt_path=ckpt_path,
        weights_only=True,  # checkpoints hold tensors and plain Python values only
    )

    # The final weights leave the workers as a Ray Train checkpoint (works across nodes).
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update({"step": trainer.global_step, "final": 1})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            from safetensors.torch import save_model

            module.use_ema_weights()  # train.ema_decay: the moving average is the trained model
            model = module.model._orig_mod if hasattr(module.model, "_orig_mod") else module.model
            save_model(model, os.path.join(tmp, FINAL_WEIGHTS))
            Path(tmp, "metrics.json").write_text(json.dumps(metrics))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def report_user_error(error: str, rank: int) -> None:
    """End this attempt as finished, carrying the user's error to the driver (run_training raises it).

    Ray Train keeps a result's metrics only with a checkpoint, so rank 0 reports a checkpoint that
    holds just the message (USER_ERROR_FILE); every rank reports, as Ray Train requires.
    """
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            Path(tmp, USER_ERROR_FILE).write_text(json.dumps({"error": error}))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"val_loss": float("inf"), USER_ERROR: error}, checkpoint=ckpt)


def first_error_of_any_rank(error: str | None) -> str | None:
    """The error message of the lowest rank that has one, on every rank (None when none has).

    Ray Train retries any worker that raises (a lost worker and a wrong input look alike to it);
    ranks that agree on a user's error can instead all report it and end, and the driver raises it.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return error
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)


def check_training_inputs(cfg: PipelineConfig, train_shards: list[str], valid_shards: list[str]) -> None:
    """On the driver, before Ray Train starts: every rank gets a batch of each split, the longest pair
    fits train.max_tokens, and the first epoch's batches divide among the ranks. Reads the length
    columns only (the plan costs about a microsecond a row)."""
    import pyarrow.parquet as pq

    from data.loader import TokenBatchLoader

    world = cfg.train.num_workers
    for split, shards in (("train", train_shards), ("valid", valid_shards)):
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
        if rows < world:
            hint = "raise data.valid_fraction or give data.valid_paths" if split == "valid" else "add data to data.paths"
            raise TrainingInputError(
                f"the {split} split has {rows} pair(s), fewer than train.num_workers={world} (each rank needs a "
                f"batch); {hint}, or lower train.num_workers"
            )
        try:
            loader = TokenBatchLoader(shards, max_tokens=cfg.train.max_tokens, pad_id=0, bos_id=1, eos_id=2,
                                      seed=cfg.seed, world_size=world, shuffle=split == "train")
            len(loader)  # the first epoch's plan, as every rank makes it
        except UserError as e:
            raise TrainingInputError(f"the {split} split: {e}") from None


def _max_time(seconds: float):
    """train.max_time for Lightning, whose Timer stops at the first optimizer step past it and keeps
    the time spent in the checkpoint, so a resumed run stops at the same total budget."""
    import datetime

    return datetime.timedelta(seconds=seconds) if seconds > 0 else None


def ddp_strategy():
    """Ray's DDP strategy, with the two DDP options that cost a step something and buy tpipe nothing.

    broadcast_buffers=False: DDP would otherwise broadcast every buffer from rank 0 before each
    forward (a collective per step, even at world size 1). The model's only buffer is the sinusoid
    table, a function of the config, identical on every rank by construction.
    gradient_as_bucket_view=True: gradients live in DDP's all-reduce buckets instead of being copied
    into them and back after every backward.
    """
    from ray.train.lightning import RayDDPStrategy

    return RayDDPStrategy(broadcast_buffers=False, gradient_as_bucket_view=True)


def _quiet_worker_logs() -> None:
    """Keep the driver's terminal readable: per-report INFO lines from Ray Train and Lightning's
    tips would otherwise drown the progress lines."""
    import logging
    import warnings

    # Ray Train configures the root logger at INFO on workers, and some of its per-report lines
    # come from loggers outside the `ray.train` tree (named by file path), so raise the root too.
    for name in ("", "ray.train", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")


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


def fit_in_a_thread(trainer):
    """trainer.fit() in a helper thread, so that Ctrl-C and SIGTERM reach tpipe at once.

    On the main thread Ray Train installs a SIGINT handler of its own: it asks the controller to
    abort gracefully (the workers go on for seconds, checkpointing), then exits with status 1 and
    no message, and stays installed afterwards. From any other thread it installs none (as under
    Ray Tune). The main thread waits here, interruptibly; an interrupt unwinds as tpipe's
    (pipeline/runner.py): the step is recorded `interrupted` and Ray is shut down, which ends the
    workers. Ray Train keeps only completed checkpoints, so a re-run resumes from the last one.
    """
    import threading

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def tune_callbacks() -> list:
    """Inside a `tpipe sweep` trial (pipeline/sweep.py), every validation's metrics also go to Tune,
    whose scheduler stops the trials that lag; outside one, nothing."""
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    if not _in_tune_session():
        return []
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def run_training(
    cfg: PipelineConfig,
    *,
    tokenizer_dir: str,
    train_shards: list[str],
    valid_shards: list[str],
    bleu_sample: list[tuple[list[int], str]],
    tracking_uri: str,
    mlflow_run_id: str,
    storage_path: str,
    name: str,
    out_dir: Path,
) -> dict[str, Any]:
    """Launch TorchTrainer and copy the final weights into `out_dir`. Returns the final metrics.

    `name` + `storage_path` identify the Ray Train run: re-running with the same pair resumes from
    its latest checkpoint (Ray Train restores its checkpoint manager from storage).
    """
    import shutil

    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tcfg = cfg.train
    inject_kill = worker_kill(os.path.join(str(storage_path), name))  # for fault-tolerance tests
    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            "pipeline": cfg.to_dict(),
            "tokenizer_dir": str(tokenizer_dir),
            "train_shards": train_shards,
            "valid_shards": valid_shards,
            "bleu_sample": bleu_sample,
            "tracking_uri": tracking_uri,
            "mlflow_run_id": mlflow_run_id,
            "inject_kill": inject_kill,
        },
        scaling_config=ScalingConfig(
            num_workers=tcfg.num_workers,
            use_gpu=tcfg.use_gpu,
            resources_per_worker={"CPU": tcfg.cpus_per_worker} | ({"GPU": 1} if tcfg.use_gpu else {})
            | ({tcfg.node_resource: 1} if tcfg.node_resource else {}),
        ),
        torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=tcfg.max_failures),
            # top k by validation loss; Ray never deletes the latest, which resume needs
            checkpoint_config=CheckpointConfig(
                num_to_keep=tcfg.keep_checkpoints, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
            logging_config=LoggingConfig(log_level="WARNING"),  # no INFO line per report on the terminal
            callbacks=tune_callbacks(),
        ),
    )
    result = fit_in_a_thread(trainer)
    if result.error is not None:
        raise result.error
    if (result.metrics or {}).get(USER_ERROR):
        raise TrainingInputError(result.metrics[USER_ERROR])
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        src = Path(d) / FINAL_WEIGHTS
        if not src.exists():
            raise RuntimeError(f"the last checkpoint of {name} ({d}) has no {FINAL_WEIGHTS}")
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out_dir / FINAL_WEIGHTS)
        metrics = json.loads((Path(d) / "metrics.json").read_text())
    return metrics
