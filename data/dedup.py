"""Stage 2 of the prepare step, one Ray task per shard: concatenate the shard's partials from every
unit in input order, keep the first of each pair (exact duplicates share a key), write
shard-0000i.parquet and return its counts and length histogram."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.config import DataConfig
from data.exchange import download, publish
from data.ingest import PARTIAL_SCHEMA
from data.io import atomic_path, sha256_file
from data.report import HIST_CHARS
from data.shards import SPLITS


def _first_occurrences(keys: pa.Array) -> np.ndarray:
    """Boolean mask, True at the first row of each distinct 16-byte key (rows are in input order)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=bool)
    buf = keys.buffers()[1]
    raw = np.frombuffer(buf, dtype=np.uint8, count=(keys.offset + n) * 16)[keys.offset * 16 :]
    _, first = np.unique(raw.view("V16"), return_index=True)
    mask = np.zeros(n, dtype=bool)
    mask[first] = True
    return mask


def write_shard(
    shard: int, unit_dirs: list[str], unit_where: list[str], cfg_d: dict, work_dir: str, out_path: str, write_rejects: bool
) -> dict:
    """Stage 2 for one shard: its partials from every unit, in input order -> dedup -> Parquet."""
    import pyarrow.compute as pc

    cfg = DataConfig(**cfg_d)
    tables = []
    for u, d in enumerate(unit_dirs):
        p = os.path.join(d, f"s{shard:05d}.arrow")
        if os.path.exists(p):
            with pa.memory_map(p) as src:
                t = pa.ipc.open_file(src).read_all()
            # a reused unit may have had another position in an earlier run
            tables.append(t.set_column(4, "unit", pa.array(np.full(len(t), u, dtype=np.int32))))
    table = pa.concat_tables(tables).combine_chunks() if tables else PARTIAL_SCHEMA.empty_table()
    keep = _first_occurrences(table.column("key").combine_chunks()) if cfg.dedup else np.ones(len(table), bool)
    n_dup = int((~keep).sum())
    if write_rejects and n_dup:
        dups = table.filter(pa.array(~keep))
        with open(os.path.join(work_dir, f"rejects-s{shard:05d}.jsonl"), "w", encoding="utf-8") as f:
            for s, t, u, line in zip(*(dups.column(c).to_pylist() for c in ("src", "tgt", "unit", "line"))):
                rec = {"reason": "duplicate", "file": unit_where[u], "line": line, "src": s, "tgt": t}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    kept = table.filter(pa.array(keep)).select(["src", "tgt", "split"])
    with atomic_path(out_path) as tmp:
        pq.write_table(kept, tmp, compression="zstd")
    vc = pc.value_counts(kept.column("split"))
    splits = dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
    hist, longest = {}, {}
    cap = min(cfg.max_chars, HIST_CHARS)
    for side in ("src", "tgt"):
        lens = pc.utf8_length(kept.column(side)).to_numpy() if len(kept) else np.zeros(0, np.int64)
        hist[side] = np.bincount(np.minimum(lens, cap), minlength=cap + 1).tolist()
        longest[side] = int(lens.max(initial=0))
    return {
        "shard": shard,
        "file": os.path.basename(out_path),
        "rows": len(kept),
        "splits": {s: int(splits.get(s, 0)) for s in SPLITS},
        "sha256": sha256_file(out_path),
        "duplicates": n_dup,
        "hist": hist,
        "longest": longest,
    }


def write_shard_published(
    shard: int, partials: list[str], unit_where: list[str], cfg_d: dict, part: str, write_rejects: bool
) -> dict:
    """write_shard as a task on a node without the driver's disk (data/exchange.py): each unit's partial
    for this shard is downloaded from the URI in `partials` ("" where the unit has none), the shard and
    its rejects are written in a scratch folder of this node and published under `part`; the result
    says where (`at`)."""
    with tempfile.TemporaryDirectory(prefix="tpipe-shard-") as scratch:
        unit_dirs = [os.path.join(scratch, "units", str(u)) for u in range(len(partials))]
        for d, uri in zip(unit_dirs, partials):
            if uri:
                download(uri, os.path.join(d, f"s{shard:05d}.arrow"))
        out = os.path.join(scratch, "out")
        os.makedirs(out)
        result = write_shard(shard, unit_dirs, unit_where, cfg_d, out, os.path.join(out, f"shard-{shard:05d}.parquet"),
                             write_rejects)
        result["at"] = publish(out, part)
    return result
