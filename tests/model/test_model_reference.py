"""Parity with a reference: our weights copied into torch.nn.Transformer give the same logits.

Post-norm + ReLU + LayerNorm is exactly what torch.nn.Transformer computes (norm_first=False), and
pre-norm is its norm_first=True (whose final encoder/decoder norms are our final norms). Checked in
float64 on a ragged, right-padded batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from model_testlib import PAD, small_cfg
from torch import nn

from model.layers import sinusoid_table
from model.transformer import Transformer


def _copy_attention(ours, ref: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.o_proj.weight)
        ref.out_proj.bias.copy_(ours.o_proj.bias)


def _copy_linear(ours: nn.Linear, ref: nn.Linear) -> None:
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)


def _copy_norm(ours: nn.LayerNorm, ref: nn.LayerNorm) -> None:
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)


def _reference(m: Transformer) -> nn.Transformer:
    cfg = m.cfg
    ref = nn.Transformer(
        d_model=cfg.d_model,
        nhead=cfg.n_heads,
        num_encoder_layers=cfg.n_encoder_layers,
        num_decoder_layers=cfg.n_decoder_layers,
        dim_feedforward=cfg.d_ff,
        dropout=0.0,
        activation="relu",
        batch_first=True,
        norm_first=cfg.norm_position == "pre",
        layer_norm_eps=cfg.norm_eps,
    ).double()
    for ours, theirs in zip(m.encoder.layers, ref.encoder.layers):
        _copy_attention(ours.self_attn, theirs.self_attn)
        _copy_linear(ours.ffn.up_proj, theirs.linear1)
        _copy_linear(ours.ffn.down_proj, theirs.linear2)
        _copy_norm(ours.self_attn_norm, theirs.norm1)
        _copy_norm(ours.ffn_norm, theirs.norm2)
    for ours, theirs in zip(m.decoder.layers, ref.decoder.layers):
        _copy_attention(ours.self_attn, theirs.self_attn)
        _copy_attention(ours.cross_attn, theirs.multihead_attn)
        _copy_linear(ours.ffn.up_proj, theirs.linear1)
        _copy_linear(ours.ffn.down_proj, theirs.linear2)
        _copy_norm(ours.self_attn_norm, theirs.norm1)
        _copy_norm(ours.cross_attn_norm, theirs.norm2)
        _copy_norm(ours.ffn_norm, theirs.norm3)
    if cfg.norm_position == "pre":
        _copy_norm(m.encoder.norm, ref.encoder.norm)
        _copy_norm(m.decoder.norm, ref.decoder.norm)
    else:  # the paper's post-norm stack has no final norm; nn.Transformer adds one unless told not to
        ref.encoder.norm = None
        ref.decoder.norm = None
    return ref.eval()


@pytest.mark.filterwarnings("ignore:.*nested.tensor:UserWarning")
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_logits_equal_torch_nn_transformer_with_copied_weights(norm_position):
    torch.manual_seed(0)
    m = Transformer(small_cfg(norm_position=norm_position, ffn="relu", norm="layernorm", positional="sinusoidal"))
    m = m.double().eval()
    ref = _reference(m)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, m.cfg.vocab_size, (3, 9), generator=g)
    tgt = torch.randint(3, m.cfg.vocab_size, (3, 6), generator=g)
    src[1, 4:] = PAD
    tgt[2, 3:] = PAD
    cfg = m.cfg
    pe = sinusoid_table(cfg.max_seq_len, cfg.d_model).double()
    embed = lambda ids: m.embed_tokens.weight[ids] * math.sqrt(cfg.d_model) + pe[: ids.size(1)]  # noqa: E731
    T = tgt.size(1)
    with torch.no_grad():
        hidden = ref(
            embed(src),
            embed(tgt),
            tgt_mask=torch.ones(T, T, dtype=torch.bool).triu(1),  # True = masked, nn.Transformer style
            src_key_padding_mask=src == PAD,
            memory_key_padding_mask=src == PAD,
        )
        expected = hidden @ m.embed_tokens.weight.T  # tied lm_head
        got = m(src, tgt)
    real = tgt != PAD
    torch.testing.assert_close(got[real], expected[real], rtol=1e-10, atol=1e-10)
