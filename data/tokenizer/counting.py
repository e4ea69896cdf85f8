"""Reading training inputs and counting pre-tokens, in-process or as Ray tasks summed in a tree.

An input is a Parquet file (the named string columns, optionally only the rows of one split) or a
plain text file (one text per line). Text files are cut into byte ranges at line boundaries so that
several tasks share one big file; each task reads its own range, so nothing large travels through
the object store except the counts.

    count_pretokens(["a.txt"]) on "low lower\\nlow\\n"  ->  {b'low': 2, b' lower': 1}

Counts are keyed by the pre-token's bytes. Input that is not valid UTF-8 is read with
surrogateescape, so an invalid byte stays that byte in the counts (byte-level BPE learns it like any
other) and the line is counted in `invalid_utf8_lines`, never a crash.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path

from data.exchange import Exchange, local_copy
from data.tokenizer.pretokenize import compiled, cut_long, special_splitter, text_to_bytes

# A text file larger than this is cut into several ranges (tasks) even when fewer workers are asked for.
CHUNK_BYTES = 32 << 20
# A task reads its range in blocks of about this size so that the list of pre-tokens stays small.
BLOCK_BYTES = 4 << 20


@dataclass
class CountStats:
    """What the counting saw; reported by training and saved in the tokenizer's metadata."""

    texts: int = 0
    bytes: int = 0
    invalid_utf8_lines: int = 0
    long_pretokens_cut: int = 0
    files: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0  # the largest peak resident memory of a process that counted
    cpu_seconds: float = 0.0  # CPU time spent counting, all tasks together

    def add(self, other: CountStats) -> CountStats:
        return CountStats(
            self.texts + other.texts,
            self.bytes + other.bytes,
            self.invalid_utf8_lines + other.invalid_utf8_lines,
            self.long_pretokens_cut + other.long_pretokens_cut,
            sorted(set(self.files) | set(other.files)),
            max(self.peak_rss_mb, other.peak_rss_mb),
            self.cpu_seconds + other.cpu_seconds,
        )


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class Chunk:
    """One unit of counting work: a byte range of a text file, or a whole Parquet file."""

    path: str  # as the driver names it (what the tokenizer's metadata records)
    kind: str  # "text" | "parquet"
    start: int = 0
    end: int = -1
    location: str = ""  # where a task opens it, when not at `path`: its URI on a remote artifact root


@dataclass(frozen=True)
class Reader:
    """How texts are pulled out of inputs."""

    text_columns: tuple[str, ...] = ("src", "tgt")
    split: str | None = "train"


def plan_chunks(inputs: list[str], n_tasks: int) -> list[Chunk]:
    """Cut the inputs into about `n_tasks` chunks (more for big files); refuses missing files."""
    if not inputs:
        raise ValueError("tokenizer training got no input files")
    sizes = {}
    for p in inputs:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"tokenizer input {p} does not exist or is not a file")
        sizes[p] = os.path.getsize(p)
    total_text = sum(s for p, s in sizes.items() if not _is_parquet(p)) or 1
    chunks: list[Chunk] = []
    for p in inputs:
        if _is_parquet(p):
            chunks.append(Chunk(p, "parquet"))
            continue
        size = sizes[p]
        want = max(1, -(-n_tasks * size // total_text), -(-size // CHUNK_BYTES))
        chunks.extend(_text_ranges(p, size, want))
    return chunks


def for_tasks(chunks: list[Chunk], exchange: Exchange) -> list[Chunk]:
    """The chunks as Ray tasks open them: an earlier step's file at its URI (data/exchange.py)."""
    return [replace(c, location=exchange.location(c.path)) if exchange.remote else c for c in chunks]


def _is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".pq"))


