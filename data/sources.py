"""Corpus readers: every input format as a stream of raw records, one work unit (data/units.py) at a time.

A record is `(line, src, tgt, reason)`: `line` is the 1-based line (row, or catalog entry) in its
file, `src`/`tgt` are `bytes` still to be decoded (line formats) or `str`, and `reason` is a
reject the reader already knows (a fuzzy catalog entry), else None. Every record a reader yields
is an input record: it ends up kept or counted under a reject reason.

Formats (`DataConfig.format`, or `auto` by suffix after .gz/.zst):
  moses    train.en + train.de, one sentence per line; paths name the prefix or either file
  tsv      tab-separated; `tsv_columns` picks source and target (default the last two)
  jsonl    one object per line with `src_key`/`tgt_key` (default the language codes)
  parquet  string columns `src_key`/`tgt_key`
  text     monolingual, one sentence per line; each line becomes the pair (line, line)
  po, mo   gettext catalogs: msgid -> msgstr, one pair per plural form (see data/gettext.py)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from data.config import DataConfig
from data.gettext import CatalogError, entry_pairs, parse_mo, parse_po
from data.io import DataError, compression_of, open_binary
from data.units import LINE_FORMATS, Unit

BATCH_ROWS = 65536  # records a reader hands over at once; stage 1 cleans them together
_BLOCK_BYTES = 1 << 22

# (line numbers, sources, targets, reasons already known or None)
Batch = tuple[np.ndarray, list, list, "list[str | None] | None"]


def read_batches(unit: Unit, cfg: DataConfig) -> Iterator[Batch]:
    """The records of one unit in file order, in batches of up to about BATCH_ROWS.

    A file that cannot be read (a truncated .gz, a text file named .parquet, no permission) is a
    DataError naming the file, not the codec's own exception.
    """
    try:
        yield from _read_batches(unit, cfg)
    except DataError:
        raise
    except Exception as e:
        if not _is_read_error(e):
            raise
        what = f"{unit.format}" + (f", {compression_of(unit.path)}-compressed" if compression_of(unit.path) else "")
        hint = " (truncated?)" if isinstance(e, EOFError) else ""
        raise DataError(f"{unit.where()}: cannot be read as {what}{hint}: {e}") from None


def _is_read_error(e: Exception) -> bool:
    """The exceptions codecs and Arrow raise for a corrupt or unreadable file."""
    import zlib

    import pyarrow as pa

    if isinstance(e, (EOFError, OSError, zlib.error, pa.ArrowInvalid)):
        return True
    return type(e).__name__ == "ZstdError"  # zstandard's, without importing it here


def _read_batches(unit: Unit, cfg: DataConfig) -> Iterator[Batch]:
    if unit.format == "builtin":
        from data.builtin import generate_pairs

        pairs = generate_pairs(unit.end, unit.start)
        first = 1
        while chunk := list(itertools.islice(pairs, BATCH_ROWS)):
            srcs, tgts = zip(*chunk)
            yield np.arange(first, first + len(chunk)), list(srcs), list(tgts), None
            first += len(chunk)
    elif unit.format == "moses":
        yield from _read_moses(unit.path, unit.path2)
    elif unit.format in LINE_FORMATS:
        yield from _read_lines(unit, cfg)
    elif unit.format == "parquet":
        yield from _read_parquet(unit.path, cfg)
    elif unit.format in ("po", "mo"):
        yield from _read_catalog(unit.path, unit.format)
    else:
        raise DataError(f"{unit.path}: unknown format {unit.format!r}")


def _line_blocks(f, start: int, end: int) -> Iterator[list[bytes]]:
    """Lists of lines (without '\n' and a trailing '\r') of bytes [start, end) (-1: to EOF).

    Reads 4 MB blocks and splits them in C; `start` and `end` are line starts (see line_chunks).
    """
    if start:
        f.seek(start)
    remaining = None if end < 0 else end - start
    tail = b""
    while True:
        want = _BLOCK_BYTES if remaining is None else min(_BLOCK_BYTES, remaining)
        block = f.read(want) if want > 0 else b""
        if remaining is not None:
            remaining -= len(block)
        if not block:
            if tail:
                yield [tail[:-1] if tail.endswith(b"\r") else tail]  # a last line without newline
            return
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        if b"\r" in block:
            lines = [x[:-1] if x.endswith(b"\r") else x for x in lines]
        if lines:
            yield lines


def _read_lines(unit: Unit, cfg: DataConfig) -> Iterator[Batch]:
    si, ti = cfg.tsv_columns
    n_fields = None
    first = unit.first_line
    with open_binary(unit.path) as f:
        for lines in _line_blocks(f, unit.start, unit.end):
            numbers = np.arange(first, first + len(lines))
            if first == 1 and lines[0].startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows editors)
                lines[0] = lines[0][3:]
            if unit.format == "text":
                yield numbers, lines, lines, None
            elif unit.format == "tsv":
                fields = [x.split(b"\t") for x in lines]
                counts = np.fromiter(map(len, fields), dtype=np.int64, count=len(fields))
                blank = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)) == 0
                if n_fields is None:
                    n_fields = int(counts[~blank][0]) if (~blank).any() else None
                    need = max(si, ti) + 1 if min(si, ti) >= 0 else max(-min(si, ti), max(si, ti) + 1)
                    if n_fields is not None and n_fields < need:
                        k = int(np.flatnonzero(~blank)[0])
                        raise DataError(
                            f"{unit.path} line {first + k}: {n_fields} tab-separated fields; "
                            f"data.tsv_columns={cfg.tsv_columns} needs at least {need}"
                        )
                if n_fields is not None:
                    wrong = np.flatnonzero((counts != n_fields) & ~blank)
                    if len(wrong):
                        k = int(wrong[0])
                        raise DataError(
                            f"{unit.path} line {first + k}: {counts[k]} tab-separated fields, but line "
                            f"{unit.first_line} has {n_fields} (a stray tab in a sentence?)"
                        )
                # a blank line is a record with two empty sides
                srcs = [x[si] if len(x) == n_fields else b"" for x in fields]
                tgts = [x[ti] if len(x) == n_fields else b"" for x in fields]
                known = None
                if first == 1 and srcs and is_tsv_header(srcs[0], tgts[0], cfg):
                    known = ["header"] + [None] * (len(srcs) - 1)  # counted, never trained on
                yield numbers, srcs, tgts, known
            else:  # jsonl
                pairs = [_json_record(x, unit.path, int(n), cfg) for x, n in zip(lines, numbers)]
                srcs, tgts = (list(c) for c in zip(*pairs))
                yield numbers, srcs, tgts, None
            first += len(lines)


HEADER_WORDS = frozenset(
    "src tgt source target sources targets src_text tgt_text source_text target_text input output "
    "original translation sentence text".split()
)


def is_tsv_header(src: bytes, tgt: bytes, cfg: DataConfig) -> bool:
    """Is line 1 of a TSV file a header? data.tsv_header=first: always; none: never; auto: when both
    chosen fields are column names, i.e. header words or the language codes ('en<TAB>de',
    'source<TAB>target'), and differ.

        >>> is_tsv_header(b"en", b"de", DataConfig(src_lang="en", tgt_lang="de"))
        True
    """
    if cfg.tsv_header != "auto":
        return cfg.tsv_header == "first"
    names = HEADER_WORDS | {cfg.src_lang.lower(), cfg.tgt_lang.lower(), cfg.src_field.lower(), cfg.tgt_field.lower()}
    a = src.strip().decode("utf-8", "replace").lower()
    b = tgt.strip().decode("utf-8", "replace").lower()
    return a != b and a in names and b in names


def read_split_values(unit: Unit, cfg: DataConfig) -> Iterator[list[str]]:
    """The `data.split_by` value of every record of a unit, in the batches `read_batches` yields.

    A second, narrow pass over the unit (one field), so that the readers keep their shape.
    """
    by = cfg.split_by
    if unit.format == "tsv":
        try:
            col = int(by)
        except ValueError:
            raise DataError(f"data.split_by={by!r}: a TSV file ({unit.path}) needs a field index such as 0") from None
        with open_binary(unit.path) as f:
            for lines in _line_blocks(f, unit.start, unit.end):
                out = []
                for x in lines:
                    fields = x.split(b"\t")
                    out.append(fields[col].decode("utf-8", "replace") if -len(fields) <= col < len(fields) else "")
                yield out
    elif unit.format == "jsonl":
        with open_binary(unit.path) as f:
            for lines in _line_blocks(f, unit.start, unit.end):
                out = []
                for x in lines:
                    try:
                        v: Any = json.loads(x) if x.strip() else {}
                        for part in by.split("."):
                            v = v.get(part, "") if isinstance(v, dict) else ""
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        v = ""  # the record itself is refused or rejected by the main reader
                    out.append("" if v is None else str(v))
                yield out
    elif unit.format == "parquet":
        import pyarrow.parquet as pq

        with open_binary(unit.path) as f:
            pf = pq.ParquetFile(f)
            if by not in pf.schema_arrow.names:
                raise DataError(f"{unit.path}: no column {by!r} (data.split_by); columns are {pf.schema_arrow.names}")
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[by]):
                yield ["" if v is None else str(v) for v in batch.column(0).to_pylist()]
    else:
        raise DataError(f"data.split_by works for TSV, JSONL and Parquet files; {unit.where()} is {unit.format}")


def _json_record(raw: bytes, path: str, lineno: int, cfg: DataConfig) -> tuple[bytes | str, bytes | str]:
    if not raw.strip():
        return b"", b""  # a blank line is a record with two empty sides
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw, b""  # invalid UTF-8 is a reject, checked before emptiness
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
    out = []
    for key in (cfg.src_field, cfg.tgt_field):
        v: Any = obj
        for part in key.split("."):  # 'translation.en' reaches {"translation": {"en": ...}} (HF datasets)
            if not isinstance(v, dict) or part not in v:
                keys = sorted(v)[:10] if isinstance(v, dict) else type(v).__name__
                raise DataError(
                    f"{path} line {lineno}: no key {key!r} (data.src_key/tgt_key); keys are {keys}"
                )
            v = v[part]
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise DataError(f"{path} line {lineno}: {key!r} is {type(v).__name__}, expected a string")
        out.append(v)
    return out[0], out[1]


def _chomp_lines(raw: list[bytes]) -> list[bytes]:
    """Lines as a file iterator gives them -> without '\n' and a trailing '\r'."""
    out = [x[:-1] if x.endswith(b"\n") else x for x in raw]
    return [x[:-1] if x.endswith(b"\r") else x for x in out] if any(x.endswith(b"\r") for x in out) else out


def _read_moses(src_path: str, tgt_path: str) -> Iterator[Batch]:
    with open_binary(src_path) as fs, open_binary(tgt_path) as ft:
        first = 1
        while True:
            s = list(itertools.islice(fs, BATCH_ROWS))
            t = list(itertools.islice(ft, BATCH_ROWS))
            if len(s) != len(t):
                n_s = first - 1 + len(s) + sum(1 for _ in fs)
                n_t = first - 1 + len(t) + sum(1 for _ in ft)
                raise DataError(
                    f"aligned files differ in length: {src_path} has {n_s} lines, {tgt_path} has {n_t} lines"
                )
            if not s:
                return
            yield np.arange(first, first + len(s)), _chomp_lines(s), _chomp_lines(t), None
            first += len(s)


def _read_parquet(path: str, cfg: DataConfig) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    with open_binary(path) as f:
        pf = pq.ParquetFile(f)
        check_parquet_schema(pf.schema_arrow, path, cfg)
        first = 1
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[cfg.src_field, cfg.tgt_field]):
            srcs = ["" if v is None else v for v in batch.column(0).to_pylist()]
            tgts = ["" if v is None else v for v in batch.column(1).to_pylist()]
            yield np.arange(first, first + len(srcs)), srcs, tgts, None
            first += len(srcs)


def check_parquet_schema(schema, path: str, cfg: DataConfig) -> None:
    """The source and target columns exist and hold strings: an integer column is refused, as JSONL
    refuses a number, rather than silently turned into digits."""
    import pyarrow as pa

    names = schema.names
    for key in (cfg.src_field, cfg.tgt_field):
        if key not in names:
            raise DataError(f"{path}: no column {key!r} (data.src_key/tgt_key); columns are {names}")
        t = schema.field(key).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
                or getattr(pa.types, "is_string_view", lambda _: False)(t)):
            raise DataError(f"{path}: column {key!r} is {t}, expected strings (data.src_key/tgt_key)")


def _read_catalog(path: str, fmt: str) -> Iterator[Batch]:
    with open_binary(path) as f:
        data = f.read()
    try:
        entries = list(parse_po(data, path) if fmt == "po" else parse_mo(data, path))
    except CatalogError as e:
        raise DataError(str(e)) from None
    lines, srcs, tgts, known = [], [], [], []
    for e in entries:
        reason = "invalid_utf8" if e.invalid_encoding else "fuzzy" if e.fuzzy else None
        for src, tgt in entry_pairs(e):
            lines.append(e.line)
            srcs.append(src)
            tgts.append(tgt)
            known.append(reason)
    if lines:
        yield np.array(lines, dtype=np.int64), srcs, tgts, known
