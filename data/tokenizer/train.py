"""train_tokenizer and load_tokenizer: the two entry points the pipeline calls.

    tok = train_tokenizer(TokenizerConfig(vocab_size=8000), ["shard-0.parquet", "shard-1.parquet"])
    tok.save("tok/");  load_tokenizer("tok/").fingerprint == tok.fingerprint

Training: count pre-tokens (Ray tasks when Ray is initialised, summed in a tree), then learn merges in
this process with the incremental loop of `bpe.learn_merges`. The merges depend only on the summed
counts, so the number of tasks never changes the result. What differs between the BPE kinds (base
symbols, checks, how the tokenizer is built) is the kind's class (BPE_KINDS); sentencepiece is sp.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from data.exchange import Exchange
from data.tokenizer.bpe import merge_backend
from data.tokenizer.bpe_files import BPE_KINDS, load_bpe
from data.tokenizer.config import TokenizerConfig
from data.tokenizer.counting import CountStats, Reader, count_pretokens
from data.tokenizer.errors import TokenizerFileError, TrainingError
from data.tokenizer.files import read_json
from data.tokenizer.pretokenize import pattern_text
from data.tokenizer.tokenizer import FORMAT_VERSION, META_FILE, Tokenizer

log = logging.getLogger("tpipe.tokenizer")


def train_tokenizer(
    cfg: TokenizerConfig,
    inputs: list[str],
    *,
    text_columns: tuple[str, ...] = ("src", "tgt"),
    split: str | None = "train",
    exchange: Exchange | None = None,
) -> Tokenizer:
    """Train the tokenizer `cfg.kind` on `inputs` (Parquet files or one-text-per-line files).

    `exchange` places the Ray tasks and hands them the inputs' URIs on a remote artifact root
    (data/exchange.py); by default they open `inputs` where they are."""
    reader = Reader(tuple(text_columns), split)
    inputs = [str(p) for p in inputs]
    if cfg.kind == "sentencepiece":
        from data.tokenizer.sp import train_sentencepiece

        return train_sentencepiece(cfg, inputs, reader, exchange)
    if cfg.kind not in BPE_KINDS:
        raise ValueError(f"tokenizer.kind: unknown kind {cfg.kind!r}; allowed: byte_bpe, char_bpe, sentencepiece")
    kind = BPE_KINDS[cfg.kind]
    kind.check_config(cfg)

    t0 = time.perf_counter()
    counts, stats, n_tasks = count_pretokens(
        inputs, pattern_text(kind.pattern_name_of(cfg)), tuple(cfg.special_tokens), cfg.max_pretoken_chars, reader,
        cfg.num_workers, exchange,
    )
    t_count = time.perf_counter() - t0
    _check_counts(counts, stats, inputs, cfg)

    # A fixed word order (sorted by bytes) keeps the whole run reproducible, though merges would not change.
    keys = sorted(counts)
    word_counts = [counts[k] for k in keys]
    n_words = len(keys)
    del counts
    backend = merge_backend(cfg.merge_backend, n_words)
    log.info("merge loop: %s, %d distinct pre-tokens", backend, n_words)
    t1, c1 = time.perf_counter(), time.process_time()
    base, tokens, merges_ids = kind.learn(keys, word_counts, cfg, backend)  # empties keys: memory
    t_merge, c_merge = time.perf_counter() - t1, time.process_time() - c1
    if len(tokens) < cfg.vocab_size:
        log.warning(
            "tokenizer training stopped early: found %d merges (vocabulary %d of the %d asked for); no pair is "
            "seen min_frequency=%d times any more. The corpus is too small for this vocabulary.",
            len(merges_ids), len(tokens), cfg.vocab_size, cfg.min_frequency,
        )
    train_stats = {
        "texts": stats.texts,
        "bytes": stats.bytes,
        "invalid_utf8_lines": stats.invalid_utf8_lines,
        "long_pretokens_cut": stats.long_pretokens_cut,
        "unique_pretokens": n_words,
        "count_tasks": n_tasks,
        "merges_found": len(merges_ids),
        "vocab_size_asked": cfg.vocab_size,
        "stopped_early": len(tokens) < cfg.vocab_size,
        "count_seconds": round(t_count, 3),
        "count_peak_rss_mb": round(stats.peak_rss_mb, 1),
        "count_cpu_seconds": round(stats.cpu_seconds, 3),
        "merge_cpu_seconds": round(c_merge, 3),
        "merge_seconds": round(t_merge, 3),
        "merge_backend": backend,
        "files": stats.files,
    }
    log.info("tokenizer trained: %s", train_stats)
    return kind.from_trained(merges_ids, base, tokens, cfg, train_stats)


def _check_counts(counts: dict, stats: CountStats, inputs: list[str], cfg: TokenizerConfig) -> None:
    """Refuse an empty corpus; warn about invalid UTF-8 and say how many pre-tokens were cut."""
    if not counts:
        raise TrainingError(
            f"tokenizer training inputs hold no text ({stats.texts} texts, {stats.bytes} bytes in "
            f"{', '.join(inputs)}); nothing to learn from"
        )
    if stats.invalid_utf8_lines:
        log.warning(
            "%d lines of the tokenizer inputs are not valid UTF-8; their bytes were counted as raw bytes",
            stats.invalid_utf8_lines,
        )
    if stats.long_pretokens_cut:
        log.info("%d pre-tokens longer than %d characters were cut", stats.long_pretokens_cut, cfg.max_pretoken_chars)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load what `Tokenizer.save` wrote (dispatching on kind) or a plain GPT-2 vocab.json + merges.txt directory."""
    d = Path(directory)
    if not d.is_dir():
        raise TokenizerFileError(f"tokenizer directory {d} does not exist")
    meta_path = d / META_FILE
    if not meta_path.exists():
        if (d / "vocab.json").exists() and (d / "merges.txt").exists():
            return load_bpe(d, None)
        raise TokenizerFileError(f"{d}: neither {META_FILE} nor a GPT-2 vocab.json + merges.txt pair")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise TokenizerFileError(f"{meta_path}: expected a JSON object")
    need = ("format_version", "kind", "special_tokens", "fingerprint")
    for key in need:
        if key not in meta:
            raise TokenizerFileError(f"{meta_path}: key {key!r} is missing")
    if meta["format_version"] != FORMAT_VERSION:
        raise TokenizerFileError(
            f"{meta_path}: format_version {meta['format_version']!r}; this tpipe reads version {FORMAT_VERSION}"
        )
    kind = meta["kind"]
    if kind in BPE_KINDS:
        for key in ("pattern", "max_pretoken_chars"):
            if key not in meta:
                raise TokenizerFileError(f"{meta_path}: key {key!r} is missing")
        return load_bpe(d, meta)
    if kind == "sentencepiece":
        from data.tokenizer.sp import load_sentencepiece

        return load_sentencepiece(d, meta)
    raise TokenizerFileError(f"{meta_path}: unknown kind {kind!r}; expected byte_bpe, char_bpe or sentencepiece")
