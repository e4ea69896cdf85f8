"""train.max_time (the wall-clock budget, its schedule and its resume) and train.ema_decay."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.config import ConfigError, TrainConfig, load_config, parse_duration
from pipeline.lightning_module import Seq2SeqModule, lr_lambda
from pipeline.train import _max_time
from tests.pipeline.test_lightning_module import copy_batch, small_model_cfg

STEP_S = 0.3  # a training step made slow and regular, so that budgets are a few steps long


@pytest.mark.parametrize("text,seconds", [("90s", 90.0), ("20m", 1200.0), ("1h30m", 5400.0), ("2d", 172800.0),
                                          ("45", 45.0), ("", 0.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_malformed_budget_is_refused_with_its_key():
    with pytest.raises(ConfigError, match=r"train\.max_time: '20 minutes' is not a duration"):
        load_config("smoke", ["train.max_time=20 minutes"])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_the_schedule_ends_at_the_time_budget(schedule):
    clock = [0.0]
    f = lr_lambda(schedule, warmup_steps=2, max_steps=10**6, max_seconds=100.0, clock=lambda: clock[0])
    assert f(1) == 1.0  # warm-up is counted in steps
    clock[0] = 50.0
    assert f(10) == pytest.approx(0.5)  # half the time gone: cosine and linear are both at half
    clock[0] = 100.0
    assert f(11) == 0.0
    clock[0] = 130.0  # past the budget (the step that crosses it): stays at the end
    assert f(12) == 0.0


class _Slow:
    """A callback that makes every step take about STEP_S and records the Timer's clock after it."""

    def __new__(cls, *a, **k):
        import lightning as L

        class Slow(L.Callback):
            def __init__(self):
                self.records: list[tuple[int, float]] = []

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                time.sleep(STEP_S)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                timer = next(c for c in trainer.callbacks if type(c).__name__ == "Timer")
                self.records.append((trainer.global_step, timer.time_elapsed("train")))

        return Slow()


def _fit(tcfg: TrainConfig, *, ckpt_path=None, stop_at: int | None = None, save_to=None):
    import lightning as L

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batches = [copy_batch(gen, n=8) for _ in range(400)]
    module = Seq2SeqModule(small_model_cfg(), tcfg)
    slow = _Slow()
    callbacks = [slow]
    if stop_at is not None:

        class StopAt(L.Callback):  # an interruption: the run ends early and its checkpoint is kept
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step >= stop_at:
                    trainer.should_stop = True

        callbacks.append(StopAt())
    trainer = L.Trainer(
        max_steps=tcfg.max_steps, max_time=_max_time(tcfg.max_seconds), accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), ckpt_path=ckpt_path,
                weights_only=True)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return trainer, module, slow.records


def _assert_stopped_at_first_step_past(records, budget):
    """Every step but the last ended inside the budget, the last one past it: the run stopped at the
    first optimizer step that crossed its budget, so within one step of it."""
    *inside, (_, last) = records
    assert all(t < budget for _, t in inside), records
    assert last >= budget - 0.01, records  # (recorded a moment before the Timer's own check)


def test_a_run_stops_within_one_step_of_its_budget_and_its_schedule_ends_there():
    budget = 3.0
    tcfg = TrainConfig(max_time=f"{budget}s", max_steps=10**6, schedule="cosine", warmup_steps=1, lr=1e-3)
    trainer, module, records = _fit(tcfg)
    assert trainer.global_step == len(records) < 10**6  # stopped by time, not by steps
    _assert_stopped_at_first_step_past(records, budget)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0  # cosine reached its end at the budget


def test_an_interrupted_run_resumes_and_stops_at_the_same_total_budget(tmp_path):
    budget = 5.0
    tcfg = TrainConfig(max_time=f"{budget}s", max_steps=10**6, schedule="cosine", warmup_steps=1, lr=1e-3)
    first, _, rec1 = _fit(tcfg, stop_at=2, save_to=tmp_path / "interrupted.ckpt")
    assert first.global_step == 2 and rec1[-1][1] < budget
    second, _, rec2 = _fit(tcfg, ckpt_path=tmp_path / "interrupted.ckpt")
    assert rec2[0][0] == 3 and rec2[0][1] > rec1[-1][1]  # the clock continued from the time already spent
    _assert_stopped_at_first_step_past(rec2, budget)
    assert second.optimizers[0].param_groups[0]["lr"] == 0.0


def test_ema_is_the_warmed_up_moving_average_and_survives_a_checkpoint():
    import lightning as L

    decay = 0.5
    tcfg = TrainConfig(ema_decay=decay, max_steps=4, warmup_steps=1, lr=1e-2)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batches = [copy_batch(gen, n=8) for _ in range(4)]
    module = Seq2SeqModule(small_model_cfg(), tcfg)
    snapshots: list[list[torch.Tensor]] = []

    class Snap(L.Callback):  # runs after the module's own hook: the weights the EMA saw
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots.append([p.detach().clone() for p in pl_module.model.parameters()])

    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Snap()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    expected = [t.clone() for t in snapshots[0]]
    for n, snap in enumerate(snapshots[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * p for e, p in zip(expected, snap)]
    for e, got in zip(expected, module._ema):
        torch.testing.assert_close(got, e)
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    fresh = Seq2SeqModule(small_model_cfg(), tcfg)
    fresh.on_load_checkpoint(ckpt)
    assert fresh._ema_updates == 4
    assert fresh.use_ema_weights()
    for e, p in zip(expected, fresh.model.parameters()):
        torch.testing.assert_close(p.detach(), e)
    assert not Seq2SeqModule(small_model_cfg(), TrainConfig()).use_ema_weights()  # off by default
