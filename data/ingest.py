"""Stage 1 of the prepare step, one Ray task per input unit: read, clean, hash each pair and route it
by hash to one of n_shards partial Arrow files (a pair and its duplicates land in the same shard).

    unit_dir/s00003.arrow    the unit's kept pairs for shard 3 (_PARTIAL_SCHEMA), in input order
    unit_dir/rejects.jsonl   one line per rejected record (with data.write_rejects)
    unit_dir/counts.json     {"input": 10, "rejected": {"empty": 1}, "shard_rows": [4, 5]}
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import IO, Any

import numpy as np
import pyarrow as pa

from data.cleaning import REJECT_REASONS, as_text, clean_batch, pair_key, split_of_value, splits_of
from data.config import DataConfig
from data.exchange import publish
from data.io import tmp_path_for, write_json_atomic
from data.shards import SPLITS
from data.sources import read_batches, read_split_values
from data.units import Unit

PARTIAL_SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("tgt", pa.string()),
        ("split", pa.string()),
        ("key", pa.binary(16)),  # BLAKE2b-128 of the pair: duplicate detection and split
        ("unit", pa.int32()),
        ("line", pa.int64()),
    ]
)


class _Partials:
    """The unit's partial Arrow file per shard, each opened when its first row arrives."""

    def __init__(self, work_dir: str, n_shards: int) -> None:
        self.work_dir = work_dir
        self.writers: list[Any] = [None] * n_shards
        self.rows = [0] * n_shards

    def route(self, batch: pa.RecordBatch, keys: np.ndarray) -> None:
        """Each row to shard (second key word mod n_shards)."""
        n_shards = len(self.writers)
        shard = (keys[:, 1] % np.uint64(n_shards)).astype(np.int64)
        for i in range(n_shards):
            m = shard == i
            k = int(m.sum())
            if not k:
                continue
            if self.writers[i] is None:
                path = os.path.join(self.work_dir, f"s{i:05d}.arrow")
                opts = pa.ipc.IpcWriteOptions(compression="zstd")  # kept between runs: keep them small
                self.writers[i] = pa.ipc.new_file(path, PARTIAL_SCHEMA, options=opts)
            self.writers[i].write_batch(batch.filter(pa.array(m)) if k < len(batch) else batch)
            self.rows[i] += k

    def close(self) -> None:
        for w in self.writers:
            if w is not None:
                w.close()


def _write_rejects(rej_f: IO[str], codes: np.ndarray, lines: np.ndarray, srcs: list, tgts: list, where: str) -> None:
    for i in np.nonzero(codes)[0].tolist():
        rec = {"reason": REJECT_REASONS[codes[i] - 1], "file": where, "line": int(lines[i]),
               "src": as_text(srcs[i]), "tgt": as_text(tgts[i])}
        rej_f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _splits(unit: Unit, cfg: DataConfig, seed: int, keys: np.ndarray, keep: np.ndarray, groups: list | None) -> pa.Array:
    """The split of each kept row: the unit's forced split, its data.split_by value's, or its hash's."""
    if unit.split:
        return pa.array([unit.split] * len(keep), pa.string())
    if groups is not None:  # data.split_by: the record's field value decides, not the pair
        return pa.array([split_of_value(groups[i], seed, cfg.valid_fraction, cfg.test_fraction)
                         for i in keep.tolist()], pa.string())
    return pa.array(SPLITS).take(pa.array(splits_of(keys, cfg.valid_fraction, cfg.test_fraction)))


def _kept_batch(
    unit: Unit, cfg: DataConfig, seed: int, lines: np.ndarray, codes: np.ndarray, s_arr: pa.Array, t_arr: pa.Array,
    groups: list | None,
) -> tuple[pa.RecordBatch, np.ndarray] | None:
    """The kept rows as a PARTIAL_SCHEMA batch and their (N, 2) uint64 keys; None when none is kept."""
    keep = np.nonzero(codes == 0)[0]
    if len(keep) == 0:
        return None
    idx = pa.array(keep)
    s_k, t_k = s_arr.take(idx), t_arr.take(idx)
    blob = b"".join(map(pair_key, s_k.cast(pa.binary()).to_pylist(), t_k.cast(pa.binary()).to_pylist()))
    keys = np.frombuffer(blob, dtype="<u8").reshape(-1, 2)
    columns = [
        s_k,
        t_k,
        _splits(unit, cfg, seed, keys, keep, groups),
        pa.Array.from_buffers(pa.binary(16), len(keep), [None, pa.py_buffer(blob)]),
        pa.array(np.full(len(keep), unit.index, dtype=np.int32)),
        pa.array(lines.astype(np.int64)[keep]),
    ]
    return pa.record_batch(columns, schema=PARTIAL_SCHEMA), keys


def ingest_unit(unit_d: dict, cfg_d: dict, unit_dir: str, write_rejects: bool, seed: int = 0) -> dict:
    """Stage 1 for one unit: writes unit_dir/s{shard}.arrow partials, rejects.jsonl and counts.json.

    The files are written in a temporary sibling directory renamed to unit_dir at the end, so a
    unit_dir that exists is complete and a later run can reuse it.
    """
    unit, cfg = Unit(**unit_d), DataConfig(**cfg_d)
    work_dir = tmp_path_for(unit_dir)
    os.makedirs(work_dir)
    partials = _Partials(work_dir, cfg.n_shards)
    rejected = np.zeros(len(REJECT_REASONS) + 1, dtype=np.int64)
    n_input = 0
    rej_f = open(os.path.join(work_dir, "rejects.jsonl"), "w", encoding="utf-8") if write_rejects else None
    values = read_split_values(unit, cfg) if cfg.split_by and not unit.split else None
    for lines, srcs, tgts, known in read_batches(unit, cfg):
        groups = next(values) if values is not None else None
        n_input += len(lines)
        codes, s_arr, t_arr = clean_batch(srcs, tgts, cfg, known)
        rejected[:] += np.bincount(codes, minlength=len(rejected))
        if rej_f is not None:
            _write_rejects(rej_f, codes, lines, srcs, tgts, unit.where())
        kept = _kept_batch(unit, cfg, seed, lines, codes, s_arr, t_arr, groups)
        if kept is not None:
            partials.route(*kept)
    partials.close()
    if rej_f is not None:
        rej_f.close()
    counts = {r: int(rejected[i + 1]) for i, r in enumerate(REJECT_REASONS) if rejected[i + 1]}
    result = {"input": n_input, "rejected": counts, "shard_rows": partials.rows}
    write_json_atomic(os.path.join(work_dir, "counts.json"), result)
    try:
        os.rename(work_dir, unit_dir)
    except OSError:  # the same unit finished concurrently (two runs): theirs is identical
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


def ingest_unit_published(unit_d: dict, cfg_d: dict, part: str, write_rejects: bool, seed: int = 0) -> dict:
    """ingest_unit as a task on a node without the driver's disk (data/exchange.py): the unit's folder
    is written in a scratch folder of this node and published under `part`; the result says where (`at`)."""
    with tempfile.TemporaryDirectory(prefix="tpipe-ingest-") as scratch:
        unit_dir = os.path.join(scratch, "unit")
        result = ingest_unit(unit_d, cfg_d, unit_dir, write_rejects, seed)
        result["at"] = publish(unit_dir, part)
    return result