def _text_ranges(path: str, size: int, parts: int) -> list[Chunk]:
    """Byte ranges of `path` that start and end on line boundaries."""
    if parts <= 1 or size == 0:
        return [Chunk(path, "text", 0, size)]
    cuts = [0]
    with open(path, "rb") as fh:
        for k in range(1, parts):
            fh.seek(max(cuts[-1], size * k // parts))
            fh.readline()  # move to the start of the next line
            pos = fh.tell()
            if pos < size and pos > cuts[-1]:
                cuts.append(pos)
    cuts.append(size)
    return [Chunk(path, "text", a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def iter_texts(chunk: Chunk, reader: Reader, stats: CountStats):
    """Yield blocks (lists of texts) of one chunk; updates `stats` (texts, bytes, invalid UTF-8 lines)."""
    path = local_copy(chunk.location) if chunk.location else chunk.path  # a URI: this node's copy
    if chunk.kind == "parquet":
        for block in _parquet_blocks(path, reader):
            stats.texts += len(block)
            stats.bytes += sum(len(text_to_bytes(t)) for t in block)
            yield block
        return
    with open(path, "rb") as fh:
        fh.seek(chunk.start)
        left = chunk.end - chunk.start
        while left > 0:
            data = fh.read(min(BLOCK_BYTES, left))
            left -= len(data)
            if left > 0 and not data.endswith(b"\n"):
                rest = fh.readline()  # finish the line inside this chunk's range
                rest = rest[:left] if len(rest) > left else rest
                data += rest
                left -= len(rest)
            if not data:
                break
            stats.bytes += len(data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("utf-8", "surrogateescape")
                stats.invalid_utf8_lines += sum(1 for line in data.split(b"\n") if not _valid_utf8(line))
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            # "\r\n" files: the "\r" is line ending, not text.
            lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
            stats.texts += len(lines)
            yield lines


def _valid_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _parquet_blocks(path: str, reader: Reader):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [c for c in reader.text_columns if c not in names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)}); set text_columns")
    use_split = reader.split is not None and "split" in names
    columns = list(reader.text_columns) + (["split"] if use_split else [])
    for batch in pf.iter_batches(columns=columns, batch_size=65536):
        if use_split:
            import pyarrow.compute as pc

            batch = batch.filter(pc.equal(batch.column("split"), reader.split))
        for col in reader.text_columns:
            values = batch.column(col).to_pylist()
            yield [v for v in values if v is not None]


def count_chunk(
    chunk: Chunk, pattern: str, specials: tuple[str, ...], max_chars: int, reader: Reader
) -> tuple[dict[bytes, int], CountStats]:
    """Pre-token counts of one chunk, keyed by bytes. Runs in-process or as a Ray task."""
    cpu0 = time.process_time()
    stats = CountStats(files=[chunk.path])
    findall = compiled(pattern).findall
    splitter = special_splitter(specials)
    counts: Counter[str] = Counter()
    for texts in iter_texts(chunk, reader, stats):
        if splitter is not None and any(splitter.search(t) for t in texts):
            # Special tokens are never part of a word: count only the text between them.
            texts = [part for t in texts for k, part in enumerate(splitter.split(t)) if k % 2 == 0]
        counts.update(chain.from_iterable(map(findall, texts)))
    out: dict[bytes, int] = {}
    for piece, c in counts.items():
        if max_chars and len(piece) > max_chars:
            stats.long_pretokens_cut += c
            for part in cut_long(piece, max_chars):
                key = text_to_bytes(part)
                out[key] = out.get(key, 0) + c
        else:
            key = text_to_bytes(piece)
            out[key] = out.get(key, 0) + c
    stats.peak_rss_mb = peak_rss_mb()
    stats.cpu_seconds = time.process_time() - cpu0
    return out, stats


def sum_counts(a: tuple[dict[bytes, int], CountStats], b: tuple[dict[bytes, int], CountStats]):
    """One node of the reduction tree: {b'x': 1} + {b'x': 2, b'y': 1} -> {b'x': 3, b'y': 1}."""
    (ca, sa), (cb, sb) = a, b
    if len(ca) < len(cb):
        ca, cb = cb, ca
    ca = dict(ca)
    get = ca.get
    for k, v in cb.items():
        ca[k] = get(k, 0) + v
    return ca, sa.add(sb)


def count_pretokens(
    inputs: list[str],
    pattern: str,
    specials: tuple[str, ...],
    max_chars: int,
    reader: Reader,
    n_tasks: int,
    exchange: Exchange | None = None,
) -> tuple[dict[bytes, int], CountStats, int]:
    """Count pre-tokens over all inputs -> (counts, stats, number of tasks used).

    With Ray initialised, one task per chunk and a tree of pairwise sums; otherwise in this process.
    The result does not depend on how the work was cut. `exchange` places the tasks and hands them
    the URIs of inputs on a remote artifact root (data/exchange.py).
    """
    from data.progress import Progress

    chunks = plan_chunks([str(Path(p)) for p in inputs], n_tasks)
    progress = Progress("tokenizer: count", len(chunks), "chunks")
    import ray

    if ray.is_initialized():
        exchange = exchange or Exchange()
        count_task = exchange.task(ray, count_chunk)
        sum_task = exchange.task(ray, sum_counts)
        refs = [count_task.remote(c, pattern, specials, max_chars, reader) for c in for_tasks(chunks, exchange)]
        counting = list(refs)
        while len(refs) > 1:  # a tree: no single task receives every shard's counts
            nxt = [sum_task.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
            if len(refs) % 2:
                nxt.append(refs[-1])
            refs = nxt
        while counting:  # the sums run meanwhile; this only watches the counting tasks finish
            ready, counting = ray.wait(counting, num_returns=1)
            progress.update(len(ready))
        counts, stats = ray.get(refs[0])
        progress.close()
        return counts, stats, len(chunks)
    total: tuple[dict[bytes, int], CountStats] = ({}, CountStats())
    for c in chunks:
        total = sum_counts(total, count_chunk(c, pattern, specials, max_chars, reader))
        progress.update()
    progress.close()
    return total[0], total[1], len(chunks)
