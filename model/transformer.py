"""The encoder-decoder Transformer (Vaswani et al. 2017), composed from `model.layers` by the config.

    m = Transformer(ModelConfig.from_name("tiny", vocab_size=V))
    logits = m(src, tgt)                                   # (B, S), (B, T) -> (B, T, V)
    src_mask = m.make_src_mask(src)                        # (B, 1, 1, S), True at real tokens
    memory = m.encode(src, src_mask)                       # (B, S, d_model)
    hidden = m.decode(tgt, memory, src_mask)               # (B, T, d_model), causal
    logits = m.lm_head(hidden)                             # (B, T, V)

Masks are boolean, True = may attend (`scaled_dot_product_attention`'s convention). Sequences are
right-padded with `cfg.pad_id`; `tgt` is the decoder input (BOS, y_1, ..., y_{T-1}).

Notation: B batch, S source length, T target length, H heads, D head dim, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.cache import DecoderCache
from model.config import ModelConfig
from model.layers import (
    CrossAttention,
    MultiHeadAttention,
    SelfAttention,
    TokenEmbedding,
    build_ffn,
    build_final_norm,
    build_norm,
    build_positions,
    build_residual,
    causal_mask,
)


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward network, each inside a residual connection with a norm."""

    def __init__(self, cfg: ModelConfig, rotary: nn.Module):
        super().__init__()
        self.self_attn = SelfAttention(cfg, rotary)
        self.self_attn_norm = build_norm(cfg)
        self.ffn = build_ffn(cfg)
        self.ffn_norm = build_norm(cfg)
        self.residual = build_residual(cfg)

    def forward(self, x: Tensor, src_mask: Tensor | None) -> Tensor:
        # x (B, S, d_model), src_mask (B, 1, 1, S) -> (B, S, d_model)
        x = self.residual(x, self.self_attn_norm, lambda h: self.self_attn(h, src_mask))
        return self.residual(x, self.ffn_norm, self.ffn)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention on the encoder's memory, then the feed-forward network."""

    def __init__(self, cfg: ModelConfig, rotary: nn.Module):
        super().__init__()
        self.self_attn = SelfAttention(cfg, rotary)
        self.self_attn_norm = build_norm(cfg)
        self.cross_attn = CrossAttention(cfg)
        self.cross_attn_norm = build_norm(cfg)
        self.ffn = build_ffn(cfg)
        self.ffn_norm = build_norm(cfg)
        self.residual = build_residual(cfg)

    def forward(self, x, memory, src_mask, tgt_mask, cache=None) -> Tensor:
        # x (B, T, d_model), memory (B, S, d_model); tgt_mask None means causal only (see Decoder)
        is_causal = tgt_mask is None
        x = self.residual(x, self.self_attn_norm, lambda h: self.self_attn(h, tgt_mask, is_causal, cache))
        x = self.residual(x, self.cross_attn_norm, lambda h: self.cross_attn(h, memory, src_mask, cache))
        return self.residual(x, self.ffn_norm, self.ffn)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg, rotary) for _ in range(cfg.n_encoder_layers))
        self.norm = build_final_norm(cfg)

    def forward(self, x: Tensor, src_mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, src_mask)
        return self.norm(x)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg, rotary) for _ in range(cfg.n_decoder_layers))
        self.norm = build_final_norm(cfg)

    def forward(self, x, memory, src_mask, tgt_mask, cache: DecoderCache | None = None) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, src_mask, tgt_mask, cache.layers[i] if cache is not None else None)
        return self.norm(x)


@dataclass
class Inspection:
    """One example's attention weights and hidden states, per layer (batch dimension removed)."""

    src: list[int]
    tgt: list[int]
    encoder_self: list[Tensor] = field(default_factory=list)  # n_encoder_layers × (H, S, S)
    decoder_self: list[Tensor] = field(default_factory=list)  # n_decoder_layers × (H, T, T)
    cross: list[Tensor] = field(default_factory=list)  # n_decoder_layers × (H, T, S)
    encoder_hidden: list[Tensor] = field(default_factory=list)  # n_encoder_layers × (S, d_model)
    decoder_hidden: list[Tensor] = field(default_factory=list)  # n_decoder_layers × (T, d_model)
    logits: Tensor | None = None  # (T, V)


