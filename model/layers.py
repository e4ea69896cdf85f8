"""The Transformer's parts, one module per choice the config offers; `build_*` picks among them.

Notation: B batch, S source length, T target (or query) length, L key length, H heads, D head dim
(d_model / H), V vocabulary. Boolean masks use `scaled_dot_product_attention`'s convention:
True = may attend, broadcastable to (B, H, T, L).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cache import LayerCache
from model.config import ModelConfig

# --------------------------------------------------------------------------------------------
# Embeddings and positions


class TokenEmbedding(nn.Module):
    """Token ids -> vectors scaled by √d_model (section 3.4), so they are not drowned by the positions."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.scale = math.sqrt(d_model)

    def forward(self, ids: Tensor) -> Tensor:
        # (B, T) -> (B, T, d_model)
        return F.embedding(ids, self.weight) * self.scale


def sinusoid_table(max_len: int, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)); (max_len, d_model)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d/2,)
    angle = pos / torch.pow(10000.0, two_i / d_model)  # (max_len, d/2)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])  # odd d_model: one cos column fewer
    return pe.float()


def _check_positions(start: int, length: int, max_len: int) -> None:
    # Slicing past the table's end would silently return a shorter table and fail later, opaquely.
    if start + length > max_len:
        raise ValueError(
            f"positions {start}..{start + length - 1} go past model.max_seq_len={max_len}; "
            "shorten the input or raise max_seq_len"
        )


class SinusoidalPositions(nn.Module):
    """Adds the fixed sinusoid table (section 3.5). The table is derived, not stored in checkpoints."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_len = cfg.max_seq_len
        self.register_buffer("pe", sinusoid_table(cfg.max_seq_len, cfg.d_model), persistent=False)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        # x (B, T, d_model) holding positions start..start+T-1 -> (B, T, d_model)
        T = x.size(1)
        _check_positions(start, T, self.max_len)
        return x + self.pe[start : start + T].to(x.dtype)


class LearnedPositions(nn.Module):
    """Adds a trained position embedding (the paper's alternative in table 3, row E)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_len = cfg.max_seq_len
        self.weight = nn.Parameter(torch.empty(cfg.max_seq_len, cfg.d_model))

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        T = x.size(1)
        _check_positions(start, T, self.max_len)
        return x + self.weight[start : start + T]


class NoAddedPositions(nn.Module):
    """With RoPE, positions enter inside attention; nothing is added to the embeddings."""

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        return x


class Rotary(nn.Module):
    """RoPE (Su et al. 2021): rotate each pair (x[2k], x[2k+1]) of q and k by m·θ_k, θ_k = base^(−2k/D).

    Then q_m·k_n depends on m − n only, so self-attention sees relative positions.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_len = cfg.max_seq_len
        self.base = cfg.rope_base

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        # x (B, H, T, D) holding positions start..start+T-1 -> (B, H, T, D)
        T = x.size(-2)
        _check_positions(start, T, self.max_len)
        # θ and the angles are computed here, in at least float32, rather than kept as buffers: a buffer
        # cast to bf16 with the model (model.to(torch.bfloat16)) would shift every frequency by up to 0.4%.
        D = x.size(-1)
        dtype = torch.promote_types(x.dtype, torch.float32)
        theta = self.base ** (-torch.arange(0, D, 2, device=x.device, dtype=dtype) / D)  # (D/2,)
        pos = torch.arange(start, start + T, device=x.device, dtype=dtype)  # (T,)
        angle = pos[:, None] * theta  # (T, D/2): m·θ_k
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        x0, x1 = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # (B, H, T, D/2, 2)
        return out.flatten(-2)  # (B, H, T, D)


class NoRotation(nn.Module):
    """Attention without RoPE: sinusoidal / learned positions, and always cross-attention."""

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        return x


def build_positions(cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """(added to the embeddings, applied to self-attention's q and k) for `cfg.positional`."""
    if cfg.positional == "sinusoidal":
        return SinusoidalPositions(cfg), NoRotation()
    if cfg.positional == "learned":
        return LearnedPositions(cfg), NoRotation()
    if cfg.positional == "rope":
        return NoAddedPositions(), Rotary(cfg)
    raise ValueError(f"model.positional={cfg.positional!r}; allowed: sinusoidal, rope, learned")


# --------------------------------------------------------------------------------------------
# Normalisation and residual connections


def build_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    raise ValueError(f"model.norm={cfg.norm!r}; allowed: layernorm, rmsnorm")


class PreNormResidual(nn.Module):
    """x + dropout(f(norm(x))): the identity path stays clean, so deep stacks train without warmup tricks."""

    def __init__(self, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, norm: nn.Module, sublayer) -> Tensor:
        return x + self.dropout(sublayer(norm(x)))


class PostNormResidual(nn.Module):
    """norm(x + dropout(f(x))): the paper's LayerNorm(x + Sublayer(x)) (section 5.4)."""

    def __init__(self, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, norm: nn.Module, sublayer) -> Tensor:
        return norm(x + self.dropout(sublayer(x)))


def build_residual(cfg: ModelConfig) -> nn.Module:
    if cfg.norm_position == "pre":
        return PreNormResidual(cfg.dropout)
    if cfg.norm_position == "post":
        return PostNormResidual(cfg.dropout)
    raise ValueError(f"model.norm_position={cfg.norm_position!r}; allowed: pre, post")


def build_final_norm(cfg: ModelConfig) -> nn.Module:
    """Pre-norm stacks end un-normalised, so they get a final norm; post-norm output is normalised already."""
    return build_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()


# --------------------------------------------------------------------------------------------
# Feed-forward networks


class FeedForward(nn.Module):
    """FFN(x) = down_proj(act(up_proj(x))), act = ReLU (the paper) or GELU."""

    def __init__(self, cfg: ModelConfig, activation):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        # (B, T, d_model) -> (B, T, d_ff) -> (B, T, d_model)
        return self.down_proj(self.activation(self.up_proj(x)))


class GatedFeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): down_proj(silu(gate_proj(x)) * up_proj(x)). d_ff is used as given."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def build_ffn(cfg: ModelConfig) -> nn.Module:
    if cfg.ffn == "relu":
        return FeedForward(cfg, F.relu)
    if cfg.ffn == "gelu":
        return FeedForward(cfg, F.gelu)
    if cfg.ffn == "swiglu":
        return GatedFeedForward(cfg)
    raise ValueError(f"model.ffn={cfg.ffn!r}; allowed: relu, gelu, swiglu")


# --------------------------------------------------------------------------------------------
# Attention


def causal_mask(T: int, L: int, start: int = 0, device=None) -> Tensor:
    """(T, L) boolean: query i, at position start + i, may attend key j iff j <= start + i.

    start 0 and T == L is the usual lower triangle; start > 0 is a block of new queries after a
    cached prefix of `start` keys (incremental decoding).

    >>> causal_mask(2, 3, start=1).int().tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    return torch.arange(L, device=device)[None, :] <= (start + torch.arange(T, device=device))[:, None]


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """softmax(QKᵀ/√d_k)V written out; returns (output (B, H, T, D), weights (B, H, T, L)).

    Used when attention weights are asked for (SDPA does not return them) and as the tests' reference.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def _fused_linear(x: Tensor, projs: tuple[nn.Linear, ...]) -> tuple[Tensor, ...]:
    """Apply several projections of the same input as one matmul (one wide GEMM runs faster than
    three narrow ones); the parameters stay separate so checkpoint keys keep the paper's names."""
    weight = torch.cat([p.weight for p in projs])  # (n·d_out, d_in)
    bias = torch.cat([p.bias for p in projs]) if projs[0].bias is not None else None
    return F.linear(x, weight, bias).split([p.out_features for p in projs], dim=-1)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    The subclasses say where keys and values come from (the sequence itself, or the encoder's memory)
    and how they are cached. Attention itself goes through `F.scaled_dot_product_attention`, so GPUs
    get the fused flash / memory-efficient kernels.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model)
        # Set by Transformer.inspect(): keep the last (B, H, T, L) weights for the heatmap.
        self.record_weights = False
        self.weights: Tensor | None = None

    def _split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        # q (B, H, T, D), k/v (B, H, L, D) -> (B, T, d_model)
        if self.record_weights:
            if is_causal:
                mask = causal_mask(q.size(-2), k.size(-2), device=q.device)  # (T, L)
            out, self.weights = attention_reference(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        B, H, T, D = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))  # (B, T, d_model)


