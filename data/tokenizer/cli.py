"""`tpipe tokenizer train|encode|decode|explain`: the tokenizer from the command line.

    tpipe tokenizer train --input corpus.txt --vocab-size 8000 --out tok/ [--kind byte_bpe] [--workers 2]
    tpipe tokenizer encode --tokenizer tok/ [--input FILE]  < lines      -> one line of ids per line
    tpipe tokenizer decode --tokenizer tok/ [--input FILE]  < id lines   -> one line of text per line
    tpipe tokenizer explain --tokenizer tok/ "some text"                 -> bytes and merges, rank by rank

`register(subparsers)` adds the `tokenizer` parser; each sub-command's handler returns an exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import BinaryIO


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `tokenizer` with its sub-commands to a `tpipe` parser's subparsers."""
    p = subparsers.add_parser("tokenizer", help="train, apply and inspect tokenizers")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="{train,encode,decode,explain}")
    sub.required = True

    t = sub.add_parser("train", help="train a tokenizer on text or Parquet files")
    t.add_argument("--input", nargs="+", required=True, metavar="PATH", help="text files (one text per line) or Parquet")
    t.add_argument("--vocab-size", type=int, required=True, metavar="N", help="special tokens + base symbols + merges")
    t.add_argument("--out", required=True, metavar="DIR", help="directory to write the tokenizer files to")
    t.add_argument("--kind", default="byte_bpe", choices=["byte_bpe", "char_bpe", "sentencepiece"])
    t.add_argument("--workers", type=int, default=1, metavar="N", help="Ray tasks counting pre-tokens (1: no Ray)")
    t.add_argument("--min-frequency", type=int, default=2, metavar="N", help="pairs seen fewer times are not merged")
    t.add_argument("--pattern", default="gpt2", choices=["gpt2", "cl100k"], help="pre-tokenization regex")
    t.add_argument(
        "--special-tokens", nargs="+", default=None, metavar="TOK",
        help="padding, begin, end, unknown, then user tokens (default: <pad> <s> </s> <unk>)",
    )
    t.add_argument("--text-columns", nargs="+", default=["src", "tgt"], metavar="COL", help="Parquet string columns")
    t.add_argument("--split", default="train", help="Parquet: keep rows of this split ('' for all rows)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="text lines -> lines of space-separated ids")
    e.add_argument("--tokenizer", required=True, metavar="DIR")
    e.add_argument("--input", default=None, metavar="FILE", help="read this file instead of stdin")
    e.add_argument("--allow-special", action="store_true", help="recognise special tokens written in the text")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="lines of space-separated ids -> text lines")
    d.add_argument("--tokenizer", required=True, metavar="DIR")
    d.add_argument("--input", default=None, metavar="FILE", help="read this file instead of stdin")
    d.add_argument("--keep-special", action="store_true", help="write special tokens instead of dropping them")
    d.set_defaults(func=cmd_decode)

    x = sub.add_parser("explain", help="show each pre-token's bytes and every merge applied, with its rank")
    x.add_argument("--tokenizer", required=True, metavar="DIR")
    x.add_argument("text", help="the text to explain")
    x.set_defaults(func=cmd_explain)
    return p


def _fail(msg: str) -> int:
    print(f"tpipe tokenizer: error: {msg}", file=sys.stderr)
    return 2


def cmd_train(args: argparse.Namespace) -> int:
    from data.tokenizer import TokenizerConfig, train_tokenizer
    from data.tokenizer.errors import TokenizerFileError, TrainingError

    kwargs = dict(
        kind=args.kind,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        pattern=args.pattern,
        num_workers=max(1, args.workers),
    )
    if args.special_tokens:
        kwargs["special_tokens"] = list(args.special_tokens)
    try:
        cfg = TokenizerConfig(**kwargs)
    except ValueError as e:
        return _fail(str(e))
    started_ray = False
    if args.workers > 1:
        import ray

        if not ray.is_initialized():
            ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
            started_ray = True
    try:
        tok = train_tokenizer(cfg, args.input, text_columns=tuple(args.text_columns), split=args.split or None)
        out = tok.save(args.out)
    except (TrainingError, TokenizerFileError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    stats = getattr(tok, "train_stats", {})
    print(
        f"trained {tok.kind} tokenizer: vocab_size {tok.vocab_size}, fingerprint {tok.fingerprint}, "
        f"{stats.get('merges_found', '?')} merges, {stats.get('texts', '?')} texts -> {out}"
    )
    if stats.get("stopped_early"):
        print(
            f"warning: stopped early with {stats['merges_found']} merges: the corpus is too small for "
            f"vocab_size {cfg.vocab_size} at min_frequency {cfg.min_frequency}",
            file=sys.stderr,
        )
    if stats.get("invalid_utf8_lines"):
        print(f"warning: {stats['invalid_utf8_lines']} input lines were not valid UTF-8 (counted as raw bytes)", file=sys.stderr)
    return 0


def _open_lines(path: str | None) -> BinaryIO:
    if path is None:
        return sys.stdin.buffer
    if not Path(path).is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    return open(path, "rb")


def _load(directory: str):
    from data.tokenizer import load_tokenizer

    return load_tokenizer(directory)


def cmd_encode(args: argparse.Namespace) -> int:
    from data.tokenizer.errors import TokenizerFileError

    try:
        tok = _load(args.tokenizer)
        src = _open_lines(args.input)
    except (TokenizerFileError, FileNotFoundError) as e:
        return _fail(str(e))
    allowed = "all" if args.allow_special else ()
    out = sys.stdout
    for raw in src:
        line = raw.rstrip(b"\n")
        if line.endswith(b"\r"):
            line = line[:-1]
        # Invalid UTF-8 survives as the same bytes (byte-level BPE encodes any bytes).
        text = line.decode("utf-8", "surrogateescape")
        out.write(" ".join(map(str, tok.encode(text, allowed_special=allowed))) + "\n")
    out.flush()
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from data.tokenizer.errors import TokenizerFileError

    try:
        tok = _load(args.tokenizer)
        src = _open_lines(args.input)
    except (TokenizerFileError, FileNotFoundError) as e:
        return _fail(str(e))
    where = args.input or "stdin"
    out = sys.stdout.buffer
    for n, raw in enumerate(src, start=1):
        fields = raw.split()
        try:
            ids = [int(f) for f in fields]
        except ValueError:
            return _fail(f"{where} line {n}: expected space-separated integer ids, got {raw[:60]!r}")
        try:
            data = tok.decode_bytes(ids, skip_special=not args.keep_special)
        except ValueError as e:
            return _fail(f"{where} line {n}: {e}")
        out.write(data + b"\n")
    out.flush()
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from data.tokenizer.errors import TokenizerFileError

    try:
        tok = _load(args.tokenizer)
    except TokenizerFileError as e:
        return _fail(str(e))
    print(tok.explain(args.text))
    return 0
