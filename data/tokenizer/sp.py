"""The sentencepiece backend (kind `sentencepiece`, BPE or unigram, byte fallback) behind the same interface.

    tok = train_tokenizer(TokenizerConfig(kind="sentencepiece", vocab_size=8000), ["corpus.txt"])
    tok.encode("héllo")  ->  ids;  tok.decode(ids) == "héllo"

Training draws a sample of at most `sp_sample_lines` texts: each text's hash decides, and the sample
is the texts with the smallest hashes (a bottom-k sample). Ray tasks take the bottom-k of their own
chunk and the merged result is the bottom-k of those, so it does not depend on the number of tasks.

For an exact round trip the model is trained with the identity normalisation, no whitespace
collapsing and no dummy prefix; characters outside the learned pieces fall back to their UTF-8 bytes.
Ids: padding 0, begin 1, end 2, unknown 3 (special_tokens[0..3]), then the user special tokens as
sentencepiece control symbols (never produced from text; recognised only when allowed).
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import logging
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from data.exchange import Exchange
from data.io import write_atomic
from data.tokenizer.config import TokenizerConfig
from data.tokenizer.counting import Chunk, CountStats, Reader, for_tasks, iter_texts, plan_chunks
from data.tokenizer.errors import TokenizerFileError, TrainingError
from data.tokenizer.files import dumps_vocab
from data.tokenizer.pretokenize import text_to_bytes
from data.tokenizer.sp_hf import sp_hf_json
from data.tokenizer.tokenizer import FORMAT_VERSION, META_FILE, Tokenizer, hf_special_token_files

log = logging.getLogger("tpipe.tokenizer")

MODEL_FILE = "sentencepiece.model"


def _key(text: str) -> int:
    """A stable 32-bit hash of a text (Python's hash() differs between processes)."""
    return zlib.crc32(text_to_bytes(text))


def sample_chunk(chunk: Chunk, reader: Reader, k: int) -> tuple[list[tuple[int, str]], CountStats]:
    """The k texts of one chunk with the smallest (hash, text); runs in-process or as a Ray task."""
    stats = CountStats(files=[chunk.path])
    best: list[tuple[int, str]] = []
    for texts in iter_texts(chunk, reader, stats):
        cand = [(_key(t), t) for t in texts if t]
        best = heapq.nsmallest(k, best + cand) if len(best) + len(cand) > k else best + cand
    return sorted(best), stats


def merge_samples(a, b, k: int):
    """Bottom-k of two bottom-k samples is the bottom-k of their union."""
    return heapq.nsmallest(k, list(heapq.merge(a[0], b[0]))), a[1].add(b[1])


def draw_sample(inputs: list[str], reader: Reader, k: int, n_tasks: int,
                exchange: Exchange | None = None) -> tuple[list[str], CountStats]:
    chunks = plan_chunks(inputs, n_tasks)
    import ray

    if ray.is_initialized():
        exchange = exchange or Exchange()
        task = exchange.task(ray, sample_chunk)
        merge = exchange.task(ray, merge_samples)
        refs = [task.remote(c, reader, k) for c in for_tasks(chunks, exchange)]
        while len(refs) > 1:
            nxt = [merge.remote(refs[i], refs[i + 1], k) for i in range(0, len(refs) - 1, 2)]
            if len(refs) % 2:
                nxt.append(refs[-1])
            refs = nxt
        best, stats = ray.get(refs[0])
    else:
        best, stats = [], CountStats()
        for c in chunks:
            best, stats = merge_samples((best, stats), sample_chunk(c, reader, k), k)
    return [t for _, t in best], stats


def train_sentencepiece(cfg: TokenizerConfig, inputs: list[str], reader: Reader,
                        exchange: Exchange | None = None) -> SentencePieceTokenizer:
    import sentencepiece as spm

    specials = list(cfg.special_tokens)
    if len(specials) < 4:
        raise ValueError("tokenizer.kind sentencepiece needs an unknown token: tokenizer.special_tokens[3] (e.g. '<unk>')")
    sample, stats = draw_sample(inputs, reader, cfg.sp_sample_lines, cfg.num_workers, exchange)
    if not sample:
        raise TrainingError(
            f"tokenizer training inputs hold no text ({stats.texts} texts in {', '.join(inputs)}); nothing to learn from"
        )
    if stats.invalid_utf8_lines:
        log.warning(
            "%d lines of the tokenizer inputs are not valid UTF-8; sentencepiece sees U+FFFD for them",
            stats.invalid_utf8_lines,
        )
        # sentencepiece takes str; lone surrogates would be refused, so invalid bytes become U+FFFD here.
        sample = [t.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for t in sample]
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.sp_model_type,
            byte_fallback=True,
            character_coverage=cfg.sp_character_coverage,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=False,
            max_sentence_length=1 << 20,
            hard_vocab_limit=False,  # a small corpus gives a smaller vocabulary instead of an error
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            pad_piece=specials[0],
            bos_piece=specials[1],
            eos_piece=specials[2],
            unk_piece=specials[3],
            control_symbols=specials[4:] or None,
            num_threads=max(1, cfg.num_workers),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise TrainingError(f"sentencepiece training failed on {len(sample)} texts: {e}") from None
    tok = SentencePieceTokenizer(
        model.getvalue(),
        specials,
        train_stats={
            "texts": stats.texts,
            "bytes": stats.bytes,
            "sample_texts": len(sample),
            "invalid_utf8_lines": stats.invalid_utf8_lines,
            "model_type": cfg.sp_model_type,
            "vocab_size_asked": cfg.vocab_size,
            "stopped_early": False,
        },
    )
    if tok.vocab_size < cfg.vocab_size:
        tok.train_stats["stopped_early"] = True
        log.warning(
            "sentencepiece stopped early: vocabulary %d of the %d asked for; the corpus is too small",
            tok.vocab_size, cfg.vocab_size,
        )
    return tok


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model behind the tpipe Tokenizer interface."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, special_tokens: list[str], *, train_stats: dict[str, Any] | None = None):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.special_tokens = list(special_tokens)
        self.train_stats = dict(train_stats or {})
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._special_ids = {}
        for t in self.special_tokens:
            i = self._sp.piece_to_id(t)
            if self._sp.id_to_piece(i) != t:
                raise ValueError(f"sentencepiece model has no piece for special token {t!r}")
            self._special_ids[t] = i
        # unknown (id 3) is not skipped: it stands for text that could not be encoded
        self._skip = frozenset(i for t, i in self._special_ids.items() if t != self.special_tokens[3])

    def __getstate__(self):  # the processor is rebuilt from the proto (for Ray)
        return {"model_proto": self.model_proto, "special_tokens": self.special_tokens, "train_stats": self.train_stats}

    def __setstate__(self, state):
        self.__init__(state["model_proto"], state["special_tokens"], train_stats=state["train_stats"])

    def encode(self, text: str, *, allowed_special: set[str] | str = ()) -> list[int]:
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._encode_plain(text)
        return self._encode_around_specials(text, allowed, self._encode_plain)

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        try:
            return self._sp.encode(text)
        except (UnicodeEncodeError, TypeError):
            # lone surrogates (invalid input bytes read with surrogateescape): encode U+FFFD instead
            return self._sp.encode(text_to_bytes(text).decode("utf-8", "replace"))

    def encode_batch(self, texts: list[str], *, num_tasks: int = 1) -> list[list[int]]:
        if num_tasks > 1:
            return super().encode_batch(texts, num_tasks=num_tasks)
        try:
            return self._sp.encode(list(texts))
        except (UnicodeEncodeError, TypeError):
            return [self._encode_plain(t) for t in texts]

    def decode_bytes(self, ids: Iterable[int], *, skip_special: bool = True) -> bytes:
        ids = list(ids)
        n = self.vocab_size
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is outside this tokenizer's vocabulary (0..{n - 1})")
        # Decode the runs between special tokens separately so specials can be written as their text.
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._skip:
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                if not skip_special:
                    out.append(self._sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out).encode("utf-8")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return i if self._sp.id_to_piece(i) == token else None

    def id_to_token(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(self.model_proto)
        h.update(json.dumps(self.special_tokens, ensure_ascii=False).encode("utf-8"))
        return h.hexdigest()[:16]

    def explain(self, text: str) -> str:
        lines = [f"sentencepiece tokenizer, {self.vocab_size} pieces"]
        for i in self.encode(text):
            piece = self._sp.id_to_piece(i)
            kind = "byte" if self._sp.is_byte(i) else "unknown" if self._sp.is_unknown(i) else "piece"
            lines.append(f"  {i:>6} {kind:<7} {piece!r}  score {self._sp.get_score(i):.3f}")
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> Path:
        """sentencepiece.model, vocab.json (for inspection), the Hugging Face files (tokenizer.json,
        tokenizer_config.json, special_tokens_map.json) and tpipe_tokenizer.json, each written atomically."""
        out = Path(out_dir)
        write_atomic(out / MODEL_FILE, self.model_proto)
        write_atomic(out / "vocab.json", dumps_vocab([self._sp.id_to_piece(i) for i in range(self.vocab_size)]))
        hf = sp_hf_json(self.model_proto)
        if hf is not None:  # a model trained elsewhere, with other text handling, gets none
            write_atomic(out / "tokenizer.json", json.dumps(hf, ensure_ascii=False, indent=1) + "\n")
            for name, content in hf_special_token_files(self.special_tokens).items():
                write_atomic(out / name, json.dumps(content, ensure_ascii=False, indent=1) + "\n")
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "special_tokens": self.special_tokens,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            "train": self.train_stats,
        }
        write_atomic(out / META_FILE, json.dumps(meta, ensure_ascii=False, indent=1) + "\n")
        return out


def load_sentencepiece(directory: Path, meta: dict[str, Any]) -> SentencePieceTokenizer:
    path = directory / MODEL_FILE
    if not path.is_file():
        raise TokenizerFileError(f"{path}: file is missing")
    proto = path.read_bytes()  # a protobuf, parsed by sentencepiece (no pickle)
    try:
        tok = SentencePieceTokenizer(proto, meta["special_tokens"], train_stats=meta.get("train"))
    except (RuntimeError, ValueError) as e:
        raise TokenizerFileError(f"{path}: not a usable sentencepiece model ({e}); truncated or edited?") from None
    if tok.fingerprint != meta["fingerprint"]:
        raise TokenizerFileError(
            f"{path}: gives fingerprint {tok.fingerprint} but {directory / META_FILE} records {meta['fingerprint']}; "
            "the model was replaced or edited after saving"
        )
    return tok
