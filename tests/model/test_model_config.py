"""ModelConfig: presets are data, bad values are refused with the field's name, no torch needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["tiny", "base", "big"])
def test_presets_load(name):
    cfg = ModelConfig.from_name(name, vocab_size=100)
    assert cfg.vocab_size == 100
    assert cfg.d_model % cfg.n_heads == 0


def test_base_is_the_papers_base():
    cfg = ModelConfig.from_name("base")
    assert (cfg.d_model, cfg.n_heads, cfg.n_encoder_layers, cfg.n_decoder_layers, cfg.d_ff) == (512, 8, 6, 6, 2048)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(norm="batchnorm"), "model.norm='batchnorm' is not allowed"),
        (dict(norm_position="middle"), "model.norm_position"),
        (dict(positional="alibi"), "model.positional"),
        (dict(ffn="geglu"), "model.ffn"),
        (dict(d_model=30, n_heads=4), "not divisible"),
        (dict(positional="rope", d_model=12, n_heads=4), "even head dim"),
    ],
)
def test_bad_values_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_unknown_preset_and_key_are_refused():
    with pytest.raises(ValueError, match="unknown model preset 'huge'; allowed: base, big, tiny"):
        ModelConfig.from_name("huge")
    with pytest.raises(ValueError, match="d_modle"):
        ModelConfig.from_name("tiny", d_modle=3)


def test_config_loads_without_torch():
    code = "import sys, model.config; model.config.ModelConfig.from_name('big'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
