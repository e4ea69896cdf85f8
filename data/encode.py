"""The encode step: one Ray task per raw shard tokenizes it, drops pairs with a side over
max_tokens_per_side, and writes list<int32> id columns per split (TOKEN_SCHEMA):

    raw shard-00003.parquet -> encode_dir/{train,valid,test}/part-00003.parquet (+ rejects/part-00003.jsonl)

Files are written atomically, the manifest (`_manifest.json`) last; a shard whose raw content, tokenizer
fingerprint, config hash and max_tokens_per_side are unchanged is reused. With a remote Exchange
(data/exchange.py) a task reads the raw shard and the tokenizer at their URIs and publishes its parts,
which the driver collects into out_dir.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.exchange import Exchange, collect, local_copy, publish
from data.faults import maybe_kill
from data.io import MANIFEST, read_json, sha256_file, tmp_path_for, write_json_atomic
from data.shards import FORMAT_VERSION, SPLITS, TOKEN_SCHEMA, outputs_intact
from data.tasks import concat_files, gather, require_ray

_ENCODE_BATCH_ROWS = 8192  # also the row-group size of token shards: the loader's unit of shuffling


def _ids_array(seqs: list[list[int]]) -> tuple[pa.Array, np.ndarray]:
    """[[5, 6], [], [7]] -> (list<int32> array, lengths [2, 0, 1]) without a per-element Python loop in Arrow."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int32, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)), lens


def _default_tokenizer_loader(tokenizer_dir: str):
    from data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


class _ShardFiles:
    """One raw shard's outputs: a Parquet file per split and, with rejects, a JSONL file, each under a
    temporary name until commit(); discard() removes what commit() did not rename."""

    def __init__(self, out_dir: str, shard: int, schema: pa.Schema, write_rejects: bool) -> None:
        self.paths = {sp: os.path.join(out_dir, sp, f"part-{shard:05d}.parquet") for sp in SPLITS}
        self.tmps = {sp: tmp_path_for(p) for sp, p in self.paths.items()}
        for p in self.paths.values():
            os.makedirs(os.path.dirname(p), exist_ok=True)
        self.writers = {sp: pq.ParquetWriter(self.tmps[sp], schema, compression="zstd") for sp in SPLITS}
        self.rows = dict.fromkeys(SPLITS, 0)
        self.rejects_path = os.path.join(out_dir, "rejects", f"part-{shard:05d}.jsonl")
        if write_rejects:
            os.makedirs(os.path.dirname(self.rejects_path), exist_ok=True)
        self.rej_tmp = tmp_path_for(self.rejects_path)
        self.rejects: IO[str] | None = open(self.rej_tmp, "w", encoding="utf-8") if write_rejects else None

    def write(self, table: pa.Table, split: np.ndarray, ok: np.ndarray) -> None:
        """The rows of `table` that are `ok`, each to the file of its split."""
        for sp in SPLITS:
            m = ok & (split == sp)
            if m.any():
                part = table.filter(pa.array(m))
                self.writers[sp].write_table(part, row_group_size=_ENCODE_BATCH_ROWS)
                self.rows[sp] += len(part)

    def commit(self) -> None:
        for sp in SPLITS:
            self.writers[sp].close()
            os.replace(self.tmps[sp], self.paths[sp])
        if self.rejects is not None:
            self.rejects.close()
            os.replace(self.rej_tmp, self.rejects_path)

    def discard(self) -> None:
        for sp in SPLITS:
            if os.path.exists(self.tmps[sp]):
                self.writers[sp].close()
                os.remove(self.tmps[sp])
        if self.rejects is not None and os.path.exists(self.rej_tmp):
            self.rejects.close()
            os.remove(self.rej_tmp)


