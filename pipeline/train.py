"""The training driver: Ray Train's TorchTrainer running a plain Lightning loop on every worker.

The Ray-specific pieces are the ones Ray's Lightning guide names, kept visible in `train_func`:
RayDDPStrategy (built by `ddp_strategy`, with its DDP options), RayLightningEnvironment,
RayTrainReportCallback and prepare_trainer. Everything else is an ordinary `lightning.Trainer`.

On the driver, `train_model` (called by the train step) checks the inputs (pipeline/train_inputs.py),
logs the config and runs `run_training`, which launches the TorchTrainer and brings the final weights
back. On each worker, `train_func` builds the loaders, the Seq2SeqModule (pipeline/lightning_module.py)
and the Trainer with the callbacks of pipeline/callbacks.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from data.errors import UserError
from pipeline.callbacks import (
    ReportOnValidation, TrainingState, _Batches, _FullPasses, _KillOnce, _ProgressPrinter, driver_owned_run,
    tune_callbacks,
)
from data.faults import worker_kill
from pipeline.config import PipelineConfig, config_from_dict
from pipeline.train_inputs import (
    USER_ERROR, USER_ERROR_FILE, TrainingInputError, first_error_of_any_rank, report_user_error,
)

FINAL_WEIGHTS = "model.safetensors"


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker. `config` is plain data (it crosses process boundaries)."""
    import lightning as L
    import ray.train
    import torch
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer

    from pipeline.lightning_module import Seq2SeqModule

    _quiet_worker_logs()
    cfg = config_from_dict(config["pipeline"])
    torch.set_num_threads(cfg.train.threads_per_worker)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    inputs, error = open_inputs(config, cfg, rank, world)
    error = first_error_of_any_rank(error)  # a user's error is the same on every attempt: report it once
    if error is not None:
        report_user_error(error, rank)
        return
    tokenizer, train_loader, val_loader = inputs
    bleu_sample = [(list(ids), ref) for ids, ref in config["bleu_sample"]]
    module = Seq2SeqModule(cfg.model, cfg.train, tokenizer.decode, bleu_sample, tgt_lang=cfg.data.tgt_lang,
                           max_len_a=cfg.eval.max_len_a, max_len_b=cfg.eval.max_len_b)
    callbacks: list[L.Callback] = [
        ReportOnValidation(),  # a Ray Train checkpoint after every validation, scored by val_loss
        TrainingState(train_loader, cfg.seed),  # loader position in each checkpoint; RNG seeded per batch
        _ProgressPrinter(cfg.train.max_steps),
    ]
    callbacks += [_KillOnce(*config["inject_kill"])] if config.get("inject_kill") else []  # tests only: run_training
    # One writer: the driver created the run, rank 0 logs into it (mlflow#11782).
    logger = driver_owned_run(config["tracking_uri"], config["mlflow_run_id"]) if rank == 0 else False
    trainer = L.Trainer(strategy=ddp_strategy(), plugins=[RayLightningEnvironment()], callbacks=callbacks,
                        logger=logger, **trainer_settings(cfg.train))
    # deterministic=True also fills every new tensor with NaN (a guard against reading uninitialized
    # memory); none of our ops reads it, and the fill is a pass over every activation. The loss
    # curve stays bit-identical across runs and resumes (tests/pipeline/test_e2e.py).
    torch.utils.deterministic.fill_uninitialized_memory = False
    trainer = prepare_trainer(trainer)
    if cfg.train.compile:
        module.model = torch.compile(module.model)

    ckpt_dir = training_checkpoint()  # resuming after a failure or a re-run of an interrupted pipeline
    if ckpt_dir is not None and os.path.exists(os.path.join(ckpt_dir, FINAL_WEIGHTS)):
        report_finished_training(ckpt_dir, rank)  # an earlier attempt finished; only the driver was lost
        return
    # The loader goes to Lightning wrapped as a plain iterable: TrainingState owns its position,
    # because Lightning's own loader state is read one prefetched batch too late.
    trainer.fit(module, train_dataloaders=_Batches(train_loader), val_dataloaders=_FullPasses(val_loader),
                ckpt_path=resume_path(ckpt_dir, rank), weights_only=True)  # tensors and plain values only
    report_final_weights(trainer, module, rank)


