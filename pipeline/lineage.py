"""Where a registered model came from: its lineage record, the version's tags and its model card."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from data.io import MANIFEST


def git_commit() -> str | None:
    """The commit of the code that runs, or None outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def lineage(encode_dir: Path, tokenizer_fingerprint: str, config_hash: str, code_version: str,
            step_keys: dict[str, str]) -> dict[str, Any]:
    """Shard hashes, tokenizer fingerprint, config hash, code: what the model was made from."""
    enc = json.loads((encode_dir / MANIFEST).read_text(encoding="utf-8"))
    shard_hashes = {split: [s.get("sha256") for s in shards] for split, shards in enc["splits"].items()}
    return {
        "corpus_shards": shard_hashes,
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "config_hash": config_hash,
        "code_version": code_version,
        "git_commit": git_commit(),
        "step_keys": step_keys,
    }


def version_tags(cfg, lineage: dict[str, Any]) -> dict[str, str]:
    """The registered version's tags: its lineage in short, and the language pair."""
    return {
        "tpipe.tokenizer_fingerprint": lineage["tokenizer_fingerprint"],
        "tpipe.config_hash": lineage["config_hash"],
        "tpipe.code_version": lineage["code_version"],
        "tpipe.git_commit": lineage["git_commit"] or "unknown",
        "tpipe.step_keys": json.dumps(lineage["step_keys"], sort_keys=True),
        "tpipe.src_lang": cfg.data.src_lang,
        "tpipe.tgt_lang": cfg.data.tgt_lang,
    }


def model_card(cfg, lineage: dict[str, Any], train_summary: dict[str, Any]) -> str:
    """The package's README.md, which the registry shows for the model and the version."""
    m = cfg.model
    metrics = train_summary.get("metrics", {})
    return f"""# {cfg.registry.model_name}

Encoder-decoder Transformer trained by tpipe on `{cfg.data.source}` data ({cfg.data.src_lang} -> {cfg.data.tgt_lang}).

| | |
|---|---|
| d_model / heads / layers | {m.d_model} / {m.n_heads} / {m.n_encoder_layers}+{m.n_decoder_layers} |
| d_ff / norm / positional / ffn | {m.d_ff} / {m.norm}-{m.norm_position} / {m.positional} / {m.ffn} |
| parameters | {train_summary.get("parameters")} |
| steps | {metrics.get("step")} |
| final validation loss | {metrics.get("val/loss", float("nan")):.4f} |
| tokenizer fingerprint | `{lineage["tokenizer_fingerprint"]}` |
| config hash | `{lineage["config_hash"]}` |
| code version / git commit | `{lineage["code_version"]}` / `{lineage["git_commit"]}` |

Load it with `mlflow.pyfunc.load_model("models:/{cfg.registry.model_name}@champion").predict(["..."])`.
Corpus shard hashes are in `lineage.json`.
"""
