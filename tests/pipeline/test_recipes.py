"""conf/recipes/: every recipe loads and validates, and en_de_small keeps the settings the README documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import CONF_DIR, load_config

RECIPES = sorted((CONF_DIR / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads(path: Path):
    cfg = load_config(str(path), ["data.paths=[corpus.tsv]"])
    assert cfg.data.source == "files"


def test_en_de_small_is_the_benchmarked_shape_with_its_levers():
    cfg = load_config(str(CONF_DIR / "recipes" / "en_de_small.yaml"), ["train.max_time=20m"])
    m, t = cfg.model, cfg.train
    assert (m.d_model, m.n_encoder_layers, m.n_decoder_layers, m.n_heads, m.d_ff, m.tie_embeddings) == (
        256, 3, 3, 4, 1024, True)
    assert cfg.tokenizer.kind == "byte_bpe" and cfg.tokenizer.vocab_size == 8000
    assert cfg.data.split_by == "0" and t.max_seconds == 1200.0
    assert t.schedule == "inverse_sqrt" and t.ema_decay > 0 and t.label_smoothing > 0 and cfg.eval.beam_size == 5
    # the levers bench/quality.py measured: a step of 4 length buckets, no dropout, a source-length bound
    assert (t.max_tokens, t.accumulate_grad_batches, m.dropout, t.adam_beta2) == (512, 4, 0.0, 0.999)
    assert (cfg.eval.max_len_a, cfg.eval.max_len_b) == (1.5, 5)