def open_inputs(config: dict[str, Any], cfg: PipelineConfig, rank: int, world: int):
    """((tokenizer, train loader, validation loader), None), or (None, the user's error message).

    Inputs may be URIs (a remote artifact root): fetched once per node into its own cache.
    """
    from data.exchange import local_copy
    from data.loader import TokenBatchLoader
    from data.tokenizer import load_tokenizer

    m = cfg.model
    kw = dict(max_tokens=cfg.train.max_tokens, rank=rank, world_size=world, pad_id=m.pad_id, bos_id=m.bos_id,
              eos_id=m.eos_id, seed=cfg.seed)
    try:
        tokenizer = load_tokenizer(local_copy(config["tokenizer_dir"]))
        train_loader = TokenBatchLoader([local_copy(p) for p in config["train_shards"]], shuffle=True, **kw)
        val_loader = TokenBatchLoader([local_copy(p) for p in config["valid_shards"]], shuffle=False, **kw)
        len(train_loader), len(val_loader)  # the epoch plans: a split that cannot be cut fails here
    except UserError as e:
        return None, str(e)
    return (tokenizer, train_loader, val_loader), None


def trainer_settings(tcfg) -> dict[str, Any]:
    """The plain `lightning.Trainer` arguments of a TrainConfig (Ray's strategy and plugin are added by train_func)."""
    precision = tcfg.precision if tcfg.precision != "auto" else ("bf16-mixed" if tcfg.use_gpu else "32-true")
    return dict(
        max_steps=tcfg.max_steps,
        max_time=_max_time(tcfg.max_seconds),
        max_epochs=-1,
        accelerator="gpu" if tcfg.use_gpu else "cpu",
        devices="auto",
        precision=precision,
        gradient_clip_val=tcfg.grad_clip or None,
        accumulate_grad_batches=tcfg.accumulate_grad_batches,
        # Lightning counts val_check_interval in batches, not optimizer steps: with accumulation a step
        # is `accumulate_grad_batches` batches, and validation (and so Ray Train's checkpoints) would
        # come that many times too often.
        val_check_interval=tcfg.val_every_steps * tcfg.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        log_every_n_steps=tcfg.log_every_steps,
        num_sanity_val_steps=0,
        enable_checkpointing=False,  # Ray Train owns checkpoints (RayTrainReportCallback)
        enable_progress_bar=False,  # worker output is interleaved; _ProgressPrinter prints instead
        enable_model_summary=False,
        use_distributed_sampler=False,  # TokenBatchLoader already partitions by rank
        deterministic=True,
    )


def training_checkpoint() -> str | None:
    """The folder of Ray Train's latest checkpoint of this run, or None (a fresh start).

    The record of an earlier attempt's user error (USER_ERROR_FILE) is no training state: None too.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    ckpt_dir = checkpoint.to_directory() if checkpoint is not None else None
    if ckpt_dir is not None and os.path.exists(os.path.join(ckpt_dir, USER_ERROR_FILE)):
        return None
    return ckpt_dir


def resume_path(ckpt_dir: str | None, rank: int) -> str | None:
    """The Lightning checkpoint inside Ray Train's checkpoint folder, or None for a fresh start."""
    from ray.train.lightning import RayTrainReportCallback

    if ckpt_dir is None:
        return None
    ckpt_path = os.path.join(ckpt_dir, RayTrainReportCallback.CHECKPOINT_NAME)
    if rank == 0:
        print(f"[train] resuming from {ckpt_path}", flush=True)
    return ckpt_path


def report_finished_training(ckpt_dir: str, rank: int) -> None:
    """An earlier attempt finished training and only the driver was lost: hand its result back as is."""
    import ray.train

    metrics = json.loads(Path(ckpt_dir, "metrics.json").read_text())
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir) if rank == 0 else None)


def report_final_weights(trainer, module, rank: int) -> None:
    """The final weights leave the workers as a Ray Train checkpoint (works across nodes), with the metrics."""
    import ray.train

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


