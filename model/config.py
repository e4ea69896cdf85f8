"""ModelConfig: every hyperparameter of the encoder-decoder, each documented where it is defined.

This module imports nothing heavy so that configs load (and fail) before torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent.parent / "conf" / "model"


@dataclass
class ModelConfig:
    """The Transformer's shape. Names follow Vaswani et al. (2017) and the Annotated Transformer."""

    vocab_size: int = field(default=0, metadata={"min": 0, "help": "V, set from the trained tokenizer when 0"})
    d_model: int = field(default=128, metadata={"min": 8, "help": "width of every residual stream"})
    n_heads: int = field(default=4, metadata={"min": 1, "help": "h, attention heads; d_model % n_heads == 0"})
    n_encoder_layers: int = field(default=2, metadata={"min": 0, "help": "N encoder blocks"})
    n_decoder_layers: int = field(default=2, metadata={"min": 1, "help": "N decoder blocks"})
    d_ff: int = field(default=512, metadata={"min": 1, "help": "inner width of the feed-forward network"})
    max_seq_len: int = field(default=128, metadata={"min": 2, "help": "longest source or target, in tokens"})
    dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9, "help": "dropout on sublayer outputs"})
    norm: str = field(default="layernorm", metadata={"choices": ["layernorm", "rmsnorm"], "help": "normalisation"})
    norm_position: str = field(
        default="pre",
        metadata={"choices": ["pre", "post"], "help": "pre: x + f(norm(x)) (stable); post: norm(x + f(x)) (the paper)"},
    )
    positional: str = field(
        default="sinusoidal", metadata={"choices": ["sinusoidal", "rope", "learned"], "help": "positional encoding"}
    )
    ffn: str = field(default="relu", metadata={"choices": ["relu", "gelu", "swiglu"], "help": "feed-forward kind"})
    tie_embeddings: bool = field(default=True, metadata={"help": "lm_head shares the token embedding's storage"})
    rope_base: float = field(default=10000.0, metadata={"min": 1.0, "help": "θ base for RoPE"})
    pad_id: int = field(default=0, metadata={"min": 0, "help": "padding token id (set from the tokenizer)"})
    bos_id: int = field(default=1, metadata={"min": 0, "help": "begin-of-sequence id (set from the tokenizer)"})
    eos_id: int = field(default=2, metadata={"min": 0, "help": "end-of-sequence id (set from the tokenizer)"})
    norm_eps: float = field(default=1e-5, metadata={"min": 0.0, "help": "ε added inside LayerNorm / RMSNorm"})

    def __post_init__(self) -> None:
        # The pipeline's loader checks choices too; checking here makes a hand-built config fail as loudly.
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"model.{f.name}={getattr(self, f.name)!r} is not allowed; allowed: {', '.join(choices)}"
                )
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}"
            )
        if self.positional == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"model.positional=rope needs an even head dim; d_model/n_heads={self.head_dim}")

    @property
    def head_dim(self) -> int:
        """D, the width of one head: d_k = d_v = d_model / h."""
        return self.d_model // self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> "ModelConfig":
        """A named preset from conf/model/ (`tiny`, `base`, `big`) with keyword overrides on top."""
        path = PRESET_DIR / f"{name}.yaml"
        if not path.exists():
            names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
            raise ValueError(f"unknown model preset '{name}'; allowed: {', '.join(names)}")
        import yaml  # pyyaml, not torch: configs still load before torch is imported

        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted((set(raw) | set(overrides)) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown} in preset '{name}' or overrides")
        raw.update(overrides)
        return cls(**raw)
