"""GPT-2's own byte-level BPE from tiktoken's rank file (`gpt2.tiktoken`: base64 token, space, rank).

tiktoken keeps only ranks (token bytes -> rank); GPT-2's merges.txt is recovered by running BPE on each
token's bytes with the merges of lower rank: exactly two parts must remain, and they are its merge.

    b'Hello' (rank 15496) -> BPE with ranks < 15496 -> [b'Hel', b'lo'] -> merge ('Hel', 'lo')
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from data.tokenizer.bpe import apply_merges
from data.tokenizer.errors import TokenizerFileError
from data.tokenizer.files import read_text
from data.tokenizer.pretokenize import pattern_text, to_byte_level
from data.tokenizer.bpe_tokenizer import BPETokenizer

ENDOFTEXT = "<|endoftext|>"


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a .tiktoken file; any malformed line is an error naming the file and line."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(read_text(Path(path)).splitlines(), start=1):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerFileError(f"{path} line {n}: expected 'BASE64 RANK', got {line[:60]!r}")
        try:
            token = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (binascii.Error, ValueError):
            raise TokenizerFileError(f"{path} line {n}: bad token or rank in {line[:60]!r}") from None
        ranks[token] = rank
    return ranks


def from_tiktoken_ranks(ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None) -> BPETokenizer:
    """A byte_bpe tokenizer whose ids are tiktoken's ranks (GPT-2: 50,000 merges, <|endoftext|> = 50256)."""
    if special_tokens is None:
        special_tokens = {ENDOFTEXT: len(ranks)}
    by_rank = sorted(ranks, key=ranks.__getitem__)
    if [ranks[t] for t in by_rank] != list(range(len(by_rank))):
        raise ValueError("tiktoken ranks must be the integers 0..N-1")
    singles = [t for t in by_rank if len(t) == 1]
    if len(singles) != 256:
        raise ValueError(f"tiktoken ranks hold {len(singles)} single bytes; byte-level BPE needs all 256")
    byte_ids = {t[0]: ranks[t] for t in singles}
    merge_rank: dict[tuple[int, int], int] = {}
    merge_result: dict[tuple[int, int], int] = {}
    merges: list[tuple[str, str]] = []
    for token in by_rank:
        if len(token) == 1:
            continue
        parts = apply_merges([byte_ids[b] for b in token], merge_rank, merge_result)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {ranks[token]}) is not one merge of lower-ranked tokens")
        pair = (parts[0], parts[1])
        merge_rank[pair] = len(merges)
        merge_result[pair] = ranks[token]
        merges.append((to_byte_level(by_rank[pair[0]]), to_byte_level(by_rank[pair[1]])))
    tokens = [to_byte_level(t) for t in by_rank]
    specials = sorted(special_tokens, key=special_tokens.__getitem__)
    for s in specials:
        if special_tokens[s] != len(tokens):
            raise ValueError(f"special token {s!r} must follow the ranks directly (id {len(tokens)})")
        tokens.append(s)
    return BPETokenizer(tokens, merges, specials, pattern_text("gpt2"), 0, pattern_name="gpt2")


def load_tiktoken_file(path: str | Path) -> BPETokenizer:
    """GPT-2 from `gpt2.tiktoken` (see ../shared/bench-data/get_gpt2_ranks.sh for where it comes from)."""
    return from_tiktoken_ranks(read_tiktoken_ranks(path))
