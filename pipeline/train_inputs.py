"""Checks on the driver, before Ray Train starts, that the token shards and the training config fit.

A wrong input found here fails once with one line, instead of after Ray Train's retries.
"""

from __future__ import annotations

from data.errors import UserError
from pipeline.config import PipelineConfig


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
