"""A trained model package on disk, and the translator that uses it.

A model package is a folder with:
    model.safetensors      the Transformer's weights (tied weights saved once)
    model_config.json      ModelConfig as JSON
    generation.json        decoding settings (beam_size, length_penalty, max_len, batch_size)
    tokenizer/             the tokenizer (data.tokenizer format)
    lineage.json, README.md  where it came from (model card)
It is what the registry stores, what `mlflow.pyfunc.load_model` loads and what `tpipe translate` uses.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from data.errors import UserError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
GENERATION = "generation.json"
TOKENIZER_DIR = "tokenizer"


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write: temp name, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_model_package(out_dir: Path, model, model_cfg, generation: dict[str, Any], tokenizer_dir: Path) -> Path:
    """Write weights (safetensors), config, decoding settings and tokenizer into `out_dir`."""
    import shutil

    from safetensors.torch import save_model

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{WEIGHTS}.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, out_dir / WEIGHTS)
    write_json(out_dir / MODEL_CONFIG, asdict(model_cfg))
    write_json(out_dir / GENERATION, generation)
    if (out_dir / TOKENIZER_DIR).exists():
        shutil.rmtree(out_dir / TOKENIZER_DIR)
    shutil.copytree(tokenizer_dir, out_dir / TOKENIZER_DIR)
    return out_dir


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
        from safetensors.torch import load_model

        from data.tokenizer import load_tokenizer
        from model.config import ModelConfig
        from model.transformer import Transformer

        package = Path(package_dir)
        for name in (WEIGHTS, MODEL_CONFIG, GENERATION, TOKENIZER_DIR):
            if not (package / name).exists():
                raise FileNotFoundError(f"model package {package} has no {name}")
        self.model_cfg = ModelConfig(**json.loads((package / MODEL_CONFIG).read_text(encoding="utf-8")))
        self.generation = json.loads((package / GENERATION).read_text(encoding="utf-8"))
        self.generation.update({k: v for k, v in generation_overrides.items() if v is not None})
        self.tokenizer = load_tokenizer(package / TOKENIZER_DIR)
        self.model = Transformer(self.model_cfg)
        load_model(self.model, str(package / WEIGHTS), device=device)
        self.model.to(device).eval()
        self.device = device
        self._torch = torch

    def _padded(self, rows: list[list[int]]):
        torch = self._torch
        out = torch.full((len(rows), max(len(r) for r in rows)), self.model_cfg.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out.to(self.device)

    def nll(self, sources: list[str], references: list[str]) -> tuple[float, int]:
        """Teacher-forced negative log-likelihood of the references: (sum over tokens, token count).

        loss = sum / count and perplexity = exp(loss), as in validation (EOS predicted, padding not).
        """
        import torch.nn.functional as F

        torch = self._torch
        cfg = self.model_cfg
        limit = cfg.max_seq_len - 1
        src_ids = [x[:limit] + [cfg.eos_id] for x in self.tokenizer.encode_batch(sources)]
        tgt_ids = [[cfg.bos_id] + x[: limit - 1] + [cfg.eos_id] for x in self.tokenizer.encode_batch(references)]
        total, count = 0.0, 0
        bs = int(self.generation.get("batch_size", 64))
        with torch.inference_mode():
            for start in range(0, len(src_ids), bs):
                src = self._padded(src_ids[start : start + bs])
                tgt = self._padded(tgt_ids[start : start + bs])
                logits = self.model(src, tgt[:, :-1])  # (B, T-1, V)
                labels = tgt[:, 1:]
                total += F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                    ignore_index=cfg.pad_id, reduction="sum",
                ).item()
                count += int((labels != cfg.pad_id).sum())
        return total, count

    def decoding(self, **overrides: Any) -> dict[str, Any]:
        """The package's decoding settings with `overrides` (None values ignored) on top."""
        return self.generation | {k: v for k, v in overrides.items() if v is not None}

    def encode_sources(self, sentences: list[str]) -> list[list[int]]:
        """Source token ids as the encoder sees them: clipped to max_seq_len - 1 (with a warning), then EOS.

        An empty (or blank) sentence gets no ids at all: it translates to an empty line without the
        model, so line n of the output stays the translation of line n, and nothing is made up.
        """
        eos, max_src = self.model_cfg.eos_id, self.model_cfg.max_seq_len - 1
        sentences = [str(s) for s in sentences]
        encoded = self.tokenizer.encode_batch(sentences)
        cut = [i for i, x in enumerate(encoded) if len(x) > max_src]
        if cut:
            log.warning(
                f"{len(cut)} sentence(s) longer than the model's {max_src} source tokens were cut to that length "
                f"(sentence {cut[0] + 1}: {len(encoded[cut[0]])} tokens); split long inputs into sentences"
            )
        return [x[:max_src] + [eos] if s.strip() else [] for s, x in zip(sentences, encoded)]

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
            )

    def translate(self, sentences: list[str], **overrides: Any) -> list[str]:
        """Translate in batches of `generation.batch_size`, sorted by length to waste less padding.

        `overrides` (beam_size, max_len, length_penalty, batch_size) apply to this call only.
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
