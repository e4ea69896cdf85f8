"""Each component against its defining formula: sinusoids, RoPE, attention, norms, FFNs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_testlib import small_cfg

from model.layers import (
    GatedFeedForward,
    MultiHeadAttention,
    Rotary,
    SinusoidalPositions,
    TokenEmbedding,
    attention_reference,
    build_ffn,
    build_norm,
    causal_mask,
    sinusoid_table,
)


def test_sinusoid_table_is_the_formula():
    d, n = 16, 50
    pe = sinusoid_table(n, d)
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_positions_add_the_table_from_start():
    cfg = small_cfg()
    pos = SinusoidalPositions(cfg)
    x = torch.zeros(2, 5, cfg.d_model)
    torch.testing.assert_close(pos(x, start=3)[1], sinusoid_table(cfg.max_seq_len, cfg.d_model)[3:8])
    assert "pe" not in pos.state_dict()  # derived, not stored in checkpoints


def test_positions_past_max_seq_len_are_refused():
    cfg = small_cfg(max_seq_len=8)
    with pytest.raises(ValueError, match="past model.max_seq_len=8"):
        SinusoidalPositions(cfg)(torch.zeros(1, 9, cfg.d_model))
    with pytest.raises(ValueError, match="past model.max_seq_len=8"):
        Rotary(small_cfg(max_seq_len=8, positional="rope"))(torch.zeros(1, 4, 2, cfg.head_dim), start=7)


def test_token_embedding_is_scaled_by_sqrt_d_model():
    emb = TokenEmbedding(10, 16)
    torch.nn.init.normal_(emb.weight)
    ids = torch.tensor([[3, 4]])
    torch.testing.assert_close(emb(ids), emb.weight[ids] * 4.0)


def test_rope_dot_product_depends_only_on_the_offset():
    # q_m·k_n = f(m - n): rotate the same q and k to many position pairs with equal offset.
    cfg = small_cfg(positional="rope", max_seq_len=512)
    rope = Rotary(cfg).double()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, cfg.head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, cfg.head_dim, generator=g, dtype=torch.float64)
    table = rope(torch.cat([q, k], dim=1).expand(1, 2, 512, cfg.head_dim).contiguous())  # every position
    qs, ks = table[0, 0], table[0, 1]  # (512, D): q rotated to m, k rotated to n
    dots = qs @ ks.T  # (512, 512): q_m·k_n
    for offset in range(-40, 41, 7):
        diag = torch.diagonal(dots, offset=-offset)  # entries with m - n = offset
        assert diag.numel() > 400
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=0, atol=1e-9)
    # ... and rotation keeps norms, and position 0 is the identity.
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(512))
    torch.testing.assert_close(qs[0], q[0, 0, 0])


def test_rope_rotates_pairs_by_position_times_theta():
    cfg = small_cfg(positional="rope")
    rope = Rotary(cfg).double()
    D = cfg.head_dim
    x = torch.zeros(1, 1, 1, D, dtype=torch.float64)
    x[..., 2] = 1.0  # pair k=1, first coordinate
    m = 5
    theta_1 = 10000.0 ** (-2 * 1 / D)
    out = rope(x.expand(1, 1, m + 1, D).contiguous())[0, 0, m]
    expected = torch.zeros(D, dtype=torch.float64)
    expected[2], expected[3] = math.cos(m * theta_1), math.sin(m * theta_1)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_is_softmax_qk_over_sqrt_dk_v_in_float64(masked):
    cfg = small_cfg()
    attn = MultiHeadAttention(cfg).double()
    g = torch.Generator().manual_seed(1)
    B, T, L, H, D = 2, 5, 7, cfg.n_heads, cfg.head_dim
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, 1, T, L, generator=g) > 0.3) if masked else None
    if mask is not None:
        mask[..., 0] = True  # every query sees at least one key
    # Written out by hand, element by element of the formula.
    scores = torch.einsum("bhtd,bhld->bhtl", q, k) / math.sqrt(D)
    if mask is not None:
        scores = torch.where(mask, scores, torch.tensor(-math.inf, dtype=torch.float64))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    expected = torch.einsum("bhtl,bhld->bhtd", weights, v)
    # The module's SDPA path (then o_proj) and its written-out path for inspection.
    out_sdpa = attn._attend(q, k, v, mask, is_causal=False)
    ref, ref_w = attention_reference(q, k, v, mask)
    torch.testing.assert_close(ref, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref_w, weights, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_sdpa, attn.o_proj(expected.transpose(1, 2).reshape(B, T, H * D)), rtol=1e-10, atol=1e-10)


def test_causal_mask_is_the_lower_triangle_and_shifts_after_a_cached_prefix():
    assert torch.equal(causal_mask(5, 5), torch.ones(5, 5, dtype=torch.bool).tril())
    # 2 new queries after 3 cached keys: query i sits at position 3 + i and sees keys 0..3 + i
    assert causal_mask(2, 5, start=3).int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_causal_flag_matches_explicit_lower_triangle():
    cfg = small_cfg()
    attn = MultiHeadAttention(cfg).double()
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, cfg.n_heads, 6, cfg.head_dim, generator=g, dtype=torch.float64) for _ in range(3))
    tril = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(attn._attend(q, k, v, None, True), attn._attend(q, k, v, tril, False))


def test_rmsnorm_and_layernorm_formulas():
    x = torch.randn(3, 4, 32, dtype=torch.float64)
    rms = build_norm(small_cfg(norm="rmsnorm")).double()
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    ln = build_norm(small_cfg(norm="layernorm")).double()
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mu) / torch.sqrt(var + 1e-5))


@pytest.mark.parametrize("kind, act", [("relu", F.relu), ("gelu", F.gelu)])
def test_feed_forward_is_down_act_up(kind, act):
    ffn = build_ffn(small_cfg(ffn=kind))
    assert not hasattr(ffn, "gate_proj")
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(ffn(x), ffn.down_proj(act(ffn.up_proj(x))))


def test_swiglu_is_gated():
    ffn = build_ffn(small_cfg(ffn="swiglu"))
    assert isinstance(ffn, GatedFeedForward)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(ffn(x), ffn.down_proj(F.silu(ffn.gate_proj(x)) * ffn.up_proj(x)))
