"""The LightningModule: schedule, padding-aware loss, and that a plain Lightning loop learns."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import ModelConfig
from pipeline.config import TrainConfig
from pipeline.lightning_module import Seq2SeqModule, lr_lambda

PAD, BOS, EOS = 0, 1, 2


def small_model_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=16, d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.0, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


def copy_batch(gen: torch.Generator, n: int = 32, length: int = 5) -> dict[str, torch.Tensor]:
    body = torch.randint(3, 16, (n, length), generator=gen)
    src = torch.cat([body, torch.full((n, 1), EOS)], 1)
    tgt = torch.cat([torch.full((n, 1), BOS), body, torch.full((n, 1), EOS)], 1)
    return {"src": src, "tgt": tgt}


@pytest.mark.parametrize("schedule", ["inverse_sqrt", "cosine", "constant"])
def test_schedule_warms_up_to_peak_then_decays(schedule):
    f = lr_lambda(schedule, warmup_steps=10, max_steps=100)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)  # the peak lr exactly at the end of warmup
    if schedule == "inverse_sqrt":
        assert f(39) == pytest.approx(math.sqrt(10 / 40))
    if schedule == "cosine":
        assert f(99) == pytest.approx(0.0, abs=1e-9)
    if schedule == "constant":
        assert f(99) == 1.0


def test_adamw_takes_its_betas_and_eps_from_the_config():
    module = Seq2SeqModule(small_model_cfg(), TrainConfig(adam_beta2=0.999, adam_eps=1e-8, weight_decay=0.05))
    opt = module.configure_optimizers()["optimizer"]
    assert {(g["betas"], g["eps"]) for g in opt.param_groups} == {((0.9, 0.999), 1e-8)}
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    default = Seq2SeqModule(small_model_cfg(), TrainConfig()).configure_optimizers()["optimizer"]
    assert default.param_groups[0]["betas"] == (0.9, 0.98) and default.param_groups[0]["eps"] == 1e-9


def test_loss_ignores_padding():
    torch.manual_seed(0)
    module = Seq2SeqModule(small_model_cfg(), TrainConfig(label_smoothing=0.0))
    module.eval()
    batch = copy_batch(torch.Generator().manual_seed(0), n=4)
    loss, stats = module._loss(batch, 0.0)
    padded = {k: torch.cat([v, torch.full((v.size(0), 3), PAD)], 1) for k, v in batch.items()}
    loss_padded, stats_padded = module._loss(padded, 0.0)
    assert torch.allclose(loss, loss_padded, atol=1e-6)
    assert stats["n_tokens"] == stats_padded["n_tokens"] == 4 * 6


def test_label_smoothing_raises_the_loss_of_a_confident_model():
    torch.manual_seed(0)
    module = Seq2SeqModule(small_model_cfg(), TrainConfig())
    batch = copy_batch(torch.Generator().manual_seed(1), n=4)
    plain, _ = module._loss(batch, 0.0)
    smoothed, _ = module._loss(batch, 0.1)
    assert not torch.allclose(plain, smoothed)


def test_plain_lightning_loop_learns_to_copy():
    import lightning as L

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batches = [copy_batch(gen) for _ in range(150)]
    tcfg = TrainConfig(lr=3e-3, warmup_steps=20, max_steps=150, label_smoothing=0.0, log_every_steps=10)
    module = Seq2SeqModule(small_model_cfg(), tcfg)
    with torch.no_grad():
        before, _ = module._loss(batches[0], 0.0)
    trainer = L.Trainer(
        max_steps=150, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    module.eval()
    with torch.no_grad():
        after, stats = module._loss(copy_batch(torch.Generator().manual_seed(99)), 0.0)
    assert after < 0.3 * before, (before, after)
    assert trainer.callback_metrics["train/accuracy"] > 0.5


def test_load_from_checkpoint_rebuilds_the_module(tmp_path):
    """`Seq2SeqModule.load_from_checkpoint(ckpt)` needs no arguments: the configs travel in the
    checkpoint as plain values (loadable with weights_only=True, no pickled classes)."""
    import lightning as L

    model_cfg = small_model_cfg(d_model=16, d_ff=32)
    module = Seq2SeqModule(model_cfg, TrainConfig(max_steps=1, warmup_steps=1), tgt_lang="zh")
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([copy_batch(torch.Generator())], batch_size=None))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = Seq2SeqModule.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert loaded.model_cfg == model_cfg and loaded.train_cfg == module.train_cfg and loaded.tgt_lang == "zh"
    for name, value in module.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_steps_between_logging_steps_read_nothing_back_from_the_device(monkeypatch):
    """On a GPU every .item() (or bool/float of a tensor) waits for the queued kernels: one per step
    stalls the host and costs throughput (bench/gpu_train.py). CPU has no such wait, so this counts
    the calls themselves: between logging steps, nothing in tpipe or Lightning may read a tensor
    back. torch.optim is exempt: AdamW's step counters live on the host even when training on a GPU.
    """
    import traceback

    import lightning as L

    from pipeline.callbacks import TrainingState, _Batches, _ProgressPrinter

    every = 10
    reads: dict[int, list[str]] = {}
    trainer_ref: list[L.Trainer] = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            stack = traceback.extract_stack()[:-1]
            if trainer_ref and not any("/torch/optim/" in f.filename for f in stack):
                caller = next(f for f in reversed(stack) if "/torch/" not in f.filename)
                reads.setdefault(trainer_ref[0].global_step, []).append(f"{name} at {caller.filename}:{caller.lineno}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        counting(name)

    class Loader:  # what TrainingState expects of TokenBatchLoader
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            return iter(self.batches)

        def __len__(self):
            return len(self.batches)

        def set_epoch(self, epoch):
            pass

    gen = torch.Generator().manual_seed(0)
    loader = Loader([copy_batch(gen) for _ in range(40)])
    tcfg = TrainConfig(lr=1e-3, warmup_steps=5, max_steps=40, log_every_steps=every)
    module = Seq2SeqModule(small_model_cfg(), tcfg)
    trainer = L.Trainer(  # the flags train_func uses, less Ray's strategy
        max_steps=40, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0, deterministic=True,
        log_every_n_steps=every, callbacks=[TrainingState(loader, 0), _ProgressPrinter(40)],
    )
    trainer_ref.append(trainer)
    trainer.fit(module, train_dataloaders=_Batches(loader))

    # A logging step's reads may land just before or after its optimizer step (Lightning's logger
    # connector counts steps from 1), so the steps next to a multiple of `every` are allowed too.
    stray = {step: calls for step, calls in reads.items() if step % every not in (every - 1, 0, 1)}
    assert not stray, stray
    assert any(step % every in (every - 1, 0, 1) for step in reads), "the counter saw no read at all: is it wired?"


def test_validation_bleu_decodes_under_the_registered_models_length_bound():
    """val/bleu's sample is decoded with eval.max_len_a/b, as the registered model decodes: an
    untrained model's outputs run to max_len without the bound and stop at a·S + b with it."""
    sources = [[5, 6, 7, 8, 9, EOS], [4, 5, EOS]]
    lengths: dict[str, list[int]] = {"unbounded": [], "bounded": []}
    for name, (a, b) in {"unbounded": (0.0, 0), "bounded": (0.5, 1)}.items():
        torch.manual_seed(0)
        module = Seq2SeqModule(small_model_cfg(), TrainConfig(), decode_fn=lambda ids, n=name: lengths[n].append(len(ids)) or "x",
                               bleu_sample=[(s, "y") for s in sources], max_len_a=a, max_len_b=b)
        module._sample_bleu()
    # ⌊0.5·S + 1⌋ for S = 6 and 3 source tokens: 4 and 2
    assert all(n <= limit for n, limit in zip(lengths["bounded"], [4, 2])), lengths
    assert max(lengths["unbounded"]) > 4, lengths  # the bound is what cut them
