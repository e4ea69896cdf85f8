"""Byte-level BPE (kind byte_bpe, GPT-2 compatible): the BPETokenizer class, and how it is built from
trained merges. Classic characters + </w> BPE (kind char_bpe) is its subclass in char_bpe.py.

Ids, byte_bpe: special tokens 0..S-1 (padding, begin, end, ...), then the 256 bytes in the order of
their GPT-2 characters' code points (GPT-2's and Hugging Face's order, which makes tie-breaks agree),
then one id per merge in merge order. The vocabulary is derived from the merges; vocab.json is
written for other tools and checked against the derivation on load (bpe_files.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

from data.tokenizer.bpe import apply_merges, learn_merges, trace_merges
from data.tokenizer.config import TokenizerConfig
from data.io import write_atomic
from data.tokenizer.files import dumps_vocab
from data.tokenizer.pretokenize import (
    byte_order,
    bytes_to_unicode,
    compiled,
    cut_long,
    from_byte_level,
    pattern_text,
    text_to_bytes,
    to_byte_level,
)
from data.tokenizer.tokenizer import FORMAT_VERSION, META_FILE, Tokenizer, hf_special_token_files

log = logging.getLogger("tpipe.tokenizer")

# Pre-tokens kept in the encoding cache before it is emptied (about 100 MB at most).
CACHE_SIZE = 500_000


class BPETokenizer(Tokenizer):
    """Byte-level BPE, GPT-2's format. Subclasses change the base symbols (char_bpe.CharBPETokenizer).

    tokens: id -> token as written in vocab.json (GPT-2's byte characters: ' hi' is 'Ġhi').
    merges: in rank order, as token pairs.
    """

    kind = "byte_bpe"

    def __init__(
        self,
        tokens: list[str],
        merges: list[tuple[str, str]],
        special_tokens: list[str],
        pattern: str,
        max_pretoken_chars: int,
        *,
        pattern_name: str = "",
        train_stats: dict[str, Any] | None = None,
    ) -> None:
        self.tokens = tokens
        self.merges = merges
        self.special_tokens = list(special_tokens)
        self.pattern = pattern
        self.pattern_name = pattern_name
        self.max_pretoken_chars = max_pretoken_chars
        self.train_stats = dict(train_stats or {})
        self._token_id = {t: i for i, t in enumerate(tokens)}
        if len(self._token_id) != len(tokens):
            raise ValueError("BPETokenizer: duplicate tokens in the vocabulary")
        self._special_ids = {t: self._token_id[t] for t in self.special_tokens}
        self._special_set = frozenset(self._special_ids.values())
        # (left id, right id) -> rank, and -> id of the merged token
        self._ranks: dict[tuple[int, int], int] = {}
        self._results: dict[tuple[int, int], int] = {}
        for r, (a, b) in enumerate(merges):
            p = (self._token_id[a], self._token_id[b])
            if p not in self._ranks:  # a repeated merge line can never fire twice; the first rank wins
                self._ranks[p] = r
                self._results[p] = self._token_id[a + b]
        self._findall = compiled(pattern).findall
        self._cache: dict[str, list[int]] = {}
        self._init_symbols()

    def _init_symbols(self) -> None:
        """The base symbols: byte -> id, and id -> the bytes it decodes to."""
        to_char = bytes_to_unicode()
        self._byte_ids = [self._token_id[to_char[b]] for b in range(256)]
        self._id_bytes = [
            t.encode("utf-8") if i in self._special_set else from_byte_level(t) for i, t in enumerate(self.tokens)
        ]

    # ---- encoding ----------------------------------------------------------------------------

    def _base_ids(self, piece: str) -> list[int]:
        """One pre-token -> its base symbols' ids, before merging: 'hé' -> ids of b'h', b'\\xc3', b'\\xa9'."""
        byte_ids = self._byte_ids
        return [byte_ids[b] for b in text_to_bytes(piece)]

    def _initial_ids(self, piece: str) -> list[int]:
        """_base_ids of a pre-token already cut to max_pretoken_chars; refuses symbols with no id."""
        return self._base_ids(piece)

    def _encode_pieces(self, pieces: list[str]) -> list[list[int]]:
        """Encode unseen pre-tokens with the Python `apply_merges`.

        Never compiled: numba lost here even with its machine code cached (75k lines of en.txt at
        8000 tokens: 2.2 CPU s in Python, 4.5 s compiled and cached, 9 s on first use), since a call
        merges only one sentence's few unseen pre-tokens; and its first use cost a cold `tpipe
        translate` seconds. numba stays in tokenizer training's merge loop, where it wins.
        """
        out: list[list[int]] = []
        for p in pieces:
            ids: list[int] = []
            for part in cut_long(p, self.max_pretoken_chars):
                ids.extend(apply_merges(self._initial_ids(part), self._ranks, self._results))
            out.append(ids)
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        """encode() with no special tokens recognised."""
        pieces = self._findall(text)
        cache = self._cache
        try:  # the common case: every pre-token was seen before
            return list(chain.from_iterable(map(cache.__getitem__, pieces)))
        except KeyError:
            pass
        if len(cache) > CACHE_SIZE:
            cache.clear()
        missing = [p for p in dict.fromkeys(pieces) if p not in cache]
        cache.update(zip(missing, self._encode_pieces(missing)))
        out = list(chain.from_iterable(map(cache.__getitem__, pieces)))
        for p in missing:
            if len(p) > 64:  # long pieces are rare and would bloat the cache
                del cache[p]
        return out

    def encode_batch(self, texts: list[str], *, num_tasks: int = 1) -> list[list[int]]:
        if num_tasks > 1:
            return super().encode_batch(texts, num_tasks=num_tasks)
        return list(map(self.encode_ordinary, texts))

    def encode(self, text: str, *, allowed_special: set[str] | str = ()) -> list[int]:
        if not allowed_special:
            return self.encode_ordinary(text)
        allowed = self._allowed(allowed_special)
        return self._encode_around_specials(text, allowed, self.encode_ordinary)

    # ---- decoding ----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = True) -> bytes:
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self.tokens)):
            bad = next(i for i in ids if not 0 <= i < len(self.tokens))
            raise ValueError(f"token id {bad} is outside this tokenizer's vocabulary (0..{len(self.tokens) - 1})")
        if skip_special:
            ids = [i for i in ids if i not in self._special_set]
        return self._join(ids)

    def _join(self, ids: list[int]) -> bytes:
        """The bytes of ids already checked and without skipped specials."""
        return b"".join(map(self._id_bytes.__getitem__, ids))

    # ---- facts -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._token_id.get(token)

    def id_to_token(self, i: int) -> str:
        return self.tokens[i]

    @property
    def fingerprint(self) -> str:
        return bpe_fingerprint(self.kind, self.merges, self.special_tokens, self.pattern, self.max_pretoken_chars)

    def explain(self, text: str) -> str:
        """Per pre-token: its bytes, each merge applied with its rank, and the final ids."""
        lines = [f"{self.kind} tokenizer, {self.vocab_size} tokens, {len(self.merges)} merges, pattern {self.pattern_name or self.pattern!r}"]
        for piece in self._findall(text):
            parts = cut_long(piece, self.max_pretoken_chars)
            for part in parts:
                data = text_to_bytes(part)
                lines.append(f"pre-token {part!r}: {len(data)} bytes " + " ".join(f"{b:02x}" for b in data))
                ids = self._base_ids(part)
                lines.append("  symbols: " + " ".join(self._show(i) for i in ids))
                ids, steps = trace_merges(ids, self._ranks, self._results)
                for rank, a, b, new in steps:
                    lines.append(f"  merge rank {rank:>6}: {self._show(a)} + {self._show(b)} -> {self._show(new)} (id {new})")
                lines.append("  ids: " + " ".join(map(str, ids)))
        return "\n".join(lines)

    def _show(self, i: int) -> str:
        return repr(self._id_bytes[i])[1:]

    # ---- files -------------------------------------------------------------------------------

    def save(self, out_dir: str | Path) -> Path:
        """vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json (Hugging
        Face) and tpipe_tokenizer.json, each written atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "vocab.json", dumps_vocab(self.tokens))
        write_atomic(out / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
        write_atomic(out / "tokenizer.json", json.dumps(self.hf_json(), ensure_ascii=False, indent=1) + "\n")
        for name, content in hf_special_token_files(self.special_tokens).items():
            write_atomic(out / name, json.dumps(content, ensure_ascii=False, indent=1) + "\n")
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "pattern_name": self.pattern_name,
            "pattern": self.pattern,
            "max_pretoken_chars": self.max_pretoken_chars,
            "special_tokens": self.special_tokens,
            "vocab_size": self.vocab_size,
            "merges": len(self.merges),
            "fingerprint": self.fingerprint,
            "train": self.train_stats,
        }
        write_atomic(out / META_FILE, json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
        return out

    def hf_json(self) -> dict[str, Any]:
        """A tokenizer.json that `tokenizers.Tokenizer.from_file` loads and that encodes as we do."""
        splits: list[dict[str, Any]] = [
            {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False}
        ]
        if self.max_pretoken_chars:
            splits.append(
                {
                    "type": "Split",
                    "pattern": {"Regex": f"[\\s\\S]{{1,{self.max_pretoken_chars}}}"},
                    "behavior": "Isolated",
                    "invert": False,
                }
            )
        splits.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
        decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": self._special_ids[t],
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for t in self.special_tokens
            ],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": splits},
            "post_processor": None,
            "decoder": decoder,
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": {t: i for i, t in enumerate(self.tokens)},
                "merges": [f"{a} {b}" for a, b in self.merges],
            },
        }
    # ---- training: the kind's base symbols and merge loop (train.py calls these) ----------------

    @classmethod
    def pattern_name_of(cls, cfg: TokenizerConfig) -> str:
        return cfg.pattern

    @classmethod
    def check_config(cls, cfg: TokenizerConfig) -> None:
        S = len(cfg.special_tokens)
        if cfg.vocab_size < S + 256:
            raise ValueError(
                f"tokenizer.vocab_size {cfg.vocab_size} is smaller than {S} special tokens + 256 bytes = {S + 256}"
            )

    @classmethod
    def learn(cls, keys: list[bytes], counts: list[int], cfg: TokenizerConfig, backend: str) -> tuple[list, list, list]:
        """Pre-token bytes and counts -> (base: str specials then bytes, tokens grown from it, merges as id pairs)."""
        specials = list(cfg.special_tokens)
        S = len(specials)
        # Specials stay str so that no merged bytes can ever collide with them.
        base: list = list(specials) + [bytes([b]) for b in byte_order()]
        tokens = list(base)
        byte_id = {b: S + k for k, b in enumerate(byte_order())}
        if backend == "numba":
            from data.tokenizer._bpe_numba import byte_words_to_arrays, learn_merges_arrays

            syms, lens = byte_words_to_arrays(keys, byte_id)
            keys.clear()
            return base, tokens, learn_merges_arrays(syms, lens, counts, tokens, cfg.vocab_size, cfg.min_frequency)
        words = [[byte_id[x] for x in k] for k in keys]
        keys.clear()
        return base, tokens, learn_merges(words, counts, tokens, cfg.vocab_size, cfg.min_frequency)

    @classmethod
    def from_trained(
        cls,
        merges_ids: list[tuple[int, int]],
        base: list,
        tokens: list,
        cfg: TokenizerConfig,
        train_stats: dict[str, Any] | None = None,
    ) -> BPETokenizer:
        """Build from trained merges given as id pairs over `tokens` (`base`, then what the merges added)."""
        specials, pattern_name = list(cfg.special_tokens), cls.pattern_name_of(cfg)
        names = cls._names(tokens, len(specials))
        merges = [(names[a], names[b]) for a, b in merges_ids]
        return cls(
            derive_tokens(names[: len(base)], merges), merges, specials, pattern_text(pattern_name),
            cfg.max_pretoken_chars, pattern_name=pattern_name, train_stats=train_stats,
        )

    @staticmethod
    def _names(tokens: list, n_specials: int) -> list[str]:
        """Trained tokens as vocab.json writes them: specials, then bytes as GPT-2 characters (b' hi' -> 'Ġhi')."""
        return list(tokens[:n_specials]) + [to_byte_level(t) for t in tokens[n_specials:]]


def bpe_fingerprint(kind: str, merges: list[tuple[str, str]], specials: list[str], pattern: str, max_chars: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([kind, pattern, max_chars, list(specials)], ensure_ascii=False).encode("utf-8"))
    for a, b in merges:
        h.update(f"\n{a} {b}".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


# ---- building from trained merges -----------------------------------------------------------


def derive_tokens(base: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """The vocabulary the merges make: base symbols, then each merge's result unless already present.

    ['a', 'b', 'c'] with [('a', 'b'), ('ab', 'c'), ('a', 'bc')] -> ['a', 'b', 'c', 'ab', 'abc']  (no 'bc': not a merge result)
    """
    tokens = list(base)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    return tokens
