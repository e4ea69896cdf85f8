"""Checks of the input files that cost milliseconds, made before Ray starts (`tpipe run` calls
`check_inputs` first): a missing path, a directory, an empty or binary file, a Parquet file that is
not one or has the wrong columns, the first lines of a line file in the wrong shape, files given both
as training and as validation data. Each failure is one DataError line naming the key and the file.

Only the head of each file is read (HEAD_BYTES, decompressed), and a Parquet file's footer, so the
check stays cheap on any corpus size; what only a full read can find (a broken line deep in a file,
a truncated .gz) is reported by the Ray task that reads it, with the file and line (data/sources.py).
Remote paths (s3://, gs://) are left to the readers.
"""

from __future__ import annotations

import glob
import os

from data.config import DataConfig
from data.io import DataError, check_filesystems, compression_of, is_remote, local_path, open_binary
from data.sources import _read_catalog, check_parquet_schema, read_batches
from data.units import LINE_FORMATS, Unit, all_moses, check_overlap, detect_format, moses_pairs

HEAD_BYTES = 1 << 16  # how much of each file is read: enough for a few hundred lines
MOSES_COUNT_BYTES = 64 << 20  # uncompressed Moses sides up to this size have their lines counted here
_KEYS = (("data.paths", "paths"), ("data.valid_paths", "valid_paths"), ("data.test_paths", "test_paths"))


def check_inputs(cfg: DataConfig) -> None:
    """Raise DataError (one line) for the first input problem found; return silently when all is well."""
    if cfg.source != "files":
        return
    files_of: dict[str, list[str]] = {}
    for key, attr in _KEYS:
        patterns = getattr(cfg, attr)
        check_filesystems(patterns, key)  # an s3:// corpus without s3fs: named here, not a minute into a Ray task
        if patterns:
            files_of[key] = _files(patterns, key, cfg)
    check_overlap(files_of)
    for key, files in files_of.items():
        for path in files:
            if not is_remote(path):
                check_file(path, key, cfg)


def _files(patterns: list[str], key: str, cfg: DataConfig) -> list[str]:
    """The local files `patterns` name (Moses sides included), each problem named by `key`."""
    files: list[str] = []
    for pat in patterns:
        if is_remote(pat):
            files.append(pat)
            continue
        p = local_path(pat)
        if not glob.has_magic(p) and os.path.isdir(p):
            raise DataError(f"{key}: {pat} is a directory; give files or a glob such as {os.path.join(pat, '*.tsv')}")
    local = [p for p in patterns if not is_remote(p)]
    if not local:
        return files
    moses = cfg.format == "moses" or (cfg.format == "auto" and _looks_moses(local, cfg))
    try:
        if moses:
            for a, b in moses_pairs(local, cfg):
                files += [a, b]
        else:
            from data.io import expand_paths

            files += expand_paths(local)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    return files


def _looks_moses(patterns: list[str], cfg: DataConfig) -> bool:
    try:
        return all_moses(patterns, cfg)
    except DataError:
        return False  # an undetectable suffix: reported per file below


def check_file(path: str, key: str, cfg: DataConfig) -> None:
    """The cheap checks of one local file (see the module docstring)."""
    if os.path.getsize(path) == 0:
        raise DataError(f"{key}: {path} is empty")
    try:
        fmt = detect_format(path, cfg)
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    with open(path, "rb") as f:
        magic = f.read(4)
    if compression_of(path) is None and magic[:2] == b"\x1f\x8b":
        raise DataError(f"{key}: {path} is gzip-compressed but not named .gz; rename it to {path}.gz")
    if fmt == "parquet":
        _check_parquet(path, key, cfg)
        return
    if fmt in ("po", "mo"):
        _check_catalog(path, fmt, cfg)
        return
    head = _head(path)
    _check_text(head, path, key)
    if fmt in LINE_FORMATS and b"\n" in head:
        # The first whole lines through the real reader: a wrong TSV column count, broken JSON or a
        # missing JSON key fail here, with the reader's own message, before Ray starts.
        end = head.rindex(b"\n") + 1
        for _ in read_batches(Unit(0, fmt, path, start=0, end=end), cfg):
            pass
    if fmt == "moses" and compression_of(path) is None and path.endswith(f".{cfg.src_lang}"):
        _check_moses_lengths(path, cfg)


def _head(path: str) -> bytes:
    try:
        with open_binary(path) as f:
            return f.read(HEAD_BYTES)
    except Exception as e:  # EOFError, OSError, zlib.error, zstandard's ZstdError
        hint = " (truncated?)" if isinstance(e, EOFError) else ""
        raise DataError(f"{path}: cannot be read as {compression_of(path) or 'a file'}{hint}: {e}") from None


def _check_text(head: bytes, path: str, key: str) -> None:
    """Refuse what is not text: UTF-16 and binary files (many control or invalid bytes)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{key}: {path} is UTF-16 text; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)")
    # A few control bytes are a record's problem (counted as control_chars); many are a binary file.
    text = head.decode("utf-8", "replace")
    bad = sum(1 for c in text if c == "\ufffd" or (c < " " and c not in "\t\n\r"))
    if bad > max(8, len(text) // 20):
        raise DataError(
            f"{key}: {path} looks binary, not UTF-8 text ({bad} control or invalid bytes in its first {len(head)}); "
            "is it the right file? (text in another encoding: convert it with iconv)"
        )


def _check_parquet(path: str, key: str, cfg: DataConfig) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if compression_of(path) is None:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = f.read(4)
            f.seek(max(size - 4, 0))
            end = f.read(4)
        if start != b"PAR1" or end != b"PAR1":
            raise DataError(f"{key}: {path} is not a Parquet file (no PAR1 magic); check its suffix or data.format")
    try:
        with open_binary(path) as f:
            schema = pq.ParquetFile(f).schema_arrow
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise DataError(f"{key}: {path} is not a readable Parquet file ({e})") from None
    check_parquet_schema(schema, path, cfg)


def _check_catalog(path: str, fmt: str, cfg: DataConfig) -> None:
    """Catalogs are small: parse the whole of one that is under a few MB."""
    if os.path.getsize(path) > (8 << 20):
        return
    for _ in _read_catalog(path, fmt):
        pass


def _check_moses_lengths(src_path: str, cfg: DataConfig) -> None:
    """Aligned sides of different lengths, found by counting newlines (memory speed) when both are small."""
    prefix = src_path[: -len(cfg.src_lang) - 1]
    tgt_path = f"{prefix}.{cfg.tgt_lang}"
    if not os.path.isfile(tgt_path):
        return
    if max(os.path.getsize(src_path), os.path.getsize(tgt_path)) > MOSES_COUNT_BYTES:
        return
    n = []
    for p in (src_path, tgt_path):
        with open(p, "rb") as f:
            data = f.read()
        n.append(data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0))
    if n[0] != n[1]:
        raise DataError(f"aligned files differ in length: {src_path} has {n[0]} lines, {tgt_path} has {n[1]} lines")
