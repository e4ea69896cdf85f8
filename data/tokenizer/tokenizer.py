"""The Tokenizer interface and its BPE implementation (byte-level, GPT-2 compatible; or characters + </w>).

    tok = train_tokenizer(TokenizerConfig(vocab_size=1000), ["corpus.txt"])
    tok.encode("hello world")          -> [..., ...]           (no BOS/EOS added)
    tok.decode(tok.encode(s)) == s     (byte_bpe: exact for every string)
    tok.save("out/")                   -> vocab.json, merges.txt, tokenizer.json, tpipe_tokenizer.json

Ids, byte_bpe: special tokens 0..S-1 (padding, begin, end, ...), then the 256 bytes in the order of
their GPT-2 characters' code points (GPT-2's and Hugging Face's order, which makes tie-breaks agree),
then one id per merge in merge order. The vocabulary is derived from the merges; vocab.json is
written for other tools and checked against the derivation on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

from data.tokenizer.bpe import apply_merges, trace_merges
from data.tokenizer.files import (
    TokenizerFileError,
    dumps_vocab,
    json_line_of,
    read_json,
    read_text,
    write_atomic,
)
from data.tokenizer.pretokenize import (
    bytes_to_unicode,
    byte_order,
    compiled,
    cut_long,
    from_byte_level,
    pattern_text,
    split_specials,
    text_to_bytes,
    to_byte_level,
)

log = logging.getLogger("tpipe.tokenizer")

FORMAT_VERSION = 1
META_FILE = "tpipe_tokenizer.json"
END_OF_WORD = "</w>"
# Pre-tokens kept in the encoding cache before it is emptied (about 100 MB at most).
CACHE_SIZE = 500_000


class Tokenizer(ABC):
    """What the pipeline uses. Special tokens 0, 1, 2 are padding, begin and end."""

    kind: str
    special_tokens: list[str]

    @abstractmethod
    def encode(self, text: str, *, allowed_special: set[str] | str = ()) -> list[int]:
        """Ids of `text`, no BOS/EOS. Special tokens in the text count only if in `allowed_special` ('all')."""

    @abstractmethod
    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = True) -> bytes:
        """The bytes the ids stand for."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Hash of merges (or model), special tokens and pattern: later steps record it."""

    @abstractmethod
    def save(self, out_dir: str | Path) -> Path: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...

    @abstractmethod
    def id_to_token(self, i: int) -> str: ...

    @abstractmethod
    def explain(self, text: str) -> str:
        """A human-readable account of how `text` is encoded."""

    # ---- shared behaviour ------------------------------------------------------------------

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """The inverse of encode; invalid UTF-8 (a cut in the middle of a character) becomes U+FFFD."""
        return self.decode_bytes(ids, skip_special=skip_special).decode("utf-8", errors="replace")

    def encode_batch(self, texts: list[str], *, num_tasks: int = 1) -> list[list[int]]:
        """encode() of each text; with Ray initialised and num_tasks > 1, shards go to Ray tasks."""
        if num_tasks > 1 and len(texts) > 1:
            import ray

            if ray.is_initialized():
                return _encode_with_ray(self, texts, num_tasks)
        return [self.encode(t) for t in texts]

    def _special_id(self, k: int, role: str) -> int:
        if len(self.special_tokens) <= k:
            raise AttributeError(f"this {self.kind} tokenizer has no {role} token (special tokens: {self.special_tokens})")
        return self.token_to_id(self.special_tokens[k])

    @property
    def pad_id(self) -> int:
        return self._special_id(0, "padding")

    @property
    def bos_id(self) -> int:
        return self._special_id(1, "begin")

    @property
    def eos_id(self) -> int:
        return self._special_id(2, "end")

    def _allowed(self, allowed_special: set[str] | str) -> tuple[str, ...]:
        if allowed_special == "all":
            return tuple(self.special_tokens)
        if isinstance(allowed_special, str):
            raise ValueError(f"allowed_special must be 'all' or a set of special tokens, got {allowed_special!r}")
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special has tokens that are not special tokens: {sorted(unknown)}")
        return tuple(sorted(allowed_special))


def _encode_shard(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t) for t in texts]


