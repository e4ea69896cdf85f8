"""Where the data steps' shards are and what they hold: the splits, the two Parquet schemas, the file lists.

    raw shards    prepare_dir/shard-0000i.parquet             src, tgt, split (RAW_SCHEMA)
    token shards  encode_dir/{train,valid,test}/part-0000i.parquet   src_ids, tgt_ids, src_len, tgt_len

    raw_shards(prepare_dir)             -> the prepare step's files
    split_texts(shards, "test")         -> the (src, tgt) pairs of one split, in shard order
    token_files(encode_dir, "train")    -> the encode step's files of one split

Each directory's `_manifest.json` lists its files; readers go through it, never through a glob, so a
half-written step (no manifest yet) is never read.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from data.io import MANIFEST, read_json, sha256_file

FORMAT_VERSION = 1  # bump when the bytes the data steps write change, so old outputs are not reused
SPLITS = ("train", "valid", "test")
RAW_SCHEMA = pa.schema([("src", pa.string()), ("tgt", pa.string()), ("split", pa.string())])
TOKEN_SCHEMA = pa.schema(
    [
        ("src_ids", pa.list_(pa.int32())),
        ("tgt_ids", pa.list_(pa.int32())),
        ("src_len", pa.int32()),
        ("tgt_len", pa.int32()),
    ]
)


def raw_shards(prepare_dir: Path) -> list[str]:
    """The prepared shards listed in `prepare_dir`'s manifest, in its order."""
    manifest = read_json(os.path.join(prepare_dir, MANIFEST))
    return [str(Path(prepare_dir) / s["file"]) for s in manifest["shards"]]


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


def token_files(token_dir: str, split: str) -> list[str]:
    """Absolute paths of a split's token shards, from the manifest, e.g. for TokenBatchLoader."""
    manifest = read_json(os.path.join(token_dir, MANIFEST))
    return [os.path.join(token_dir, e["file"]) for e in manifest["splits"][split]]


def outputs_intact(out_dir: str, entries: list[dict]) -> bool:
    """Do the manifest entries' files ({"file", "sha256"}) under out_dir all exist with that content?"""
    for e in entries:
        p = os.path.join(out_dir, e["file"])
        if not os.path.exists(p) or sha256_file(p) != e["sha256"]:
            return False
    return True
