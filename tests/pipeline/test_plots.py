"""pipeline/plots.py: the attention heatmap is a real PNG of the inspected example, and mismatches are refused."""

from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.transformer import Transformer
from pipeline.plots import attention_heatmap_png


def _inspection():
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", vocab_size=20, d_model=32, d_ff=64, n_decoder_layers=4)
    return Transformer(cfg).inspect(torch.tensor([5, 6, 7, 8, 2]), torch.tensor([1, 9, 10]))


def test_heatmap_png_from_an_inspection(tmp_path):
    ins = _inspection()
    path = attention_heatmap_png(ins, ["a", "b", "c", "d", "</s>"], ["<s>", "x", "y"], tmp_path / "sub" / "attn.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    import matplotlib.image

    h, w = matplotlib.image.imread(path).shape[:2]
    assert w > h  # 4 layers side by side, 3 kinds (encoder self, decoder self, cross) stacked


def test_heatmap_from_a_mapping_and_one_head(tmp_path):
    ins = _inspection()
    weights = {"cross": [w.numpy() for w in ins.cross]}
    path = attention_heatmap_png(weights, list("abcde"), list("xyz"), tmp_path / "cross.png", head=1)
    assert path.exists()


def test_heatmap_refuses_tokens_that_do_not_match(tmp_path):
    ins = _inspection()
    with pytest.raises(ValueError, match=r"cross layer 0 weights are \(3, 5\) but the tokens give \(3, 4\)"):
        attention_heatmap_png({"cross": ins.cross}, list("abcd"), list("xyz"), tmp_path / "x.png")
    with pytest.raises(ValueError, match="head=9"):
        attention_heatmap_png(ins, list("abcde"), list("xyz"), tmp_path / "x.png", head=9)
    with pytest.raises(ValueError, match="no attention weights"):
        attention_heatmap_png({}, [], [], tmp_path / "x.png")
