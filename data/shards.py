"""Where the data steps' shards are and what they hold: the splits, the two Parquet schemas, the file lists.

    raw shards    prepare_dir/shard-0000i.parquet             src, tgt, split (RAW_SCHEMA)
    token shards  encode_dir/{train,valid,test}/part-0000i.parquet   src_ids, tgt_ids, src_len, tgt_len

Each directory's `_manifest.json` lists its files; readers go through it, never through a glob, so a
half-written step (no manifest yet) is never read.
"""

from __future__ import annotations

import os

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
