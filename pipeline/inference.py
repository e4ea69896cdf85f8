"""Inference: the Translator that loads a model package (pipeline/package.py) and translates with it.

It is what the registered pyfunc wraps (pipeline/pyfunc_model.py), what `tpipe translate` and
evaluation run, and what pipeline/batch_translate.py spreads over Ray actors batch by batch.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from data.errors import UserError
from data.framing import frame_source, frame_target, pad_rows
from pipeline import package

log = logging.getLogger(__name__)


class TranslateInputError(UserError):
    """Nothing to translate, or input that cannot be."""


def check_sentences(sentences: list[str]) -> None:
    """Refuse input with no sentence at all: `tpipe translate MODEL ""` is a mistake, not a request."""
    if not any(s.strip() for s in sentences):
        what = "no sentences were given" if not sentences else f"all {len(sentences)} sentence(s) are empty"
        raise TranslateInputError(f"nothing to translate: {what}; give TEXT arguments or lines on stdin")


class Translator:
    """Loads a model package and translates batches of sentences."""

    def __init__(self, package_dir: str | os.PathLike, device: str = "cpu", **generation_overrides: Any):
        import torch

        self.model, self.model_cfg, self.generation, self.tokenizer = package.load(package_dir, device)
        self.generation.update({k: v for k, v in generation_overrides.items() if v is not None})
        self.device = device
        self._torch = torch

    def _padded(self, rows: list[list[int]]):
        """Framed rows -> (B, W) LongTensor on the model's device."""
        return self._torch.from_numpy(pad_rows(rows, self.model_cfg.pad_id)).to(self.device)

    def nll(self, sources: list[str], references: list[str]) -> tuple[float, int]:
        """Teacher-forced negative log-likelihood of the references: (sum over tokens, token count).

        loss = sum / count and perplexity = exp(loss), as in validation (EOS predicted, padding not).
        """
        from model.transformer import teacher_forced_loss

        cfg = self.model_cfg
        src_ids = [frame_source(x, cfg.eos_id, cfg.max_seq_len) for x in self.tokenizer.encode_batch(sources)]
        tgt_ids = [frame_target(x, cfg.bos_id, cfg.eos_id, cfg.max_seq_len) for x in self.tokenizer.encode_batch(references)]
        total, count = 0.0, 0
        bs = int(self.generation.get("batch_size", 64))
        with self._torch.inference_mode():
            for start in range(0, len(src_ids), bs):
                src = self._padded(src_ids[start : start + bs])  # (B, S)
                tgt = self._padded(tgt_ids[start : start + bs])  # (B, T)
                loss, _, labels = teacher_forced_loss(self.model, src, tgt, reduction="sum")
                total += loss.item()
                count += int((labels != cfg.pad_id).sum())
        return total, count

    def decoding(self, **overrides: Any) -> dict[str, Any]:
        """The package's decoding settings with `overrides` (None values ignored) on top."""
        return self.generation | {k: v for k, v in overrides.items() if v is not None}

    def encode_sources(self, sentences: list[str]) -> list[list[int]]:
        """Source rows as the encoder sees them: clipped to max_seq_len - 1 (with a warning), then EOS.

        An empty (or blank) sentence gets no ids at all: it translates to an empty line without the
        model, so line n of the output stays the translation of line n, and nothing is made up.
        """
        eos, max_len = self.model_cfg.eos_id, self.model_cfg.max_seq_len
        sentences = [str(s) for s in sentences]
        encoded = self.tokenizer.encode_batch(sentences)
        cut = [i for i, x in enumerate(encoded) if len(x) > max_len - 1]
        if cut:
            log.warning(
                f"{len(cut)} sentence(s) longer than the model's {max_len - 1} source tokens were cut to that length "
                f"(sentence {cut[0] + 1}: {len(encoded[cut[0]])} tokens); split long inputs into sentences"
            )
        return [frame_source(x, eos, max_len) if s.strip() else [] for s, x in zip(sentences, encoded)]

    def generate_batch(self, src_ids: list[list[int]], gen: dict[str, Any]) -> list[list[int]]:
        """Decode one batch of encoded sources (see `encode_sources`) to target token ids."""
        from model.generation import generate

        with self._torch.inference_mode():
            return generate(
                self.model,
                self._padded(src_ids),
                max_len=int(gen.get("max_len", 64)),
                beam_size=int(gen.get("beam_size", 1)),
                length_penalty=float(gen.get("length_penalty", 1.0)),
                max_len_a=float(gen.get("max_len_a") or 0.0),  # packages from before these keys: off
                max_len_b=int(gen.get("max_len_b") or 0),
            )

    def translate(self, sentences: list[str], **overrides: Any) -> list[str]:
        """Translate in batches of `generation.batch_size`, sorted by length to waste less padding.

        `overrides` (beam_size, max_len, max_len_a, max_len_b, length_penalty, batch_size) apply to this call only.
        The batches are `length_batches(...)`: pipeline/batch_translate.py decodes the very same
        batches on a pool of Ray actors, so its output is this one's, line for line.
        """
        gen = self.decoding(**overrides)
        ids = self.encode_sources(sentences)
        out: list[str] = [""] * len(ids)
        for idx in length_batches([len(x) for x in ids], int(gen.get("batch_size", 64))):
            for i, h in zip(idx, self.generate_batch([ids[i] for i in idx], gen)):
                out[i] = self.tokenizer.decode(h)
        return out


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices cut into decoding batches of similar length, shortest first; ties keep input order.

    >>> length_batches([5, 2, 9, 2, 0], 2)
    [[1, 3], [0, 2]]
    """
    # Stable: equal lengths keep their order. Length 0 (an empty sentence) is in no batch.
    order = sorted((i for i in range(len(lengths)) if lengths[i]), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
