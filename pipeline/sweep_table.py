"""The sweep's table of trials: live on the driver while Tune runs (a Tune callback), final at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pipeline.config import PipelineConfig


@dataclass
class TrialRow:
    """One line of the live table."""

    index: int
    params: dict[str, Any]
    state: str = "PENDING"
    best_val_loss: float = float("nan")
    last_val_loss: float = float("nan")
    step: int = 0
    finished: bool = False  # trained to max_steps (not stopped early)


def collect(result_grid, rows: list[TrialRow], configs: list[PipelineConfig]) -> None:
    """Final states from Tune's results: finished, stopped early (by ASHA) or errored."""
    for result in result_grid:
        r = rows[result.config["trial"]]
        df = result.metrics_dataframe
        if df is not None and "val_loss" in df:
            losses = [float(x) for x in df["val_loss"].tolist() if x == x]
            if losses:
                r.best_val_loss, r.last_val_loss = min(losses), losses[-1]
        metrics = result.metrics or {}
        r.step = int(metrics.get("step", r.step) or 0)
        r.finished = bool(metrics.get("final")) and result.error is None
        r.state = "ERROR" if result.error is not None else "FINISHED" if r.finished else "STOPPED"


def _callback_base():
    from ray.tune import Callback

    return Callback


class LiveTable(_callback_base()):
    """Tune callback on the driver: a table of the trials each time one reports or changes state."""

    def __init__(self, rows: list[TrialRow], say):
        self.rows, self.say, self.last = rows, say, 0.0

    def _row(self, trial) -> TrialRow:
        return self.rows[trial.config["trial"]]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial).state = "RUNNING"
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        r = self._row(trial)
        r.state = "RUNNING"
        loss = result.get("val_loss")
        if loss is not None:
            r.last_val_loss = float(loss)
            r.best_val_loss = min(r.best_val_loss, float(loss)) if r.best_val_loss == r.best_val_loss else float(loss)
        r.step = int(result.get("step", r.step) or r.step)
        r.finished = bool(result.get("final"))
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = self._row(trial)
        r.state = "FINISHED" if r.finished else "STOPPED"
        self._show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial).state = "ERROR"
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self.last > 5.0:
            self.last = now
            print_table(self.rows, self.say)


def print_table(rows: list[TrialRow], say, final: bool = False) -> None:
    keys = sorted({k for r in rows for k in r.params})
    head = f"{'trial':>5}  {'state':9s} " + " ".join(f"{k:>14s}" for k in keys) + f" {'best val':>9s} {'last val':>9s} {'steps':>6s}"
    lines = [("sweep results" if final else "trials"), head]
    for r in rows:
        params = " ".join(f"{_fmt(r.params.get(k)):>14s}" for k in keys)
        lines.append(f"{r.index:>5}  {r.state:9s} {params} {r.best_val_loss:9.4f} {r.last_val_loss:9.4f} {r.step:>6d}")
    say("\n".join(lines))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
