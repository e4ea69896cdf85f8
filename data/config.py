"""DataConfig: where the corpus comes from, how it is cleaned, split and sharded."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """The corpus and its preparation. Loads without importing torch."""

    source: str = field(
        default="builtin",
        metadata={"choices": ["builtin", "files"], "help": "builtin: the generated numbers/dates corpus; files: `paths`"},
    )
    paths: list[str] = field(default_factory=list, metadata={"help": "input files or globs when source=files"})
    format: str = field(
        default="auto",
        metadata={"choices": ["auto", "tsv", "jsonl", "parquet", "moses", "text", "po", "mo"], "help": "input format"},
    )
    src_lang: str = field(default="en", metadata={"help": "source language code (column / file suffix)"})
    tgt_lang: str = field(default="zh", metadata={"help": "target language code (column / file suffix)"})
    builtin_size: int = field(default=24000, metadata={"min": 10, "help": "pairs the builtin generator makes"})
    n_shards: int = field(default=4, metadata={"min": 1, "help": "raw Parquet shards, one Ray task each"})
    valid_fraction: float = field(default=0.02, metadata={"min": 0.0, "max": 0.5, "help": "hash-assigned to valid"})
    test_fraction: float = field(default=0.02, metadata={"min": 0.0, "max": 0.5, "help": "hash-assigned to test"})
    max_chars: int = field(default=1000, metadata={"min": 1, "help": "longer sides are rejected (reason too_long)"})
    max_tokens_per_side: int = field(
        default=126, metadata={"min": 2, "help": "longer encoded sides are rejected (reason too_long_tokens)"}
    )

    def __post_init__(self) -> None:
        if self.source == "files" and not self.paths:
            raise ValueError("data.paths is empty but data.source=files; give at least one file or glob")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.valid_fraction + data.test_fraction = {self.valid_fraction + self.test_fraction}; must be < 1"
            )
