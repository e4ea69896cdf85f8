"""Reading a BPE tokenizer back: vocab.json + merges.txt (+ tpipe_tokenizer.json), checked line by line.

Our own directories must hold exactly what the merges derive (specials, base symbols, merge results)
and the fingerprint tpipe_tokenizer.json records; a plain GPT-2 vocab.json + merges.txt directory is
read as byte_bpe with the GPT-2 pattern. BPE_KINDS maps each BPE kind to its class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.tokenizer.bpe_tokenizer import BPETokenizer, derive_tokens
from data.tokenizer.char_bpe import CharBPETokenizer
from data.tokenizer.errors import TokenizerFileError
from data.tokenizer.files import json_line_of, read_json, read_text
from data.tokenizer.pretokenize import bytes_to_unicode, pattern_text
from data.tokenizer.tokenizer import META_FILE

BPE_KINDS: dict[str, type[BPETokenizer]] = {"byte_bpe": BPETokenizer, "char_bpe": CharBPETokenizer}


def _read_vocab(path: Path) -> list[str]:
    text = read_text(path)
    vocab = read_json(path)
    if not isinstance(vocab, dict):
        raise TokenizerFileError(f"{path}: expected a JSON object {{token: id}}, got {type(vocab).__name__}")
    tokens: list[str | None] = [None] * len(vocab)
    for t, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(vocab):
            line = json_line_of(text, json.dumps(t, ensure_ascii=False))
            raise TokenizerFileError(
                f"{path} line {line}: token {t!r} has id {i!r}; ids must be the integers 0..{len(vocab) - 1}"
            )
        if tokens[i] is not None:
            line = json_line_of(text, json.dumps(t, ensure_ascii=False))
            raise TokenizerFileError(f"{path} line {line}: id {i} is given to both {tokens[i]!r} and {t!r}")
        tokens[i] = t
    return tokens  # type: ignore[return-value]


def _read_merges(path: Path, token_id: dict[str, int]) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(read_text(path).split("\n"), start=1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise TokenizerFileError(f"{path} line {n}: expected two tokens separated by one space, got {line!r}")
        a, b = parts
        for t in (a, b, a + b):
            if t not in token_id:
                raise TokenizerFileError(f"{path} line {n}: {t!r} is not in vocab.json (merge {a!r} {b!r})")
        merges.append((a, b))
    return merges


def load_bpe(directory: Path, meta: dict[str, Any] | None) -> BPETokenizer:
    """Our own files (meta given) or a plain GPT-2 vocab.json + merges.txt directory (meta None)."""
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    tokens = _read_vocab(vocab_path)
    token_id = {t: i for i, t in enumerate(tokens)}
    merges = _read_merges(merges_path, token_id)
    if meta is None:
        # GPT-2's own files: the special tokens are those neither a byte nor made by a merge (<|endoftext|>).
        made = {a + b for a, b in merges} | set(bytes_to_unicode().values())
        specials = [t for t in tokens if t not in made]
        missing = [c for c in bytes_to_unicode().values() if c not in token_id]
        if missing:
            raise TokenizerFileError(f"{vocab_path}: byte-level vocabulary lacks the byte token {missing[0]!r}")
        return BPETokenizer(tokens, merges, specials, pattern_text("gpt2"), 0, pattern_name="gpt2")
    meta_path = directory / META_FILE
    tok = BPE_KINDS[meta["kind"]](
        tokens,
        merges,
        meta["special_tokens"],
        meta["pattern"],
        meta["max_pretoken_chars"],
        pattern_name=meta.get("pattern_name", ""),
        train_stats=meta.get("train"),
    )
    if tok.fingerprint != meta["fingerprint"]:
        raise TokenizerFileError(
            f"{merges_path}: merges, special tokens or pattern give fingerprint {tok.fingerprint} but "
            f"{meta_path} records {meta['fingerprint']}; merges.txt or {META_FILE} was edited after saving"
        )
    _check_layout(tok, vocab_path)
    return tok


def _check_layout(tok: BPETokenizer, vocab_path: Path) -> None:
    """Our vocab.json must be what the merges derive: specials, the base symbols, then the merge results."""
    n_made = len(derive_tokens([], tok.merges))
    base = tok.tokens[: len(tok.tokens) - n_made] if n_made <= len(tok.tokens) else []
    for k, t in enumerate(tok.special_tokens):
        if k >= len(tok.tokens) or tok.tokens[k] != t:
            got = tok.tokens[k] if k < len(tok.tokens) else None
            raise TokenizerFileError(f"{vocab_path} line {k + 2}: id {k} should be the special token {t!r}, is {got!r}")
    derived = derive_tokens(base, tok.merges)
    for i, (have, want) in enumerate(zip(tok.tokens, derived)):
        if have != want:
            raise TokenizerFileError(
                f"{vocab_path} line {i + 2}: id {i} is {have!r} but merges.txt makes it {want!r}; "
                "vocab.json was edited after saving"
            )
    if len(derived) != len(tok.tokens):
        raise TokenizerFileError(
            f"{vocab_path}: {len(tok.tokens)} tokens but merges.txt makes {len(derived)}; edited after saving?"
        )