def _write_too_long(f: IO[str], rows: np.ndarray, raw_path: str, first_row: int, srcs: list, tgts: list,
                    src_len: np.ndarray, tgt_len: np.ndarray) -> None:
    for i in np.flatnonzero(rows).tolist():
        rec = {"reason": "too_long_tokens", "file": os.path.basename(raw_path), "row": first_row + i,
               "src_tokens": int(src_len[i]), "tgt_tokens": int(tgt_len[i]), "src": srcs[i], "tgt": tgts[i]}
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def encode_shard(
    raw_path: str,
    shard: int,
    tokenizer_dir: str,
    out_dir: str,
    max_tokens_per_side: int,
    metadata: dict[str, str],
    tokenizer_loader: Callable[[str], Any],
    write_rejects: bool = False,
) -> dict:
    """One Ray task: tokenize raw_path's pairs and write out_dir/{split}/part-{shard}.parquet; returns its counts."""
    maybe_kill("encode")  # durability tests: a worker lost mid-task (no-op unless injected)
    t_start = time.perf_counter()
    tokenize_s = 0.0
    tok = tokenizer_loader(tokenizer_dir)
    schema = TOKEN_SCHEMA.with_metadata({f"tpipe.{k}": v for k, v in metadata.items()})
    files = _ShardFiles(out_dir, shard, schema, write_rejects)
    tokens = {"src": 0, "tgt": 0}
    too_long = 0
    first_row = 0
    try:
        pf = pq.ParquetFile(raw_path)
        for batch in pf.iter_batches(batch_size=_ENCODE_BATCH_ROWS, columns=["src", "tgt", "split"]):
            srcs, tgts = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            t0 = time.perf_counter()
            src_ids, tgt_ids = tok.encode_batch(srcs), tok.encode_batch(tgts)
            tokenize_s += time.perf_counter() - t0
            src_arr, src_len = _ids_array(src_ids)
            tgt_arr, tgt_len = _ids_array(tgt_ids)
            ok = (src_len <= max_tokens_per_side) & (tgt_len <= max_tokens_per_side)
            too_long += int((~ok).sum())
            if files.rejects is not None:
                _write_too_long(files.rejects, ~ok, raw_path, first_row, srcs, tgts, src_len, tgt_len)
            first_row += len(srcs)
            split = np.asarray(batch.column(2).to_numpy(zero_copy_only=False))
            files.write(pa.table([src_arr, tgt_arr, pa.array(src_len), pa.array(tgt_len)], schema=schema), split, ok)
            tokens["src"] += int(src_len[ok].sum())
            tokens["tgt"] += int(tgt_len[ok].sum())
        files.commit()
    finally:
        files.discard()
    return {
        "shard": shard,
        "files": {
            sp: {"file": os.path.relpath(p, out_dir), "rows": files.rows[sp], "sha256": sha256_file(p)}
            for sp, p in files.paths.items()
        },
        "too_long_tokens": too_long,
        "rejects_file": os.path.relpath(files.rejects_path, out_dir) if write_rejects else None,
        "tokens": tokens,
        "seconds": {"task": time.perf_counter() - t_start, "tokenize": tokenize_s},
    }


def encode_shard_published(raw_location: str, shard: int, tokenizer_location: str, part: str, *args) -> dict:
    """encode_shard as a task on a node without the driver's disk: inputs from their URIs (this node's
    cache), outputs written in a scratch folder of this node and published under `part`; the result
    says where (`at`)."""
    with tempfile.TemporaryDirectory(prefix="tpipe-encode-") as scratch:
        result = encode_shard(local_copy(raw_location), shard, local_copy(tokenizer_location), scratch, *args)
        result["at"] = publish(scratch, part)
    return result


def _collect_shard(result: dict, out_dir: str) -> None:
    """The driver's copy of a published shard's parts, at the paths encode_shard gives them."""
    names = [f["file"] for f in result["files"].values()] + ([result["rejects_file"]] if result["rejects_file"] else [])
    collect(result.pop("at"), {n: os.path.join(out_dir, n) for n in names})


def _reusable(manifest_path: str, metadata: dict[str, str], write_rejects: bool) -> dict[str, dict]:
    """raw shard sha256 -> the earlier run's entry for it, when that run used the same settings."""
    if os.path.exists(manifest_path):
        old = read_json(manifest_path)
        if old.get("metadata") == metadata and old.get("write_rejects", False) == write_rejects:
            return {s["raw_sha256"]: s for s in old.get("shards", [])}
    return {}


def _remove_stale(out_dir: str, shards: list[dict], write_rejects: bool) -> None:
    """Parts of an earlier run with more shards or with rejects."""
    keep = {f["file"] for s in shards for f in s["files"].values()} | {s.get("rejects_file") for s in shards}
    for sub in (*SPLITS, "rejects"):
        d = os.path.join(out_dir, sub)
        for name in os.listdir(d) if os.path.isdir(d) else []:
            if name.endswith((".parquet", ".jsonl")) and os.path.join(sub, name) not in keep:
                os.remove(os.path.join(d, name))
    if not write_rejects and os.path.exists(os.path.join(out_dir, "rejects.jsonl")):
        os.remove(os.path.join(out_dir, "rejects.jsonl"))


