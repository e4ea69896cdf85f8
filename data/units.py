"""The plan of the prepare step's Ray work: the input files (data.paths, valid_paths, test_paths) as
work units, in input order. A unit is a file, a byte range of an uncompressed line file (data.chunk_mb),
or a Moses pair (train.en + train.de); the format of each file is told from its suffix after .gz/.zst
(`DataConfig.format` overrides). Reading a unit is data/sources.py.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from data.config import DataConfig
from data.io import DataError, compression_of, expand_paths, is_remote, local_path, strip_compression

LINE_FORMATS = ("tsv", "jsonl", "text")
_SUFFIX_FORMATS = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text",
                   ".po": "po", ".mo": "mo"}

@dataclass(frozen=True)
class Unit:
    """A piece of the input that one Ray task reads: a file, a byte range of one, or a Moses pair."""

    index: int  # position in the input order; ties shard order and first-of-duplicates to it
    format: str  # builtin | moses | tsv | jsonl | parquet | text | po | mo
    path: str = ""  # the file (the source side for moses)
    path2: str = ""  # the target side for moses
    start: int = 0  # byte range [start, end) of a line file; end -1: to the end (builtin: the seed)
    end: int = -1  # (builtin: the number of pairs)
    first_line: int = 1  # line number of the byte at `start`
    split: str = ""  # "" (hash-assigned) or a forced split for valid_paths / test_paths

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> str:
        return f"{self.path} + {self.path2}" if self.path2 else self.path or "builtin"


def detect_format(path: str, cfg: DataConfig) -> str:
    """'corpus.tsv.gz' -> 'tsv'; 'train.de' with tgt_lang de -> 'moses'."""
    if cfg.format != "auto":
        return cfg.format
    name = strip_compression(path)
    ext = os.path.splitext(name)[1].lower()
    if ext in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[ext]
    if ext in (f".{cfg.src_lang}", f".{cfg.tgt_lang}"):
        return "moses"
    raise DataError(
        f"cannot tell the format of {path} from its suffix; set data.format to one of "
        "tsv, jsonl, parquet, moses, text, po, mo"
    )


def _moses_partner(prefix: str, lang: str, comp_suffix: str) -> str | None:
    for suf in (comp_suffix, "", ".gz", ".zst", ".zstd"):
        cand = f"{prefix}.{lang}{suf}"
        if is_remote(cand) or os.path.isfile(local_path(cand)):
            return cand
    return None


def moses_pairs(patterns: list[str], cfg: DataConfig) -> list[tuple[str, str]]:
    """['data/train'] or ['data/train.en'] or ['data/*.en'] -> [('data/train.en', 'data/train.zh')]."""
    files: list[str] = []
    for pat in patterns:
        try:
            files += expand_paths([pat])
        except DataError:
            cand = _moses_partner(pat, cfg.src_lang, "")
            if cand is None:
                raise DataError(
                    f"moses path {pat!r} matches no file, and neither does {pat}.{cfg.src_lang}[.gz|.zst]"
                ) from None
            files.append(cand)
    pairs: list[tuple[str, str]] = []
    for f in files:
        name = strip_compression(f)
        comp = f[len(name) :]
        for own, other, flip in ((cfg.src_lang, cfg.tgt_lang, False), (cfg.tgt_lang, cfg.src_lang, True)):
            if name.endswith(f".{own}"):
                prefix = name[: -len(own) - 1]
                partner = _moses_partner(prefix, other, comp)
                if partner is None:
                    raise DataError(f"moses file {f} has no partner {prefix}.{other}[.gz|.zst]")
                pair = (partner, f) if flip else (f, partner)
                if pair not in pairs:
                    pairs.append(pair)
                break
        else:
            raise DataError(f"moses file {f} ends in neither .{cfg.src_lang} nor .{cfg.tgt_lang}")
    return pairs


def line_chunks(path: str, chunk_bytes: int) -> list[tuple[int, int, int]]:
    """Split an uncompressed local file at line starts: [(start, end, first_line), ...].

    Reads the file once at memory speed to count newlines, so that every chunk knows its first line
    number and error messages name the true line.
    """
    size = os.path.getsize(path)
    if size <= chunk_bytes:
        return [(0, size, 1)]
    chunks, start, line = [], 0, 1
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + chunk_bytes, size))
            f.readline()  # move to the start of the next line
            end = min(f.tell(), size)
            f.seek(start)
            n_lines = 0
            remaining = end - start
            while remaining > 0:
                block = f.read(min(remaining, 1 << 24))
                n_lines += block.count(b"\n")
                remaining -= len(block)
            chunks.append((start, end, line))
            line += n_lines
            start = end
    return chunks


def plan_units(cfg: DataConfig, seed: int) -> list[Unit]:
    """The work units of the whole input, in input order."""
    if cfg.source == "builtin":
        return [Unit(0, "builtin", start=seed, end=cfg.builtin_size)]
    units: list[Unit] = []
    chunk_bytes = cfg.chunk_mb << 20
    files_of: dict[str, list[str]] = {}
    for patterns, split in ((cfg.paths, ""), (cfg.valid_paths, "valid"), (cfg.test_paths, "test")):
        if not patterns:
            continue
        key = {"": "data.paths", "valid": "data.valid_paths", "test": "data.test_paths"}[split]
        fmt = cfg.format if cfg.format != "auto" else None
        if fmt == "moses" or (fmt is None and all_moses(patterns, cfg)):
            for a, b in moses_pairs(patterns, cfg):
                units.append(Unit(len(units), "moses", a, b, split=split))
                files_of.setdefault(key, []).extend((a, b))
            continue
        files_of[key] = expand_paths(patterns)
        for path in files_of[key]:
            f = detect_format(path, cfg)
            if f == "moses":
                raise DataError(f"{path} looks like a Moses side file; give data.format=moses for the whole list")
            if f in LINE_FORMATS and not is_remote(path) and compression_of(path) is None:
                for start, end, first in line_chunks(local_path(path), chunk_bytes):
                    units.append(Unit(len(units), f, path, start=start, end=end, first_line=first, split=split))
            else:
                units.append(Unit(len(units), f, path, split=split))
    check_overlap(files_of)
    return units


def check_overlap(files_of: dict[str, list[str]]) -> None:
    """A file given as training data and as held-out data would silently empty the held-out split:
    each of its pairs is a duplicate of a training pair, and dedup keeps the first."""
    keys = list(files_of)
    real = {k: {(p if is_remote(p) else os.path.realpath(local_path(p))): p for p in v} for k, v in files_of.items()}
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            for q, p in real[b].items():
                if q in real[a]:
                    raise DataError(
                        f"{a} and {b} both name {p}; a file is training data or held-out data, not both "
                        "(drop it from one of the two keys)"
                    )


def all_moses(patterns: list[str], cfg: DataConfig) -> bool:
    """True when every path is a Moses side file; a pattern matching no file may be a Moses prefix."""
    try:
        files = expand_paths(patterns)
    except DataError:
        return os.path.splitext(strip_compression(patterns[0]))[1].lower() not in _SUFFIX_FORMATS
    return all(detect_format(p, cfg) == "moses" for p in files)
