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
    max_length_ratio: float = field(
        default=9.0,
        metadata={
            "min": 1.0,
            "help": "longer side / shorter side in UTF-8 bytes above this is rejected (reason ratio); "
            "bytes, not characters, so that 3-byte CJK and 1-byte Latin compare fairly; 9 as Moses' clean-corpus",
        },
    )
    dedup: bool = field(default=True, metadata={"help": "reject exact duplicate (src, tgt) pairs after the first"})
    write_rejects: bool = field(
        default=False, metadata={"help": "also write every rejected record to out_dir/rejects.jsonl"}
    )
    src_key: str = field(
        default="",
        metadata={"help": "JSONL/Parquet source field (JSONL may nest: 'translation.en'); empty: src_lang"},
    )
    tgt_key: str = field(default="", metadata={"help": "JSONL/Parquet target field; empty: tgt_lang"})
    tsv_columns: list[int] = field(
        default_factory=lambda: [-2, -1],
        metadata={"help": "TSV source and target field indexes; default the last two, so 'package<TAB>en<TAB>de' works"},
    )
    tsv_header: str = field(
        default="auto",
        metadata={
            "choices": ["auto", "first", "none"],
            "help": "is line 1 of a TSV file a header (counted as reject reason header, never trained on)? "
            "first: yes; none: no; auto: when its two chosen fields are column names (en/de, source/target, src/tgt)",
        },
    )
    split_by: str = field(
        default="",
        metadata={
            "help": "a field whose value decides the split (a package, a document id), so related records never "
            "straddle train and test: a TSV field index (e.g. '0') or a JSONL/Parquet key; the value's hash "
            "(with the seed) picks valid/test/train by valid_fraction and test_fraction. Empty: each pair's own hash"
        },
    )
    valid_paths: list[str] = field(
        default_factory=list, metadata={"help": "user-given validation files (same format); all go to valid"}
    )
    test_paths: list[str] = field(default_factory=list, metadata={"help": "user-given test files; all go to test"})
    chunk_mb: int = field(
        default=32,
        metadata={"min": 1, "help": "uncompressed local line files are read by Ray tasks in chunks of this size"},
    )

    def __post_init__(self) -> None:
        if self.source == "files" and not self.paths:
            raise ValueError("data.paths is empty but data.source=files; give at least one file or glob")
        if len(self.tsv_columns) != 2:
            raise ValueError(f"data.tsv_columns must name 2 fields (source, target), got {self.tsv_columns}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.valid_fraction + data.test_fraction = {self.valid_fraction + self.test_fraction}; must be < 1"
            )

    @property
    def src_field(self) -> str:
        """The JSONL/Parquet source key: src_key, else the language code."""
        return self.src_key or self.src_lang

    @property
    def tgt_field(self) -> str:
        return self.tgt_key or self.tgt_lang
