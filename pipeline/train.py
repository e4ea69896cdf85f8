"""The training driver: Ray Train's TorchTrainer running a plain Lightning loop on every worker.

The Ray-specific pieces are the ones Ray's Lightning guide names, kept visible in `train_func`:
RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback and prepare_trainer. Everything
else is an ordinary `lightning.Trainer`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, config_from_dict

FINAL_WEIGHTS = "model.safetensors"


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. `config` is plain data (it crosses process boundaries)."""
    import lightning as L
    import ray.train
    import torch
    from ray.train.lightning import (
        RayDDPStrategy,
        RayLightningEnvironment,
        RayTrainReportCallback,
        prepare_trainer,
    )

    from data.loader import TokenBatchLoader
    from data.tokenizer import load_tokenizer
    from pipeline.lightning_module import Seq2SeqModule

    _quiet_worker_logs()
    cfg = config_from_dict(config["pipeline"])
    tcfg = cfg.train
    torch.set_num_threads(tcfg.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    tokenizer = load_tokenizer(config["tokenizer_dir"])
    model_cfg = cfg.model
    loader_kw = dict(pad_id=model_cfg.pad_id, bos_id=model_cfg.bos_id, eos_id=model_cfg.eos_id, seed=cfg.seed)
    train_loader = TokenBatchLoader(
        config["train_shards"], max_tokens=tcfg.max_tokens, rank=rank, world_size=world, shuffle=True, **loader_kw
    )
    val_loader = TokenBatchLoader(
        config["valid_shards"], max_tokens=tcfg.max_tokens, rank=rank, world_size=world, shuffle=False, **loader_kw
    )
    module = Seq2SeqModule(
        model_cfg,
        tcfg,
        decode_fn=tokenizer.decode,
        bleu_sample=[(list(ids), ref) for ids, ref in config["bleu_sample"]],
        tgt_lang=cfg.data.tgt_lang,
    )

    callbacks: list[L.Callback] = [RayTrainReportCallback(), _EpochSetter(train_loader), _ProgressPrinter(tcfg.max_steps)]
    logger: Any = False
    if rank == 0:  # one writer: the driver created the run, rank 0 logs into it (mlflow#11782)
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(tracking_uri=config["tracking_uri"], run_id=config["mlflow_run_id"])
    precision = tcfg.precision if tcfg.precision != "auto" else ("bf16-mixed" if tcfg.use_gpu else "32-true")
    trainer = L.Trainer(
        max_steps=tcfg.max_steps,
        max_epochs=-1,
        accelerator="gpu" if tcfg.use_gpu else "cpu",
        devices="auto",
        strategy=RayDDPStrategy(),
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
    trainer = prepare_trainer(trainer)
    if tcfg.compile:
        module.model = torch.compile(module.model)

    ckpt_path = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resuming after a failure or a re-run of an interrupted pipeline
        ckpt_dir = checkpoint.to_directory()
        ckpt_path = os.path.join(ckpt_dir, RayTrainReportCallback.CHECKPOINT_NAME)
        if rank == 0:
            print(f"[train] resuming from {ckpt_path}", flush=True)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)

    # The final weights leave the workers as a Ray Train checkpoint (works across nodes).
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics.update({"step": trainer.global_step, "final": 1})
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            from safetensors.torch import save_model

            model = module.model._orig_mod if hasattr(module.model, "_orig_mod") else module.model
            save_model(model, os.path.join(tmp, FINAL_WEIGHTS))
            Path(tmp, "metrics.json").write_text(json.dumps(metrics))
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)


def _quiet_worker_logs() -> None:
    """Keep the driver's terminal readable: per-report INFO lines from Ray Train and Lightning's
    tips would otherwise drown the progress lines."""
    import logging
    import warnings

    for name in ("ray.train", "ray.train.v2", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")


def _callback_base():
    import lightning as L

    return L.Callback


class _EpochSetter(_callback_base()):
    """Tells the loader which epoch it is, so each epoch has its own deterministic shuffle."""

    def __init__(self, loader):
        self.loader = loader

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.loader.set_epoch(trainer.current_epoch)


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
        parts = [f"step {step}/{self.max_steps} ({100 * step / self.max_steps:.0f}%)"]
        for key, name in (("train/loss", "loss"), ("val/loss", "val_loss"), ("val/bleu", "val_bleu")):
            if key in m:
                parts.append(f"{name} {float(m[key]):.3f}")
        parts.append(f"eta {eta:.0f}s")
        print("[train] " + "  ".join(parts), flush=True)


def run_training(
    cfg: PipelineConfig,
    *,
    tokenizer_dir: Path,
    train_shards: list[str],
    valid_shards: list[str],
    bleu_sample: list[tuple[list[int], str]],
    tracking_uri: str,
    mlflow_run_id: str,
    storage_path: Path,
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
        },
        scaling_config=ScalingConfig(
            num_workers=tcfg.num_workers,
            use_gpu=tcfg.use_gpu,
            resources_per_worker={"CPU": tcfg.cpus_per_worker} | ({"GPU": 1} if tcfg.use_gpu else {}),
        ),
        torch_config=TorchConfig(backend="nccl" if tcfg.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=3),
            logging_config=LoggingConfig(log_level="WARNING"),  # no INFO line per report on the terminal
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
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
