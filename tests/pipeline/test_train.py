"""Pieces of the training driver (pipeline/train.py) that need no Ray: per-batch seeding and the DDP options."""

from __future__ import annotations

import traceback

import pytest
import torch

from pipeline.callbacks import batch_seed, seed_generators
from pipeline.train import ddp_strategy


def test_seed_generators_draws_what_torch_manual_seed_draws_on_cpu():
    seed = batch_seed(0, rank=1, epoch=2, position=3)
    torch.manual_seed(seed)
    expected = torch.rand(64), torch.nn.functional.dropout(torch.ones(64), 0.5)
    torch.manual_seed(seed + 1)  # move the generator away first
    seed_generators(seed, torch.device("cpu"))
    got = torch.rand(64), torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_seed_generators_on_cpu_formats_no_stack_trace(monkeypatch):
    # torch.manual_seed queues seeds for accelerators that are not initialized, with a formatted
    # stack trace each time (milliseconds at Lightning's depth, every training step).
    def fail(*args, **kwargs):
        raise AssertionError("seeding formatted a stack trace")

    monkeypatch.setattr(traceback, "format_stack", fail)
    seed_generators(batch_seed(0, 0, 0, 0), torch.device("cpu"))


def test_ddp_strategy_skips_buffer_broadcasts_and_gradient_copies():
    kwargs = ddp_strategy()._ddp_kwargs
    assert kwargs["broadcast_buffers"] is False and kwargs["gradient_as_bucket_view"] is True


@pytest.mark.parametrize("position", [0, 1, 1000])
def test_batch_seed_is_a_stable_63_bit_function_of_its_inputs(position):
    s = batch_seed(7, 0, 0, position)
    assert s == batch_seed(7, 0, 0, position) and 0 <= s < 2**63
    assert s != batch_seed(7, 1, 0, position) and s != batch_seed(7, 0, 1, position)


def _token_shard(path, rows: list[tuple[int, int]]) -> str:
    """A token shard whose rows have the given (source, target) lengths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.shards import TOKEN_SCHEMA

    src, tgt = [[5] * s for s, _ in rows], [[6] * t for _, t in rows]
    pq.write_table(pa.table([pa.array(src, pa.list_(pa.int32())), pa.array(tgt, pa.list_(pa.int32())),
                             pa.array([s for s, _ in rows], pa.int32()), pa.array([t for _, t in rows], pa.int32())],
                            schema=TOKEN_SCHEMA), path)
    return str(path)


@pytest.mark.parametrize(
    "overrides,train_rows,valid_rows,needles",
    [
        ([], [(3, 3)] * 2, [], ["valid split has 0 pair(s)", "train.num_workers=2", "data.valid_fraction"]),
        ([], [(3, 3)], [(3, 3)] * 4, ["train split has 1 pair(s)", "train.num_workers=2"]),
        (["train.max_tokens=16"], [(3, 3), (20, 18)], [(3, 3)] * 2, ["train split", "needs 41 tokens", "train.max_tokens"]),
        # 3 rows of 6 + 8 tokens each: one row a batch, and 3 batches cannot be split over 2 ranks
        (["train.max_tokens=16"], [(3, 3)] * 2, [(5, 6)] * 3, ["valid split", "single-row batches", "train.max_tokens"]),
    ],
    ids=["empty_valid", "one_train_pair", "pair_over_max_tokens", "batches_not_divisible"],
)
def test_training_inputs_are_checked_on_the_driver(tmp_path, overrides, train_rows, valid_rows, needles):
    """What would fail identically on every Ray Train attempt is refused before Ray Train starts."""
    from data.errors import UserError
    from pipeline.config import load_config
    from pipeline.train_inputs import check_training_inputs

    cfg = load_config("smoke", overrides)
    train = _token_shard(tmp_path / "train.parquet", train_rows)
    valid = _token_shard(tmp_path / "valid.parquet", valid_rows)
    with pytest.raises(UserError) as e:
        check_training_inputs(cfg, [train], [valid])
    assert all(n in str(e.value) for n in needles), str(e.value)
    assert "\n" not in str(e.value)
    fine = _token_shard(tmp_path / "fine.parquet", [(3, 3)] * 2)
    check_training_inputs(load_config("smoke"), [train, fine], [fine])  # the same shards with enough rows pass


@pytest.mark.parametrize("accumulate", [1, 3])
def test_validation_comes_every_val_every_steps_optimizer_steps_whatever_the_accumulation(accumulate):
    """train.val_every_steps counts optimizer steps, as max_steps does, also when a step is several batches."""
    import lightning as L

    from pipeline.config import TrainConfig
    from pipeline.lightning_module import Seq2SeqModule
    from pipeline.train import trainer_settings
    from tests.pipeline.test_lightning_module import copy_batch, small_model_cfg

    class ValidatedAt(L.Callback):
        def __init__(self):
            self.steps: list[int] = []

        def on_validation_end(self, trainer, pl_module):
            self.steps.append(trainer.global_step)

    gen = torch.Generator().manual_seed(0)
    batches = [copy_batch(gen, n=4) for _ in range(40)]
    tcfg = TrainConfig(max_steps=8, val_every_steps=4, accumulate_grad_batches=accumulate, warmup_steps=2)
    settings = trainer_settings(tcfg) | dict(logger=False)
    seen = ValidatedAt()
    trainer = L.Trainer(callbacks=[seen], **settings)
    trainer.fit(Seq2SeqModule(small_model_cfg(), tcfg), train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None),
                val_dataloaders=torch.utils.data.DataLoader(batches[:2], batch_size=None))
    assert trainer.global_step == 8
    assert seen.steps == [4, 8], seen.steps
