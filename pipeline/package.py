"""The registered model package: the one folder format a trained model travels in.

A model package is a folder with:
    model.safetensors      the Transformer's weights (tied weights saved once)
    model_config.json      ModelConfig as JSON
    generation.json        decoding settings (beam_size, length_penalty, max_len, max_len_a/b, batch_size)
    tokenizer/             the tokenizer (data.tokenizer format)
    lineage.json, README.md  where it came from (model card; written by the register step)
The train step writes it (`save`), the registry stores it, and `pipeline/inference.py` loads it
(`load`) for `mlflow.pyfunc.load_model`, `tpipe translate` and evaluation. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from data.io import atomic_path, write_json_atomic

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
GENERATION = "generation.json"
TOKENIZER_DIR = "tokenizer"
PARTS = (WEIGHTS, MODEL_CONFIG, GENERATION, TOKENIZER_DIR)


def generation_settings(eval_cfg) -> dict[str, Any]:
    """The decoding settings a package carries, from the pipeline's `eval` section."""
    return {
        "beam_size": eval_cfg.beam_size,
        "length_penalty": eval_cfg.length_penalty,
        "max_len": eval_cfg.max_len,
        "max_len_a": eval_cfg.max_len_a,
        "max_len_b": eval_cfg.max_len_b,
        "batch_size": eval_cfg.batch_size,
    }


def save(out_dir: Path, model, model_cfg, generation: dict[str, Any], tokenizer_dir: Path) -> Path:
    """Write weights (safetensors), config, decoding settings and tokenizer into `out_dir`."""
    from safetensors.torch import save_model

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(str(out_dir / WEIGHTS)) as tmp:
        save_model(model, tmp)
    write_json_atomic(out_dir / MODEL_CONFIG, asdict(model_cfg), sort_keys=True)
    write_json_atomic(out_dir / GENERATION, generation, sort_keys=True)
    if (out_dir / TOKENIZER_DIR).exists():
        shutil.rmtree(out_dir / TOKENIZER_DIR)
    shutil.copytree(tokenizer_dir, out_dir / TOKENIZER_DIR)
    return out_dir


def load(package_dir: str | os.PathLike, device: str = "cpu"):
    """(model in eval mode on `device`, ModelConfig, generation settings, tokenizer) of a package."""
    from safetensors.torch import load_model

    from data.tokenizer import load_tokenizer
    from model.config import ModelConfig
    from model.transformer import Transformer

    package = Path(package_dir)
    for name in PARTS:
        if not (package / name).exists():
            raise FileNotFoundError(f"model package {package} has no {name}")
    model_cfg = ModelConfig(**json.loads((package / MODEL_CONFIG).read_text(encoding="utf-8")))
    generation = json.loads((package / GENERATION).read_text(encoding="utf-8"))
    model = Transformer(model_cfg)
    load_model(model, str(package / WEIGHTS), device=device)
    return model.to(device).eval(), model_cfg, generation, load_tokenizer(package / TOKENIZER_DIR)