def _encode_with_ray(tok: Tokenizer, texts: list[str], num_tasks: int) -> list[list[int]]:
    import ray

    task = ray.remote(num_cpus=1)(_encode_shard)
    ref = ray.put(tok)
    step = -(-len(texts) // num_tasks)
    refs = [task.remote(ref, texts[i : i + step]) for i in range(0, len(texts), step)]
    return [ids for shard in ray.get(refs) for ids in shard]


class BPETokenizer(Tokenizer):
    """Byte-level BPE (kind byte_bpe, GPT-2's format) or the classic characters + </w> (kind char_bpe).

    tokens: id -> token as written in vocab.json (GPT-2's byte characters for byte_bpe: ' hi' is 'Ġhi').
    merges: in rank order, as token pairs.
    """

    def __init__(
        self,
        kind: str,
        tokens: list[str],
        merges: list[tuple[str, str]],
        special_tokens: list[str],
        pattern: str,
        max_pretoken_chars: int,
        *,
        pattern_name: str = "",
        train_stats: dict[str, Any] | None = None,
    ) -> None:
        if kind not in ("byte_bpe", "char_bpe"):
            raise ValueError(f"BPETokenizer kind must be byte_bpe or char_bpe, got {kind!r}")
        self.kind = kind
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
        if kind == "byte_bpe":
            to_char = bytes_to_unicode()
            self._byte_ids = [self._token_id[to_char[b]] for b in range(256)]
            self._id_bytes = [
                t.encode("utf-8") if i in self._special_set else from_byte_level(t) for i, t in enumerate(tokens)
            ]
        else:
            self._unk_id = self._special_ids[self.special_tokens[3]] if len(self.special_tokens) > 3 else None
            self._id_bytes = [t.encode("utf-8") for t in tokens]

    # ---- encoding ----------------------------------------------------------------------------

    def _initial_ids(self, piece: str) -> list[int]:
        """One pre-token (already cut to max_pretoken_chars) -> its base symbols' ids, before merging."""
        if self.kind == "byte_bpe":
            byte_ids = self._byte_ids
            return [byte_ids[b] for b in text_to_bytes(piece)]
        symbols = list(piece)
        symbols[-1] += END_OF_WORD
        get = self._token_id.get
        ids = [get(s, self._unk_id) for s in symbols]
        if None in ids:
            raise ValueError(f"char_bpe: {piece!r} has characters outside the alphabet and there is no <unk>")
        return ids

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
        out: list[int] = []
        for k, part in enumerate(split_specials(text, allowed)):
            if k % 2:
                out.append(self._special_ids[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    # ---- decoding ----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = True) -> bytes:
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self.tokens)):
            bad = next(i for i in ids if not 0 <= i < len(self.tokens))
            raise ValueError(f"token id {bad} is outside this tokenizer's vocabulary (0..{len(self.tokens) - 1})")
        if skip_special:
            ids = [i for i in ids if i not in self._special_set]
        if self.kind == "byte_bpe":
            return b"".join(map(self._id_bytes.__getitem__, ids))
        # char_bpe: "</w>" ends a word; words are joined with one space.
        text = "".join(self.tokens[i] for i in ids).replace(END_OF_WORD, " ")
        return text[:-1].encode("utf-8") if text.endswith(" ") else text.encode("utf-8")

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
                if self.kind == "byte_bpe":
                    ids = [self._byte_ids[b] for b in data]
                else:
                    symbols = list(part)
                    symbols[-1] += END_OF_WORD
                    ids = [self._token_id.get(s, self._unk_id) for s in symbols]
                lines.append("  symbols: " + " ".join(self._show(i) for i in ids))
                ids, steps = trace_merges(ids, self._ranks, self._results)
                for rank, a, b, new in steps:
                    lines.append(f"  merge rank {rank:>6}: {self._show(a)} + {self._show(b)} -> {self._show(new)} (id {new})")
                lines.append("  ids: " + " ".join(map(str, ids)))
        return "\n".join(lines)

    def _show(self, i: int) -> str:
        return repr(self.tokens[i]) if self.kind == "char_bpe" else repr(self._id_bytes[i])[1:]

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
        byte = self.kind == "byte_bpe"
        # char_bpe's words are the runs of non-space characters: HF's WhitespaceSplit drops the spaces.
        splits: list[dict[str, Any]] = [
            {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False}
            if byte
            else {"type": "WhitespaceSplit"}
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
        if byte:
            splits.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
            decoder = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        else:
            decoder = {"type": "BPEDecoder", "suffix": END_OF_WORD}
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
                "unk_token": None if byte or len(self.special_tokens) < 4 else self.special_tokens[3],
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None if byte else END_OF_WORD,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": {t: i for i, t in enumerate(self.tokens)},
                "merges": [f"{a} {b}" for a, b in self.merges],
            },
        }


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


def byte_base(special_tokens: list[str]) -> list[str]:
    """Specials, then the 256 byte characters in code-point order (GPT-2's and HF's ids for bytes)."""
    to_char = bytes_to_unicode()
    return list(special_tokens) + [to_char[b] for b in byte_order()]


def byte_bpe_from_merges(
    merges_ids: list[tuple[int, int]],
    tokens_bytes: list[bytes],
    special_tokens: list[str],
    pattern_name: str,
    max_pretoken_chars: int,
    train_stats: dict[str, Any] | None = None,
) -> BPETokenizer:
    """Build from trained merges given as id pairs over `tokens_bytes` (specials first, then bytes, then merges)."""
    S = len(special_tokens)
    names = list(special_tokens) + [to_byte_level(t) for t in tokens_bytes[S:]]
    merges = [(names[a], names[b]) for a, b in merges_ids]
    tokens = derive_tokens(byte_base(special_tokens), merges)
    return BPETokenizer(
        "byte_bpe", tokens, merges, special_tokens, pattern_text(pattern_name), max_pretoken_chars,
        pattern_name=pattern_name, train_stats=train_stats,
    )


# ---- loading -------------------------------------------------------------------------------


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
        return BPETokenizer("byte_bpe", tokens, merges, specials, pattern_text("gpt2"), 0, pattern_name="gpt2")
    meta_path = directory / META_FILE
    kind = meta["kind"]
    tok = BPETokenizer(
        kind,
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


def hf_special_token_files(special_tokens: list[str]) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json, so that `transformers.AutoTokenizer` knows
    which added tokens pad, begin and end (and are unknown):

    ['<pad>', '<s>', '</s>', '<unk>', '<x>'] -> {'pad_token': '<pad>', 'bos_token': '<s>',
    'eos_token': '</s>', 'unk_token': '<unk>', 'additional_special_tokens': ['<x>']}
    """
    roles = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), special_tokens))
    if special_tokens[4:]:
        roles["additional_special_tokens"] = list(special_tokens[4:])
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **roles}
    return {"tokenizer_config.json": config, "special_tokens_map.json": roles}
