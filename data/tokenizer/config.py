"""TokenizerConfig: which tokenizer to train and how."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenizerConfig:
    """Settings for training a tokenizer. Loads without importing torch."""

    kind: str = field(
        default="byte_bpe",
        metadata={
            "choices": ["byte_bpe", "char_bpe", "sentencepiece"],
            "help": "byte_bpe: GPT-2 byte-level BPE; char_bpe: characters + </w>; sentencepiece: the alternative backend",
        },
    )
    vocab_size: int = field(
        default=1000, metadata={"min": 260, "help": "special tokens + 256 bytes + merges (byte_bpe)"}
    )
    min_frequency: int = field(default=2, metadata={"min": 1, "help": "a pair seen fewer times is never merged"})
    pattern: str = field(
        default="gpt2", metadata={"choices": ["gpt2", "cl100k"], "help": "pre-tokenization regex"}
    )
    special_tokens: list[str] = field(
        default_factory=lambda: ["<pad>", "<s>", "</s>", "<unk>"],
        metadata={"help": "lowest ids, in this order: padding, begin, end, unknown, then user tokens"},
    )
    num_workers: int = field(default=2, metadata={"min": 1, "help": "Ray tasks counting pre-tokens"})
    sp_model_type: str = field(
        default="bpe", metadata={"choices": ["bpe", "unigram"], "help": "sentencepiece model type"}
    )

    def __post_init__(self) -> None:
        if len(self.special_tokens) < 3:
            raise ValueError(
                f"tokenizer.special_tokens has {len(self.special_tokens)} entries; the first three must be "
                "padding, begin and end"
            )
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"tokenizer.special_tokens has duplicates: {self.special_tokens}")