def _torch_trainer_class():
    """TorchTrainer; outside a sweep, without Ray Train's placement-group cleaner.

    Ray 2.60 starts a detached PlacementGroupCleaner beside each run's controller. It asks the
    dashboard's State API every few seconds whether the controller lives, and reads an empty answer
    as "dead" (a known false positive, noted in the review of ray-project/ray#65447): on a busy machine, where the State API
    answers late or empty, it removes the live run's placement group and Ray kills the workers
    mid-training (seen here at load 16 on 2 cores: "Destroying worker since its placement group was
    removed", 25 minutes of training lost before the first checkpoint). Outside Tune nothing needs
    it: the placement group belongs to this run's driver and goes with it. Inside a `tpipe sweep`
    trial it stays, because a trial that Tune stops would otherwise hold its CPUs until the sweep ends.
    """
    from ray.train.torch import TorchTrainer
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    if _in_tune_session():
        return TorchTrainer

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks() if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return Trainer


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
    from ray.train.torch import TorchConfig

    tcfg = cfg.train
    inject_kill = worker_kill(os.path.join(str(storage_path), name))  # for fault-tolerance tests
    trainer = _torch_trainer_class()(
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


def with_tokenizer_ids(cfg: PipelineConfig, tokenizer) -> PipelineConfig:
    """The config with the model's vocabulary and special ids from the tokenizer, never from hand-set config."""
    import dataclasses

    model_cfg = dataclasses.replace(
        cfg.model, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    )
    return dataclasses.replace(cfg, model=model_cfg)


def bleu_sample(tokenizer, pairs: list[tuple[str, str]], model_cfg) -> list[tuple[list[int], str]]:
    """(framed source ids, reference text) of a fixed validation sample, for BLEU during training
    (greedy decoding on rank 0's schedule); it travels to the workers as data."""
    from data.framing import frame_source

    ids = tokenizer.encode_batch([s for s, _ in pairs])
    return [(frame_source(x, model_cfg.eos_id, model_cfg.max_seq_len), ref) for x, (_, ref) in zip(ids, pairs)]


def train_model(
    cfg: PipelineConfig, tokenizer, valid_pairs: list[tuple[str, str]], *, shards: dict[str, list[str]],
    locations: dict[str, list[str]], tokenizer_location: str, storage_path: str, name: str, out_dir: Path,
):
    """Train on Ray Train inside the active MLflow run; returns (the trained Transformer, final metrics).

    `shards` are the token shards of "train" and "valid" on this machine (checked here, before Ray
    Train starts); `locations` the same as workers open them (URIs when the artifact root is remote).
    The weights stay in `out_dir`/FINAL_WEIGHTS until the caller has packaged them.
    """
    import mlflow
    from safetensors.torch import load_model

    from model.transformer import Transformer
    from pipeline.tracking import log_dict_params
    from pipeline.train_inputs import check_training_inputs

    # an empty split or a pair longer than train.max_tokens: one line now, not after Ray Train's retries
    check_training_inputs(cfg, shards["train"], shards["valid"])
    # One MLflow run per training, created on the driver (the step's nested run, see
    # runner.mlflow_step_run; an interrupted attempt's run is continued); its id goes to the workers.
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("the train step runs inside an MLflow run (pipeline.runner.mlflow_step_run)")
    if "train.max_steps" not in mlflow.get_run(run.info.run_id).data.params:
        log_dict_params(cfg.to_dict())
    mlflow.set_tags({"tpipe.tokenizer_fingerprint": tokenizer.fingerprint})
    metrics = run_training(
        cfg, tokenizer_dir=tokenizer_location, train_shards=locations["train"], valid_shards=locations["valid"],
        bleu_sample=bleu_sample(tokenizer, valid_pairs, cfg.model), tracking_uri=mlflow.get_tracking_uri(),
        mlflow_run_id=run.info.run_id, storage_path=storage_path, name=name, out_dir=out_dir,
    )
    model = Transformer(cfg.model)
    load_model(model, str(out_dir / FINAL_WEIGHTS))
    return model, metrics
