"""Pieces of the training driver (pipeline/train.py) that need no Ray: per-batch seeding and the DDP options."""

from __future__ import annotations

import traceback

import pytest
import torch

from pipeline.train import batch_seed, ddp_strategy, seed_generators


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