class Transformer(nn.Module):
    """Encoder-decoder Transformer. One token embedding serves source and target (joint vocabulary);
    `lm_head` shares its storage when `cfg.tie_embeddings`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError(
                f"model.vocab_size={cfg.vocab_size}; set it from the trained tokenizer before building the model"
            )
        for name in ("pad_id", "bos_id", "eos_id"):
            if getattr(cfg, name) >= cfg.vocab_size:
                raise ValueError(f"model.{name}={getattr(cfg, name)} is outside the vocabulary of {cfg.vocab_size}")
        self.cfg = cfg
        self.embed_tokens = TokenEmbedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed, self.rotary = build_positions(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(cfg, self.rotary)
        self.decoder = Decoder(cfg, self.rotary)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one storage: checkpoints hold it once

    def reset_parameters(self) -> None:
        """Xavier-uniform projections, zero biases (as the Annotated Transformer); N(0, 1/d_model) embeddings,
        so that after the √d_model scale the embeddings have unit variance."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed_tokens.weight, std=self.cfg.d_model**-0.5)
        if isinstance(getattr(self.pos_embed, "weight", None), nn.Parameter):
            nn.init.normal_(self.pos_embed.weight, std=0.02)

    # ----------------------------------------------------------------------------------------
    # Masks

    def make_src_mask(self, src: Tensor) -> Tensor:
        """(B, S) -> (B, 1, 1, S): every query may attend to the real (non-pad) source tokens."""
        return (src != self.cfg.pad_id)[:, None, None, :]

    def make_tgt_mask(self, tgt: Tensor) -> Tensor:
        """(B, T) -> (B, 1, T, T): causal and not padding. `decode` does not need it for right-padded
        targets (causality already hides later pads from real tokens), but it accepts it."""
        T = tgt.size(1)
        return causal_mask(T, T, device=tgt.device)[None, None] & (tgt != self.cfg.pad_id)[:, None, None, :]

    # ----------------------------------------------------------------------------------------
    # Encode / decode

    def embed(self, ids: Tensor, start: int = 0) -> Tensor:
        """(B, T) token ids at positions start.. -> (B, T, d_model) input of the first block."""
        return self.dropout(self.pos_embed(self.embed_tokens(ids), start))

    def encode(self, src: Tensor, src_mask: Tensor | None) -> Tensor:
        """(B, S) source ids, (B, 1, 1, S) mask -> memory (B, S, d_model)."""
        return self.encoder(self.embed(src), src_mask)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_mask: Tensor | None,
        tgt_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """(B, T) decoder input ids -> hidden states (B, T, d_model), after the final norm.

        tgt_mask None: causal attention only (enough for right-padded targets, and lets GPUs use the
        flash kernel). With `cache`, tgt holds the next positions after the cached ones (usually one
        token) and their keys/values are appended to the cache.
        """
        if cache is not None and tgt_mask is not None:
            raise ValueError("decode with a cache takes no tgt_mask: the cache decides what each step sees")
        start = cache.length if cache is not None else 0
        return self.decoder(self.embed(tgt, start), memory, src_mask, tgt_mask, cache)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """(B, S) source ids, (B, T) decoder input ids -> logits (B, T, V). Padding masks from cfg.pad_id."""
        src_mask = self.make_src_mask(src)  # (B, 1, 1, S)
        memory = self.encode(src, src_mask)  # (B, S, d_model)
        return self.lm_head(self.decode(tgt, memory, src_mask))  # (B, T, V)

    def new_cache(self, capacity: int) -> DecoderCache:
        """An empty KV cache for up to `capacity` decoded positions."""
        return DecoderCache(self.cfg.n_decoder_layers, capacity)

    # ----------------------------------------------------------------------------------------
    # Inspection (attention heatmaps, debugging)

    @torch.no_grad()
    def inspect(self, src: Tensor, tgt: Tensor) -> Inspection:
        """Per-layer attention weights and hidden states of ONE example, computed in eval mode.

        src (S,) and tgt (T,) are token ids (padding is dropped); attention is written out as
        softmax(QKᵀ/√d_k)V for this call because the fused kernels do not return the weights.
        """
        if src.dim() != 1 or tgt.dim() != 1:
            raise ValueError(f"inspect takes one example: src (S,), tgt (T,); got {tuple(src.shape)}, {tuple(tgt.shape)}")
        src = src[src != self.cfg.pad_id][None]  # (1, S)
        tgt = tgt[tgt != self.cfg.pad_id][None]  # (1, T)
        attn = [m for m in self.modules() if isinstance(m, MultiHeadAttention)]
        out = Inspection(src=src[0].tolist(), tgt=tgt[0].tolist())
        hooks = [
            layer.register_forward_hook(lambda _m, _i, o, acc=acc: acc.append(o[0].detach()))
            for layers, acc in ((self.encoder.layers, out.encoder_hidden), (self.decoder.layers, out.decoder_hidden))
            for layer in layers
        ]
        was_training = self.training
        self.eval()
        for m in attn:
            m.record_weights = True
        try:
            out.logits = self(src, tgt)[0]
            out.encoder_self = [layer.self_attn.weights[0] for layer in self.encoder.layers]
            out.decoder_self = [layer.self_attn.weights[0] for layer in self.decoder.layers]
            out.cross = [layer.cross_attn.weights[0] for layer in self.decoder.layers]
        finally:
            for m in attn:
                m.record_weights, m.weights = False, None
            for h in hooks:
                h.remove()
            self.train(was_training)
        return out

    def num_parameters(self) -> int:
        """Distinct parameters (a tied lm_head counts once)."""
        return sum(p.numel() for p in self.parameters())


def teacher_forced_loss(
    model: Transformer, src: Tensor, tgt: Tensor, *, label_smoothing: float = 0.0, reduction: str = "mean"
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy of predicting tgt[:, 1:] from tgt[:, :-1] (teacher forcing), padding ignored.

    src (B, S) and tgt (B, T) are framed rows (data/framing.py: tgt = [bos] ids [eos]), so EOS is
    predicted and BOS is not. Returns (loss, logits (B, T-1, V), labels (B, T-1)); reduction
    "mean" averages over the non-pad labels (training), "sum" adds them up (evaluation's perplexity).
    """
    tgt_in, labels = tgt[:, :-1], tgt[:, 1:]  # predict token t+1 from tokens <= t
    logits = model(src, tgt_in)  # (B, T-1, V)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),  # (B*(T-1), V); fp32 even under bf16 autocast
        labels.reshape(-1),  # (B*(T-1),)
        ignore_index=model.cfg.pad_id,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    return loss, logits, labels
