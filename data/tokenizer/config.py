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
    max_pretoken_chars: int = field(
        default=256,
        metadata={
            "min": 0,
            "help": "pre-tokens longer than this are cut into pieces of this many characters, in training and "
            "encoding alike, so a 10 MB line without spaces stays linear (0: never cut; GPT-2's own files use 0)",
        },
    )
    merge_backend: str = field(
        default="auto",
        metadata={
            "choices": ["auto", "python", "numba"],
            "help": "the merge loop: python (reference), numba (the same loop compiled, ~6x faster; needs numba), "
            "auto: numba when installed and the corpus has >= 20k distinct pre-tokens; merges are identical",
        },
    )
    sp_sample_lines: int = field(
        default=2_000_000,
        metadata={"min": 1, "help": "sentencepiece trains on at most this many lines, a hash-chosen sample"},
    )
    sp_character_coverage: float = field(
        default=0.9995,
        metadata={"min": 0.5, "max": 1.0, "help": "sentencepiece: share of characters kept; the rest fall back to bytes"},
    )

    def __post_init__(self) -> None:
        if len(self.special_tokens) < 3:
            raise ValueError(
                f"tokenizer.special_tokens has {len(self.special_tokens)} entries; the first three must be "
                "padding, begin and end"
            )
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"tokenizer.special_tokens has duplicates: {self.special_tokens}")
        if any(not t for t in self.special_tokens):
            raise ValueError(f"tokenizer.special_tokens has an empty string: {self.special_tokens}")
