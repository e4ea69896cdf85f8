"""The LightningModule around model.Transformer: loss, optimiser, schedule and metrics.

The model stays plain PyTorch (model/); everything Lightning-specific lives here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning as L
import torch

from data.framing import pad_rows
from model.config import ModelConfig
from model.generation import generate
from model.transformer import Transformer, teacher_forced_loss
from pipeline.config import TrainConfig
from pipeline.metrics import score


def lr_lambda(
    schedule: str,
    warmup_steps: int,
    max_steps: int,
    max_seconds: float = 0.0,
    clock: Callable[[], float] | None = None,
) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step `s`: linear warmup, then the chosen decay.

    inverse_sqrt is the paper's schedule rescaled so the peak is exactly `lr` at the end of warmup.
    cosine and linear decay to 0 over whichever budget ends first: the steps left after warmup, or,
    with a time budget (`max_seconds` > 0), the training seconds `clock()` says are spent. A run
    stopped by its time budget thus ends its schedule where it stops, however fast the machine is.
    """
    warmup = max(warmup_steps, 1)

    def f(step: int) -> float:
        s = step + 1
        if s <= warmup:
            return s / warmup
        if schedule == "inverse_sqrt":
            return math.sqrt(warmup / s)
        if schedule in ("cosine", "linear"):
            progress = (s - warmup) / max(max_steps - warmup, 1)
            if max_seconds > 0 and clock is not None:
                progress = max(progress, clock() / max_seconds)
            progress = min(progress, 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return 1.0

    return f


class Seq2SeqModule(L.LightningModule):
    """Trains a Transformer on batches {"src": (B, S), "tgt": (B, T)}, tgt = [bos] ids [eos]."""

    def __init__(
        self,
        model_cfg: ModelConfig | dict[str, Any],
        train_cfg: TrainConfig | dict[str, Any],
        decode_fn: Callable[[list[int]], str] | None = None,
        bleu_sample: list[tuple[list[int], str]] | None = None,
        tgt_lang: str = "en",
        max_len_a: float = 0.0,
        max_len_b: int = 0,
    ):
        super().__init__()
        # The configs go into checkpoints as plain values (no pickled classes), so that
        # `Seq2SeqModule.load_from_checkpoint(ckpt)` rebuilds the module from them alone.
        if isinstance(model_cfg, dict):
            model_cfg = ModelConfig(**model_cfg)
        if isinstance(train_cfg, dict):
            train_cfg = TrainConfig(**train_cfg)
        self.save_hyperparameters(
            {"model_cfg": asdict(model_cfg), "train_cfg": asdict(train_cfg), "tgt_lang": tgt_lang},
            logger=False,  # the driver logs the config itself (pipeline/train.py: train_model)
        )
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.model = Transformer(model_cfg)
        # For validation BLEU: a fixed sample of (source ids, reference text) decoded greedily, each
        # translation bounded by max_len_a * its source's tokens + max_len_b as the registered model's
        # decoding is (eval.max_len_a/b): unbounded, a young model's runaway outputs sink the score.
        self.decode_fn, self.bleu_sample, self.tgt_lang = decode_fn, bleu_sample or [], tgt_lang
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        self._t_last: float | None = None
        self._tokens_since = 0
        self._val: dict[str, float] = {}
        # The exponential moving average of the weights (train.ema_decay), fp32, in parameters() order.
        self._ema: list[torch.Tensor] | None = None
        self._ema_updates = 0

    # ---- loss -----------------------------------------------------------------------------
    def _loss(
        self, batch: dict[str, torch.Tensor], smoothing: float, accuracy: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over non-pad target tokens, and (as tensors, no host sync) the token
        count and, when asked, how many argmax predictions are right."""
        loss, logits, labels = teacher_forced_loss(self.model, batch["src"], batch["tgt"], label_smoothing=smoothing)
        pad = self.model_cfg.pad_id
        mask = labels != pad
        stats = {"n_tokens": mask.sum()}
        if accuracy:
            stats["correct"] = ((logits.argmax(-1) == labels) & mask).sum()
        return loss, stats

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Nothing here waits for the device (no .item()): on a GPU a host sync per step costs
        # more than the extra metrics are worth, so accuracy is computed on logging steps only.
        # No prog_bar=True either: Lightning turns every progress-bar metric into a Python number
        # (.item()) at every step, even with the progress bar disabled.
        logging_step = self.global_step % self.train_cfg.log_every_steps == 0
        loss, stats = self._loss(batch, self.train_cfg.label_smoothing, accuracy=logging_step)
        self._tokens_since += batch["src"].numel() + batch["tgt"].numel()
        bs = batch["src"].size(0)
        if logging_step:  # Lightning sends step metrics to the logger on these steps only; a self.log
            # call is about 1 % of a small model's CPU step, so the others skip it.
            self.log("train/loss", loss, batch_size=bs)
            self.log("train/accuracy", stats["correct"].float() / stats["n_tokens"].clamp(min=1), batch_size=bs)
            now = time.perf_counter()
            if self._t_last is not None:
                # tokens per second on this worker (padded source + target tokens), times world size
                rate = self._tokens_since / max(now - self._t_last, 1e-9) * self.trainer.world_size
                self.log("train/tokens_per_s", rate, batch_size=bs)
            self._t_last, self._tokens_since = now, 0
            self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.global_step % self.train_cfg.log_every_steps == 0:
            norms = [p.grad.detach().norm(2) for p in self.parameters() if p.grad is not None]
            if norms:
                self.log("train/grad_norm", torch.stack(norms).norm(2))

    # ---- validation -----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {"nll_sum": 0.0, "tokens": 0.0, "correct": 0.0}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, stats = self._loss(batch, 0.0)
        n = stats["n_tokens"].item()
        self._val["nll_sum"] += loss.item() * n
        self._val["tokens"] += n
        self._val["correct"] += stats["correct"].item()

    def on_validation_epoch_end(self) -> None:
        # Sum over DDP ranks so every rank logs the same corpus-level numbers.
        t = torch.tensor([self._val["nll_sum"], self._val["tokens"], self._val["correct"]], dtype=torch.float64)
        if self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        nll_sum, tokens, correct = t.tolist()
        if tokens == 0:
            return
        val_loss = nll_sum / tokens
        self.log("val/loss", val_loss, sync_dist=False)
        self.log("val_loss", val_loss, sync_dist=False)  # flat name for checkpoint scoring
        self.log("val/perplexity", math.exp(min(val_loss, 50.0)))
        self.log("val/accuracy", correct / tokens)
        if self.bleu_sample and self.decode_fn is not None:
            self.log("val/bleu", self._sample_bleu())

    @torch.no_grad()
    def _sample_bleu(self) -> float:
        was_training = self.model.training
        self.model.eval()
        src = torch.from_numpy(pad_rows([ids for ids, _ in self.bleu_sample], self.model_cfg.pad_id)).to(self.device)
        hyps = generate(self.model, src, max_len=self.model_cfg.max_seq_len - 2, beam_size=1,  # src (B, S)
                        max_len_a=self.max_len_a, max_len_b=self.max_len_b)
        self.model.train(was_training)
        texts = [self.decode_fn(h) for h in hyps]
        return float(score(texts, [r for _, r in self.bleu_sample], self.tgt_lang)["bleu"])

    # ---- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # Norm gains, biases and embeddings are not decayed (as in most Transformer recipes).
            (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.train_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.train_cfg.lr,
            betas=(0.9, self.train_cfg.adam_beta2),
            eps=self.train_cfg.adam_eps,
        )
        tcfg = self.train_cfg
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(tcfg.schedule, tcfg.warmup_steps, tcfg.max_steps, tcfg.max_seconds, self._training_seconds)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _training_seconds(self) -> float:
        """Training time spent so far, an interrupted attempt's included: Lightning's Timer (the
        callback `Trainer(max_time=...)` adds) keeps it in the checkpoint and stops the run by it."""
        from lightning.pytorch.callbacks import Timer

        trainer = self._trainer
        for cb in trainer.callbacks if trainer is not None else []:
            if isinstance(cb, Timer):
                return float(cb.time_elapsed("train"))
        return 0.0

    # ---- the moving average of the weights --------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        decay = self.train_cfg.ema_decay
        if decay <= 0 or self._ema_updates >= self.global_step:
            return  # off, or inside a gradient accumulation (no optimizer step since the last update)
        params = [p.detach() for p in self.model.parameters()]
        if self._ema is None:
            self._ema = [p.float().clone() for p in params]
        n = self._ema_updates
        d = min(decay, (1.0 + n) / (10.0 + n))  # fairseq's warm-up of the decay
        torch._foreach_lerp_(self._ema, [p.float() for p in params], 1.0 - d)
        self._ema_updates = self.global_step

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._ema is not None:
            checkpoint["ema"] = {"updates": self._ema_updates, "weights": [t.clone() for t in self._ema]}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema" in checkpoint:
            self._ema_updates = int(checkpoint["ema"]["updates"])
            self._ema = [t.float() for t in checkpoint["ema"]["weights"]]

    @torch.no_grad()
    def use_ema_weights(self) -> bool:
        """Copy the moving average into the model (the weights that get saved); False when off."""
        if self._ema is None:
            return False
        for p, e in zip(self.model.parameters(), self._ema):
            p.copy_(e.to(p.dtype))
        return True