def _token_manifest(metadata: dict, write_rejects: bool, rejects_file: str | None, shards: list[dict],
                    raw_manifest: dict) -> dict:
    """The encode manifest; raises when rows in != rows kept + rows rejected."""
    manifest = {
        "version": FORMAT_VERSION,
        "kind": "tokens",
        "metadata": metadata,
        "write_rejects": write_rejects,
        "rejects_file": rejects_file,
        "splits": {sp: [dict(s["files"][sp]) for s in shards] for sp in SPLITS},
        "rows": {sp: sum(s["files"][sp]["rows"] for s in shards) for sp in SPLITS},
        "input": sum(raw["rows"] for raw in raw_manifest["shards"]),
        "kept": sum(s["files"][sp]["rows"] for s in shards for sp in SPLITS),
        "rejected": {"too_long_tokens": sum(s["too_long_tokens"] for s in shards)},
        "tokens": {side: sum(s["tokens"][side] for s in shards) for side in ("src", "tgt")},
        # summed over tasks: how much of the encode step the tokenizer itself took
        "task_seconds": {k: sum(s["seconds"][k] for s in shards if not s["reused"]) for k in ("task", "tokenize")},
        "shards": shards,
        "reused": sum(bool(s["reused"]) for s in shards),
    }
    if manifest["input"] != manifest["kept"] + manifest["rejected"]["too_long_tokens"]:
        raise AssertionError(f"encode account does not balance: {manifest['input']} rows in, {manifest['kept']} "
                             f"kept, {manifest['rejected']}")
    return manifest


def encode_shards(
    raw_dir: str,
    tokenizer_dir: str,
    out_dir: str,
    *,
    max_tokens_per_side: int,
    config_hash: str,
    tokenizer_loader: Callable[[str], Any] | None = None,
    write_rejects: bool = False,
    exchange: Exchange | None = None,
) -> dict:
    """Tokenize every raw shard in its own Ray task; returns the token manifest (also out_dir/_manifest.json).

    `tokenizer_loader(dir) -> Tokenizer` defaults to data.tokenizer.load_tokenizer; tests pass a
    stand-in. `write_rejects` also writes the rows rejected for too many tokens to
    out_dir/rejects.jsonl (raw shard file and row, token counts, text). A shard is re-encoded only when its raw content, the tokenizer fingerprint,
    config_hash or max_tokens_per_side changed. `exchange` says where the tasks run and how they pass
    files (data/exchange.py); by default they read and write these folders.
    """
    ray = require_ray()
    exchange = exchange or Exchange()
    raw_manifest_path = os.path.join(raw_dir, MANIFEST)
    if not os.path.exists(raw_manifest_path):
        raise FileNotFoundError(f"{raw_manifest_path} does not exist; run prepare_raw_shards first")
    raw_manifest = read_json(raw_manifest_path)
    loader = tokenizer_loader or _default_tokenizer_loader
    tok = loader(tokenizer_dir)
    metadata = {
        "tokenizer_fingerprint": str(tok.fingerprint),
        "config_hash": str(config_hash),
        "max_tokens_per_side": str(max_tokens_per_side),
        "format_version": str(FORMAT_VERSION),
    }
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST)
    old_by_raw = _reusable(manifest_path, metadata, write_rejects)
    if os.path.exists(manifest_path):  # unfinished until the new manifest is written
        os.remove(manifest_path)
    encode = exchange.task(ray, encode_shard_published if exchange.remote else encode_shard)
    shards: list[dict] = [{} for _ in raw_manifest["shards"]]
    pending: dict[int, Any] = {}
    for i, raw in enumerate(raw_manifest["shards"]):
        prev = old_by_raw.get(raw["sha256"])
        if prev is not None and prev["shard"] == i and outputs_intact(out_dir, list(prev["files"].values())):
            shards[i] = dict(prev, reused=True)
        else:
            raw_path = exchange.location(os.path.join(raw_dir, raw["file"]))
            pending[i] = encode.remote(
                raw_path, i, exchange.location(tokenizer_dir), exchange.part("parts") if exchange.remote else out_dir,
                max_tokens_per_side, metadata, loader, write_rejects,
            )
    try:
        for i, r in zip(pending, gather(ray, list(pending.values()), "encode", "shards")):
            if exchange.remote:
                _collect_shard(r, out_dir)
            shards[i] = dict(r, reused=False, raw_sha256=raw_manifest["shards"][i]["sha256"])
    finally:
        exchange.remove_stage()
    _remove_stale(out_dir, shards, write_rejects)
    rejects_file = None
    if write_rejects:
        rejects_file = "rejects.jsonl"
        concat_files([os.path.join(out_dir, s["rejects_file"]) for s in shards], os.path.join(out_dir, rejects_file))
    manifest = _token_manifest(metadata, write_rejects, rejects_file, shards, raw_manifest)
    write_json_atomic(manifest_path, manifest)
    return manifest
