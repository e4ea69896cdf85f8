"""The training inputs and the user's errors in them, found once and never retried.

On the driver, before Ray Train starts, `check_training_inputs` checks that the token shards and
the training config fit. What only a worker can find (a tokenizer or shard it cannot open) every
rank agrees on (`first_error_of_any_rank`) and reports as a finished attempt (`report_user_error`),
which the driver raises: Ray Train would otherwise retry it like a lost worker.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from data.errors import UserError
from pipeline.config import PipelineConfig

USER_ERROR = "tpipe_user_error"  # the metric a worker reports instead of raising a user's error
USER_ERROR_FILE = "user_error.json"  # the checkpoint that carries it (see report_user_error)


class TrainingInputError(UserError):
    """The token shards and the training config do not fit together (an empty split, a pair longer
    than train.max_tokens): certain from the start, so it fails once instead of being retried."""


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
