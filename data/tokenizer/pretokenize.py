"""Pre-tokenization: text -> pre-tokens (the units BPE merges never cross), and GPT-2's byte <-> unicode map.

BPE runs inside each pre-token only, so "dog." and "dog!" share the token for "dog":

    pretokens("Hello world's end", GPT2)  ->  ['Hello', ' world', "'s", ' end']

Special tokens are split out before the regex runs (only those the caller allows); a pre-token longer
than `max_chars` characters is cut into pieces of `max_chars` so that a 10 MB line without spaces costs
linear time in training and encoding (see docs/tokenizer.md, "Long pre-tokens").
"""

from __future__ import annotations

from functools import lru_cache

import regex

# GPT-2's pattern, exactly as in openai/gpt-2 encoder.py and Hugging Face's ByteLevel pre-tokenizer.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# cl100k's pattern without possessive quantifiers (the form HF's Llama-3 tokenizer.json uses, which
# Oniguruma also accepts): case-insensitive contractions, numbers in groups of at most three digits.
CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# char_bpe, the seed's classic variant: words are runs of non-space characters.
WHITESPACE_PATTERN = r"""\S+"""

PATTERNS = {"gpt2": GPT2_PATTERN, "cl100k": CL100K_PATTERN, "whitespace": WHITESPACE_PATTERN}


def pattern_text(name: str) -> str:
    """'gpt2' -> the regex source; refuses unknown names."""
    try:
        return PATTERNS[name]
    except KeyError:
        raise ValueError(f"tokenizer.pattern: unknown pattern '{name}'; allowed: {', '.join(PATTERNS)}") from None


@lru_cache(maxsize=None)
def compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


@lru_cache(maxsize=None)
def special_splitter(specials: tuple[str, ...]) -> regex.Pattern | None:
    """A regex whose captured group is a special token; longest first so '<s>' never eats '<s>x'."""
    if not specials:
        return None
    alternatives = "|".join(regex.escape(s) for s in sorted(specials, key=lambda s: (-len(s), s)))
    return regex.compile(f"({alternatives})")


def split_specials(text: str, specials: tuple[str, ...]) -> list[str]:
    """'a<s>b' with ('<s>',) -> ['a', '<s>', 'b']: odd positions are special tokens."""
    splitter = special_splitter(specials)
    if splitter is None:
        return [text]
    return splitter.split(text)


def cut_long(piece: str, max_chars: int) -> list[str]:
    """'abcdefg' with max_chars=3 -> ['abc', 'def', 'g']; max_chars=0 never cuts."""
    if max_chars <= 0 or len(piece) <= max_chars:
        return [piece]
    return [piece[i : i + max_chars] for i in range(0, len(piece), max_chars)]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters: 0x20 (space) -> 'Ġ', 0x41 -> 'A'.

    Printable Latin-1 bytes map to themselves; the other 68 go to U+0100 onwards, in byte order, so that
    vocab.json and merges.txt never contain whitespace or control characters.
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def byte_order() -> list[int]:
    """The 256 bytes in the order of their characters' code points: GPT-2's and HF's ids for them.

    [33, 34, ..., 126, 161, ..., 172, 174, ..., 255, 0, 1, ..., 32, 127, ..., 160, 173]
    """
    return sorted(range(256), key=lambda b: ord(bytes_to_unicode()[b]))


def to_byte_level(data: bytes) -> str:
    """b' hi' -> 'Ġhi'"""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def from_byte_level(token: str, *, where: str = "") -> bytes:
    """'Ġhi' -> b' hi'; a character outside the map is an error naming `where`."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise ValueError(f"{where}token {token!r} has character {e.args[0]!r}, not in GPT-2's byte map") from None


def text_to_bytes(text: str) -> bytes:
    """UTF-8 of `text`; lone surrogates U+DC80..U+DCFF (how invalid input bytes are read) become those bytes."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")
