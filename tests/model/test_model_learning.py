"""The tiny preset learns the copy and reverse tasks to ≥ 99% exact match (greedy) in bounded steps.

A plain torch loop on CPU: 8 symbols, lengths 1..6, batches of 32, AdamW with warmup and linear decay.
Training stops as soon as the held-out exact match reaches 99% (checked every 25 steps); the bound is
MAX_STEPS. Typically copy gets there in ~250 steps and reverse in ~300 (30-60 s each on a busy
2-core machine).
"""

from __future__ import annotations

import pytest
import torch
from model_testlib import EOS, copy_reverse_batch, train_steps

from model.config import ModelConfig
from model.generation import greedy_search
from model.transformer import Transformer

N_SYMBOLS, MAX_LEN = 8, 6
MAX_STEPS = 450
TARGET = 0.99


@pytest.mark.slow
@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_tiny_preset_learns_the_task(task):
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=3 + N_SYMBOLS, dropout=0.0)
    model = Transformer(cfg)
    held_out = copy_reverse_batch(300, task, torch.Generator().manual_seed(99), N_SYMBOLS, MAX_LEN)
    src, refs = held_out[0], [row[: row.index(EOS)] for row in held_out[2].tolist()]

    history = []
    batches = torch.Generator().manual_seed(0)
    for step, loss in train_steps(
        model, task, MAX_STEPS, 2e-3, 32, batches, warmup=20, n_symbols=N_SYMBOLS, max_len=MAX_LEN
    ):
        if step % 25 or step < 100:
            continue
        model.eval()
        hyps = greedy_search(model, src, max_len=MAX_LEN + 1)
        model.train()
        exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
        history.append((step, round(loss, 4), exact))
        if exact >= TARGET:
            break
    print(f"{task}: (step, loss, exact match) = {history}")  # shown with -s
    assert history and history[-1][2] >= TARGET, f"{task}: (step, loss, exact match) = {history}"
