"""Where a pipeline's shards are and what is in them: the prepared (raw text) shards and the token shards.

    raw_shards(prepare_dir)             -> the prepare step's Parquet files (src, tgt, split, ...)
    split_texts(shards, "test")         -> the (src, tgt) pairs of one split, in shard order
    token_shards(encode_dir, "train")   -> the encode step's token-id Parquet files of one split
"""

from __future__ import annotations

import json
from pathlib import Path

from data.io import MANIFEST


def raw_shards(prepare_dir: Path) -> list[str]:
    """The prepared shards listed in `prepare_dir`'s manifest, in its order."""
    manifest = json.loads((prepare_dir / MANIFEST).read_text(encoding="utf-8"))
    return [str(prepare_dir / s["file"]) for s in manifest["shards"]]


def token_shards(encode_dir: Path, split: str) -> list[str]:
    """The token shards of `split` listed in `encode_dir`'s manifest (none for a split it lacks)."""
    manifest = json.loads((encode_dir / MANIFEST).read_text(encoding="utf-8"))
    return [str(encode_dir / s["file"]) for s in manifest["splits"].get(split, [])]


def split_texts(shards: list[str], split: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(src, tgt) pairs of one split from raw Parquet shards, in shard order; the first `limit` only if given."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: list[tuple[str, str]] = []
    for path in shards:
        t = pq.read_table(path, columns=["src", "tgt", "split"])
        t = t.filter(pc.equal(t["split"], split))
        out += list(zip(t["src"].to_pylist(), t["tgt"].to_pylist()))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out
