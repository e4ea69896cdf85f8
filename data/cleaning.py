"""The cleaning rules and the split of a pair: pure functions of the text, no files, no Ray.

A record is kept, or rejected under the first reason of REJECT_REASONS that applies. A kept pair's
128-bit BLAKE2b hash assigns its split (train/valid/test), so a pair keeps its split when the corpus
grows, whatever the seed, shard count or file order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from data.config import DataConfig
from data.shards import SPLITS

# In the order they are checked: a record is counted under the first that applies.
REJECT_REASONS = ("header", "invalid_utf8", "fuzzy", "control_chars", "empty", "too_long", "ratio", "duplicate")
# C0 control characters other than tab, newline and carriage return, and DEL: a NUL or an escape
# sequence in a sentence is a broken record (a binary fragment, terminal codes), not text to learn.
_CONTROL_CHARS = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]"


def pair_key(src: bytes, tgt: bytes) -> bytes:
    """BLAKE2b-128 of the pair, length-prefixed so that ('ab', 'c') and ('a', 'bc') differ."""
    return hashlib.blake2b(len(src).to_bytes(4, "little") + src + tgt, digest_size=16).digest()


def splits_of(keys: np.ndarray, valid_fraction: float, test_fraction: float) -> np.ndarray:
    """(N, 2) little-endian uint64 keys -> split index (0 train, 1 valid, 2 test) from the first word
    as a uniform number in [0, 1): below valid_fraction -> valid, then test_fraction -> test."""
    u = keys[:, 0].astype(np.float64) / 2.0**64
    out = np.zeros(len(keys), dtype=np.int8)
    out[u < valid_fraction + test_fraction] = 2
    out[u < valid_fraction] = 1
    return out


def split_of_value(value: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """The split of every record whose `data.split_by` field is `value` (a package, a document id):
    BLAKE2b-128 of "seed:value", read as in `splits_of`, so related records never straddle splits
    and a new seed draws a new split. split_of_value('git', 4, .1, .1) -> 'train'."""
    digest = hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=16).digest()
    key = np.frombuffer(digest, dtype="<u8").reshape(1, 2)
    return SPLITS[int(splits_of(key, valid_fraction, test_fraction)[0])]


def as_text(x: bytes | str) -> str:
    """A side as it can be written to a UTF-8 rejects file: invalid bytes and lone surrogates as escapes."""
    if isinstance(x, bytes):
        return x.decode("utf-8", "backslashreplace")
    return x if _is_utf8(x) else x.encode("utf-8", "backslashreplace").decode("utf-8")


def _string_array(values: list) -> tuple[pa.Array, np.ndarray]:
    """str/bytes values -> (utf8 array, invalid mask); an invalid value becomes ''. One C pass when all valid.

    Invalid: bytes that are not UTF-8, and str with lone surrogates (JSON's "\\ud800" escapes).
    """
    n = len(values)
    try:
        arr = pa.array(values)  # string when all are str, binary when any is bytes
        if arr.type == pa.string():
            return arr, np.zeros(n, dtype=bool)
        return arr.cast(pa.string()), np.zeros(n, dtype=bool)
    except (pa.ArrowInvalid, UnicodeEncodeError):
        bad = np.array([not _is_utf8(v) for v in values], dtype=bool)
        fixed = [b"" if b else (v.encode("utf-8") if isinstance(v, str) else v) for v, b in zip(values, bad.tolist())]
        return pa.array(fixed, pa.binary()).cast(pa.string()), bad


def _is_utf8(v: bytes | str) -> bool:
    try:
        v.decode("utf-8") if isinstance(v, bytes) else v.encode("utf-8")
        return True
    except UnicodeError:
        return False


def clean_batch(
    srcs: list, tgts: list, cfg: DataConfig, known: list[str | None] | None = None
) -> tuple[np.ndarray, pa.Array, pa.Array]:
    r"""Vectorised cleaning of raw sides (bytes or str) -> (codes, stripped src, stripped tgt).

    codes[i] is 0 for a kept pair, else 1 + the index in REJECT_REASONS of the first reason that
    applies; `known` carries reasons a reader already decided (a fuzzy catalog entry).

        >>> codes, s, t = clean_batch([b"hi ", b"\xff", "x"], ["Hallo", "ok", "y" * 20], DataConfig())
        >>> [REJECT_REASONS[c - 1] if c else None for c in codes], s.to_pylist()[0]
        ([None, 'invalid_utf8', 'ratio'], 'hi')
    """
    import pyarrow.compute as pc

    n = len(srcs)
    s_arr, s_bad = _string_array(srcs)
    t_arr, t_bad = _string_array(tgts)
    s_arr, t_arr = pc.utf8_trim_whitespace(s_arr), pc.utf8_trim_whitespace(t_arr)
    sb = pc.binary_length(s_arr).to_numpy().astype(np.int64)
    tb = pc.binary_length(t_arr).to_numpy().astype(np.int64)
    sc = pc.utf8_length(s_arr).to_numpy()
    tc = pc.utf8_length(t_arr).to_numpy()
    # Later rules first, so that the first rule that applies wins.
    codes = np.zeros(n, dtype=np.int8)
    code = {r: np.int8(i + 1) for i, r in enumerate(REJECT_REASONS)}
    codes[np.maximum(sb, tb) > cfg.max_length_ratio * np.minimum(sb, tb)] = code["ratio"]
    codes[(sc > cfg.max_chars) | (tc > cfg.max_chars)] = code["too_long"]
    codes[(sb == 0) | (tb == 0)] = code["empty"]
    control = pc.or_(pc.match_substring_regex(s_arr, _CONTROL_CHARS), pc.match_substring_regex(t_arr, _CONTROL_CHARS))
    codes[control.to_numpy(zero_copy_only=False)] = code["control_chars"]
    known_any = known is not None and any(r is not None for r in known)
    if known_any:
        for i, r in enumerate(known):
            if r is not None and r != "header":
                codes[i] = code[r]
    codes[s_bad | t_bad] = code["invalid_utf8"]
    if known_any:
        for i, r in enumerate(known):
            if r == "header":
                codes[i] = code[r]
    return codes, s_arr, t_arr

