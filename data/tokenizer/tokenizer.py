"""The Tokenizer interface every kind implements, and what all kinds share.

    tok = train_tokenizer(TokenizerConfig(vocab_size=1000), ["corpus.txt"])
    tok.encode("hello world")          -> [..., ...]           (no BOS/EOS added)
    tok.decode(tok.encode(s)) == s     (byte_bpe: exact for every string)
    tok.save("out/")                   -> vocab.json, merges.txt, tokenizer.json, tpipe_tokenizer.json

The kinds: byte-level BPE (data/tokenizer/bpe_tokenizer.py), classic characters + </w> BPE
(data/tokenizer/char_bpe.py), sentencepiece (data/tokenizer/sp.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data.tokenizer.pretokenize import split_specials

FORMAT_VERSION = 1
META_FILE = "tpipe_tokenizer.json"


class Tokenizer(ABC):
    """What the pipeline uses. Special tokens 0, 1, 2 are padding, begin and end."""

    kind: str
    special_tokens: list[str]
    _special_ids: dict[str, int]  # special token -> id

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

    def _encode_around_specials(self, text: str, allowed: tuple[str, ...], encode_plain) -> list[int]:
        """'hi<s>yo' with '<s>' allowed -> encode_plain('hi') + [id of '<s>'] + encode_plain('yo')."""
        out: list[int] = []
        for k, part in enumerate(split_specials(text, allowed)):
            if k % 2:
                out.append(self._special_ids[part])
            elif part:
                out.extend(encode_plain(part))
        return out


def _encode_shard(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t) for t in texts]


def _encode_with_ray(tok: Tokenizer, texts: list[str], num_tasks: int) -> list[list[int]]:
    import ray

    task = ray.remote(num_cpus=1)(_encode_shard)
    ref = ray.put(tok)
    step = -(-len(texts) // num_tasks)
    refs = [task.remote(ref, texts[i : i + step]) for i in range(0, len(texts), step)]
    return [ids for shard in ray.get(refs) for ids in shard]


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
