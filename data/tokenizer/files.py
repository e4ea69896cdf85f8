"""Atomic writes and strict reads of tokenizer files; every error names the file and, where it can, the line.

    read_json(Path("vocab.json"))   # truncated file -> ValueError("vocab.json line 3 column 1: not valid JSON ...")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.tokenizer.errors import TokenizerFileError


def read_text(path: Path) -> str:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise TokenizerFileError(f"{path}: file is missing") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TokenizerFileError(f"{path} line {line}: not valid UTF-8 (byte {e.start})") from None


def read_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerFileError(
            f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); truncated or edited?"
        ) from None


def json_line_of(text: str, needle: str) -> int:
    """The 1-based line of the first occurrence of `needle` in `text` (0 when absent)."""
    pos = text.find(needle)
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 0


def dumps_vocab(tokens: list[str]) -> str:
    """{token: id} with one entry per line, so that an error can name the line of a bad entry."""
    body = ",\n".join(f"{json.dumps(t, ensure_ascii=False)}: {i}" for i, t in enumerate(tokens))
    return "{\n" + body + "\n}\n"