class SelfAttention(MultiHeadAttention):
    """Keys and values from the sequence itself; RoPE (when chosen) rotates q and k by their positions.

    With a cache (decoder, incremental decoding) the new keys/values are appended, so each step costs
    one query against the cached prefix instead of recomputing the prefix.
    """

    def __init__(self, cfg: ModelConfig, rotary: nn.Module):
        super().__init__(cfg)
        self.rotary = rotary

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None,
        is_causal: bool = False,
        cache: LayerCache | None = None,
    ) -> Tensor:
        # x (B, T, d_model): positions 0..T-1, or after the cached prefix when decoding incrementally
        start = cache.length if cache is not None else 0
        q, k, v = _fused_linear(x, (self.q_proj, self.k_proj, self.v_proj))  # (B, T, d_model) each
        q = self.rotary(self._split(q), start)  # (B, H, T, D)
        k = self.rotary(self._split(k), start)  # (B, H, T, D)
        v = self._split(v)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.append_self(k, v)  # (B, H, start + T, D)
            if is_causal and start > 0:
                # New queries see the whole cached prefix and, causally, each other.
                mask = causal_mask(q.size(-2), k.size(-2), start, device=x.device)  # (T, L)
                is_causal = False
            elif q.size(-2) == 1:
                is_causal = False  # one query at the newest position sees every key
        return self._attend(q, k, v, mask, is_causal)


class CrossAttention(MultiHeadAttention):
    """Queries from the decoder, keys and values from the encoder's memory (no RoPE: the two sides'
    positions are unrelated). With a cache, memory's keys/values are projected once per source."""

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor | None, cache: LayerCache | None = None) -> Tensor:
        # x (B, T, d_model), memory (B, S, d_model), src_mask (B, 1, 1, S)
        q = self._split(self.q_proj(x))  # (B, H, T, D)
        if cache is not None and cache.cross_k is not None:
            k, v = cache.cross_k, cache.cross_v
        else:
            k, v = _fused_linear(memory, (self.k_proj, self.v_proj))  # (B, S, d_model) each
            k, v = self._split(k), self._split(v)  # (B, H, S, D)
            if cache is not None:
                cache.cross_k, cache.cross_v = k, v
        return self._attend(q, k, v, src_mask, is_causal=False)
