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


def test_tokens_labelled_by_text_where_whole_and_escapes_where_not(tmp_path):
    """Byte-level pieces of a character are escaped, CJK is drawn with a CJK font when the machine has
    one (escaped otherwise), and no glyph is missing: matplotlib warns about none."""
    import warnings

    import numpy as np

    from pipeline.plots import label_fonts, token_label

    has_cjk = any(ord("中") in cmap for _, cmap in label_fonts())
    assert token_label(b" the") == " the" and token_label("</s>") == "</s>"
    assert token_label(b"\xe4\xb8") == "\\xe4\\xb8"  # two bytes of a three-byte character
    assert token_label("中".encode()) == ("中" if has_cjk else "\\u4e2d")
    assert token_label("\n") == "\\x0a"
    src = ["中".encode(), b"\xe4\xb8", b"\xad", " 文".encode(), "🙂".encode()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attention_heatmap_png({"cross": [np.full((2, 5), 0.2)]}, src, [b"<s>", "日".encode()], tmp_path / "zh.png")
    assert not [w for w in caught if "Glyph" in str(w.message)], [str(w.message) for w in caught]
