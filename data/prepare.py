"""The data steps as Ray tasks: raw corpus -> cleaned, split raw Parquet shards -> token-id shards.

prepare_raw_shards is a two-stage shuffle so that exact-duplicate removal is global yet parallel:

    stage 1, one task per input unit (file, byte range, Moses pair): read, clean, hash each pair,
             route it by hash to one of n_shards partial Arrow files
    stage 2, one task per shard: concatenate its partials in input order, drop repeated pairs
             (a pair and its duplicates hash to the same shard), write shard-0000i.parquet

A pair's 128-bit BLAKE2b hash also assigns its split (train/valid/test), so a pair keeps its split
when the corpus grows, whatever the seed, shard count or file order. Every input record is kept or
counted under exactly one reject reason; `data_report.json` states input = kept + rejected.

encode_shards runs one task per raw shard: tokenize, drop sides over max_tokens_per_side, write
list<int32> id columns per split. Both steps write files atomically (temporary name, then
os.replace), write the manifest (`_manifest.json`) last, and reuse earlier output whose inputs and settings match.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.config import DataConfig
from data.errors import UserError
from data.faults import maybe_kill
from data.io import (
    MANIFEST,
    DataError,
    atomic_path,
    file_identity,
    read_json,
    sha256_file,
    tmp_path_for,
    write_json_atomic,
)
from data.sources import Unit, plan_units, read_batches, read_split_values

FORMAT_VERSION = 1  # bump when the bytes these steps write change, so old outputs are not reused
SPLITS = ("train", "valid", "test")
# In the order they are checked: a record is counted under the first that applies.
REJECT_REASONS = ("header", "invalid_utf8", "fuzzy", "control_chars", "empty", "too_long", "ratio", "duplicate")
# C0 control characters other than tab, newline and carriage return, and DEL: a NUL or an escape
# sequence in a sentence is a broken record (a binary fragment, terminal codes), not text to learn.
_CONTROL_CHARS = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]"
ENCODE_REJECT_REASONS = ("too_long_tokens",)
RAW_SCHEMA = pa.schema([("src", pa.string()), ("tgt", pa.string()), ("split", pa.string())])
TOKEN_SCHEMA = pa.schema(
    [
        ("src_ids", pa.list_(pa.int32())),
        ("tgt_ids", pa.list_(pa.int32())),
        ("src_len", pa.int32()),
        ("tgt_len", pa.int32()),
    ]
)
_PARTIAL_SCHEMA = pa.schema(
    [
        ("src", pa.string()),
        ("tgt", pa.string()),
        ("split", pa.string()),
        ("key", pa.binary(16)),  # BLAKE2b-128 of the pair: duplicate detection and split
        ("unit", pa.int32()),
        ("line", pa.int64()),
    ]
)
# Lengths over this share the last bin of the length histogram: the histogram, the report and the
# plot stay this size whatever data.max_chars is (a bin per character up to 10 million made a
# 10 MB line cost minutes in the plot alone). The report's `max` is exact.
HIST_CHARS = 4096
_ENCODE_BATCH_ROWS = 8192  # also the row-group size of token shards: the loader's unit of shuffling


def _require_ray():
    import ray

    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised; call ray.init(...) before the data steps")
    return ray


def _get(ray, refs: list, label: str = "", unit: str = "tasks") -> list:
    """ray.get, but bad input surfaces as the DataError the task raised, not wrapped in a Ray traceback.

    With a label, reports the tasks finished so far, their rate and the time left (data/progress.py).
    On a failure the other tasks are cancelled and their results collected, so that Ray does not
    print their errors later as unhandled ones (a traceback per task for one bad file).
    """
    try:
        if label and refs:
            from data.progress import Progress

            progress, remaining = Progress(label, len(refs), unit), list(refs)
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=1)
                ray.get(ready)  # a failed task fails the step now, not after the others finish
                progress.update(len(ready))
            progress.close()
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        for r in refs:
            ray.cancel(r)
        for r in refs:
            try:
                ray.get(r, timeout=60)
            except Exception:  # noqa: BLE001 - collected only so that it counts as handled
                pass
        if isinstance(getattr(e, "cause", None), UserError):
            raise e.cause from None
        raise


def pair_key(src: bytes, tgt: bytes) -> bytes:
    """BLAKE2b-128 of the pair, length-prefixed so that ('ab', 'c') and ('a', 'bc') differ."""
    return hashlib.blake2b(len(src).to_bytes(4, "little") + src + tgt, digest_size=16).digest()


def splits_of(keys: np.ndarray, valid_fraction: float, test_fraction: float) -> np.ndarray:
    """(N, 2) little-endian uint64 keys -> split index (0 train, 1 valid, 2 test) from the first word
    as a uniform number in [0, 1): below valid_fraction -> valid, then test_fraction -> test."""
    u = keys[:, 0].astype(np.float64) / 2.0**64
    out = np.zeros(len(keys), dtype=np.int8)
    out[u < valid_fraction + test_fraction] = 2
    out[u < valid_fraction] = 1
    return out


def split_of(src: str, tgt: str, valid_fraction: float, test_fraction: float) -> str:
    """The split a (stripped) pair gets, whatever corpus it is in: split_of('one', '一', .02, .02) -> 'train'."""
    key = np.frombuffer(pair_key(src.encode(), tgt.encode()), dtype="<u8").reshape(1, 2)
    return SPLITS[int(splits_of(key, valid_fraction, test_fraction)[0])]


def split_of_value(value: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """The split of every record whose `data.split_by` field is `value` (a package, a document id):
    BLAKE2b-128 of "seed:value", read as in `splits_of`, so related records never straddle splits
    and a new seed draws a new split. split_of_value('git', 4, .1, .1) -> 'train'."""
    digest = hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=16).digest()
    key = np.frombuffer(digest, dtype="<u8").reshape(1, 2)
    return SPLITS[int(splits_of(key, valid_fraction, test_fraction)[0])]


def _as_text(x: bytes | str) -> str:
    """A side as it can be written to a UTF-8 rejects file: invalid bytes and lone surrogates as escapes."""
    if isinstance(x, bytes):
        return x.decode("utf-8", "backslashreplace")
    return x if _is_utf8(x) else x.encode("utf-8", "backslashreplace").decode("utf-8")


# --------------------------------------------------------------------------------------------
# Stage 1: read, clean, route


def _string_array(values: list) -> tuple[pa.Array, np.ndarray]:
    """str/bytes values -> (utf8 array, invalid mask); an invalid value becomes ''. One C pass when all valid.

    Invalid: bytes that are not UTF-8, and str with lone surrogates (JSON's "\\ud800" escapes).
    """
    n = len(values)
    try:
        arr = pa.array(values)  # string when all are str, binary when any is bytes
        if arr.type == pa.string():
            return arr, np.zeros(n, dtype=bool)
        return arr.cast(pa.string()), np.zeros(n, dtype=bool)
    except (pa.ArrowInvalid, UnicodeEncodeError):
        bad = np.array([not _is_utf8(v) for v in values], dtype=bool)
        fixed = [b"" if b else (v.encode("utf-8") if isinstance(v, str) else v) for v, b in zip(values, bad.tolist())]
        return pa.array(fixed, pa.binary()).cast(pa.string()), bad


def _is_utf8(v: bytes | str) -> bool:
    try:
        v.decode("utf-8") if isinstance(v, bytes) else v.encode("utf-8")
        return True
    except UnicodeError:
        return False


def clean_batch(
    srcs: list, tgts: list, cfg: DataConfig, known: list[str | None] | None = None
) -> tuple[np.ndarray, pa.Array, pa.Array]:
    r"""Vectorised cleaning of raw sides (bytes or str) -> (codes, stripped src, stripped tgt).

    codes[i] is 0 for a kept pair, else 1 + the index in REJECT_REASONS of the first reason that
    applies; `known` carries reasons a reader already decided (a fuzzy catalog entry).

        >>> codes, s, t = clean_batch([b"hi ", b"\xff", "x"], ["Hallo", "ok", "y" * 20], DataConfig())
        >>> [REJECT_REASONS[c - 1] if c else None for c in codes], s.to_pylist()[0]
        ([None, 'invalid_utf8', 'ratio'], 'hi')
    """
    import pyarrow.compute as pc

    n = len(srcs)
    s_arr, s_bad = _string_array(srcs)
    t_arr, t_bad = _string_array(tgts)
    s_arr, t_arr = pc.utf8_trim_whitespace(s_arr), pc.utf8_trim_whitespace(t_arr)
    sb = pc.binary_length(s_arr).to_numpy().astype(np.int64)
    tb = pc.binary_length(t_arr).to_numpy().astype(np.int64)
    sc = pc.utf8_length(s_arr).to_numpy()
    tc = pc.utf8_length(t_arr).to_numpy()
    # Later rules first, so that the first rule that applies wins.
    codes = np.zeros(n, dtype=np.int8)
    code = {r: np.int8(i + 1) for i, r in enumerate(REJECT_REASONS)}
    codes[np.maximum(sb, tb) > cfg.max_length_ratio * np.minimum(sb, tb)] = code["ratio"]
    codes[(sc > cfg.max_chars) | (tc > cfg.max_chars)] = code["too_long"]
    codes[(sb == 0) | (tb == 0)] = code["empty"]
    control = pc.or_(pc.match_substring_regex(s_arr, _CONTROL_CHARS), pc.match_substring_regex(t_arr, _CONTROL_CHARS))
    codes[control.to_numpy(zero_copy_only=False)] = code["control_chars"]
    known_any = known is not None and any(r is not None for r in known)
    if known_any:
        for i, r in enumerate(known):
            if r is not None and r != "header":
                codes[i] = code[r]
    codes[s_bad | t_bad] = code["invalid_utf8"]
    if known_any:
        for i, r in enumerate(known):
            if r == "header":
                codes[i] = code[r]
    return codes, s_arr, t_arr


def clean_pair(src: bytes | str, tgt: bytes | str, cfg: DataConfig) -> str | None:
    """The reject reason of one pair, or None if it is kept: clean_pair('a', 'b' * 10, cfg) -> 'ratio'."""
    codes, _, _ = clean_batch([src], [tgt], cfg)
    return REJECT_REASONS[codes[0] - 1] if codes[0] else None


def _ingest_unit(unit_d: dict, cfg_d: dict, unit_dir: str, write_rejects: bool, seed: int = 0) -> dict:
    """Stage 1 for one unit: writes unit_dir/s{shard}.arrow partials, rejects.jsonl and counts.json.

    The files are written in a temporary sibling directory renamed to unit_dir at the end, so a
    unit_dir that exists is complete and a later run can reuse it.
    """
    unit, cfg = Unit(**unit_d), DataConfig(**cfg_d)
    work_dir = tmp_path_for(unit_dir)
    os.makedirs(work_dir)
    n_shards = cfg.n_shards
    writers: list[Any] = [None] * n_shards
    shard_rows = [0] * n_shards
    rejected = np.zeros(len(REJECT_REASONS) + 1, dtype=np.int64)
    n_input = 0
    rej_path = os.path.join(work_dir, "rejects.jsonl")
    rej_f = open(rej_path, "w", encoding="utf-8") if write_rejects else None
    split_names = pa.array(SPLITS)

    def process(lines: np.ndarray, srcs: list, tgts: list, known: list | None, groups: list | None) -> None:
        nonlocal n_input
        n_input += len(lines)
        codes, s_arr, t_arr = clean_batch(srcs, tgts, cfg, known)
        rejected[:] += np.bincount(codes, minlength=len(rejected))
        if rej_f is not None:
            for i in np.nonzero(codes)[0].tolist():
                rec = {"reason": REJECT_REASONS[codes[i] - 1], "file": unit.where(), "line": int(lines[i]),
                       "src": _as_text(srcs[i]), "tgt": _as_text(tgts[i])}
                rej_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        keep = np.nonzero(codes == 0)[0]
        if len(keep) == 0:
            return
        idx = pa.array(keep)
        s_k, t_k = s_arr.take(idx), t_arr.take(idx)
        sb = s_k.cast(pa.binary()).to_pylist()
        tb = t_k.cast(pa.binary()).to_pylist()
        h = hashlib.blake2b
        blob = b"".join([h(len(a).to_bytes(4, "little") + a + b, digest_size=16).digest() for a, b in zip(sb, tb)])
        keys = np.frombuffer(blob, dtype="<u8").reshape(-1, 2)
        if unit.split:
            split = pa.array([unit.split] * len(keep), pa.string())
        elif groups is not None:  # data.split_by: the record's field value decides, not the pair
            split = pa.array([split_of_value(groups[i], seed, cfg.valid_fraction, cfg.test_fraction)
                              for i in keep.tolist()], pa.string())
        else:
            split = split_names.take(pa.array(splits_of(keys, cfg.valid_fraction, cfg.test_fraction)))
        batch = pa.record_batch(
            [
                s_k,
                t_k,
                split,
                pa.Array.from_buffers(pa.binary(16), len(keep), [None, pa.py_buffer(blob)]),
                pa.array(np.full(len(keep), unit.index, dtype=np.int32)),
                pa.array(lines.astype(np.int64)[keep]),
            ],
            schema=_PARTIAL_SCHEMA,
        )
        shard = (keys[:, 1] % np.uint64(n_shards)).astype(np.int64)
        for i in range(n_shards):
            m = shard == i
            k = int(m.sum())
            if not k:
                continue
            if writers[i] is None:
                path = os.path.join(work_dir, f"s{i:05d}.arrow")
                opts = pa.ipc.IpcWriteOptions(compression="zstd")  # kept between runs: keep them small
                writers[i] = pa.ipc.new_file(path, _PARTIAL_SCHEMA, options=opts)
            writers[i].write_batch(batch.filter(pa.array(m)) if k < len(keep) else batch)
            shard_rows[i] += k

    values = read_split_values(unit, cfg) if cfg.split_by and not unit.split else None
    for lines, srcs, tgts, known in read_batches(unit, cfg):
        process(lines, srcs, tgts, known, next(values) if values is not None else None)
    for w in writers:
        if w is not None:
            w.close()
    if rej_f is not None:
        rej_f.close()
    counts = {r: int(rejected[i + 1]) for i, r in enumerate(REJECT_REASONS) if rejected[i + 1]}
    result = {"input": n_input, "rejected": counts, "shard_rows": shard_rows}
    write_json_atomic(os.path.join(work_dir, "counts.json"), result)
    try:
        os.rename(work_dir, unit_dir)
    except OSError:  # the same unit finished concurrently (two runs): theirs is identical
        shutil.rmtree(work_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------
# Stage 2: dedup and write one shard


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


def _write_shard(
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
    table = pa.concat_tables(tables).combine_chunks() if tables else _PARTIAL_SCHEMA.empty_table()
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


# --------------------------------------------------------------------------------------------
# The raw step


def _raw_fingerprint(cfg: DataConfig, seed: int, units: list[Unit]) -> str:
    inputs = sorted({p for u in units for p in (u.path, u.path2) if p})
    blob = {
        "version": FORMAT_VERSION,
        "data": asdict(cfg),
        # files do not depend on the seed, unless data.split_by draws their split with it
        "seed": seed if cfg.source == "builtin" or cfg.split_by else None,
        "inputs": [file_identity(p) for p in inputs],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _unit_key(unit: Unit, cfg: DataConfig, seed: int) -> str:
    """What a unit's stage-1 output depends on: its file(s) as they are now, its byte range, the
    cleaning and routing settings; not its position in the input or the other files."""
    settings = asdict(cfg)
    for k in ("source", "paths", "valid_paths", "test_paths", "chunk_mb", "dedup", "builtin_size", "max_tokens_per_side"):
        settings.pop(k)
    blob = {
        "version": FORMAT_VERSION,
        "unit": {k: v for k, v in unit.to_dict().items() if k != "index"},
        "files": [file_identity(p) for p in (unit.path, unit.path2) if p],
        "settings": settings,
        "seed": seed if unit.format == "builtin" or cfg.split_by else None,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def _outputs_intact(out_dir: str, entries: list[dict]) -> bool:
    for e in entries:
        p = os.path.join(out_dir, e["file"])
        if not os.path.exists(p) or sha256_file(p) != e["sha256"]:
            return False
    return True


def prepare_raw_shards(cfg: DataConfig, out_dir: str, *, seed: int) -> dict:
    """Read, clean, split and shard the corpus with Ray tasks; returns the data report (also in
    out_dir/data_report.json). Reuses out_dir's shards when the inputs and settings are unchanged."""
    ray = _require_ray()
    os.makedirs(out_dir, exist_ok=True)
    units = plan_units(cfg, seed)
    fingerprint = _raw_fingerprint(cfg, seed, units)
    manifest_path = os.path.join(out_dir, MANIFEST)
    report_path = os.path.join(out_dir, "data_report.json")
    if os.path.exists(manifest_path) and os.path.exists(report_path):
        old = read_json(manifest_path)
        if old.get("fingerprint") == fingerprint and _outputs_intact(out_dir, old["shards"]):
            report = read_json(report_path)
            report["reused"] = True
            return report

    if os.path.exists(manifest_path):  # from here on the directory is unfinished until the new one
        os.remove(manifest_path)
    cfg_d = asdict(cfg)
    # Stage-1 output is kept per unit under .units/<key>: a re-run after adding a file reads only
    # the new file; stage 2 (cheap: Arrow in, Parquet out) always runs, since dedup is global.
    units_dir = os.path.join(out_dir, ".units")
    os.makedirs(units_dir, exist_ok=True)
    unit_dirs = [os.path.join(units_dir, _unit_key(u, cfg, seed)) for u in units]
    work_dir = os.path.join(out_dir, f".work-{uuid.uuid4().hex[:12]}")
    os.makedirs(work_dir)
    try:
        ingest = ray.remote(num_cpus=1)(_ingest_unit)
        pending = {
            i: ingest.remote(u.to_dict(), cfg_d, unit_dirs[i], cfg.write_rejects, seed)
            for i, u in enumerate(units)
            if not os.path.exists(os.path.join(unit_dirs[i], "counts.json"))
        }
        done = dict(zip(pending, _get(ray, list(pending.values()), "prepare: read", "input pieces")))
        stage1 = [done[i] if i in done else read_json(os.path.join(unit_dirs[i], "counts.json")) for i in range(len(units))]
        unit_where = [u.where() for u in units]
        write = ray.remote(num_cpus=1)(_write_shard)
        shard_paths = [os.path.join(out_dir, f"shard-{i:05d}.parquet") for i in range(cfg.n_shards)]
        stage2 = _get(
            ray,
            [
                write.remote(i, unit_dirs, unit_where, cfg_d, work_dir, shard_paths[i], cfg.write_rejects)
                for i in range(cfg.n_shards)
            ],
            "prepare: write",
            "shards",
        )
        rejects_file = None
        if cfg.write_rejects:
            rejects_file = "rejects.jsonl"
            parts = [os.path.join(d, "rejects.jsonl") for d in unit_dirs]
            parts += [os.path.join(work_dir, f"rejects-s{i:05d}.jsonl") for i in range(cfg.n_shards)]
            with atomic_path(os.path.join(out_dir, rejects_file)) as tmp, open(tmp, "wb") as out:
                for p in parts:
                    if os.path.exists(p):
                        with open(p, "rb") as f:
                            shutil.copyfileobj(f, out)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    for name in set(os.listdir(units_dir)) - {os.path.basename(d) for d in unit_dirs}:
        shutil.rmtree(os.path.join(units_dir, name), ignore_errors=True)  # units of inputs no longer used

    rejected = Counter({r: 0 for r in REJECT_REASONS})
    for r in stage1:
        rejected.update(r["rejected"])
    rejected["duplicate"] += sum(s["duplicates"] for s in stage2)
    n_input = sum(r["input"] for r in stage1)
    kept = sum(s["rows"] for s in stage2)
    splits = {sp: sum(s["splits"][sp] for s in stage2) for sp in SPLITS}
    hist = {side: np.sum([s["hist"][side] for s in stage2], axis=0) for side in ("src", "tgt")}
    png = "lengths.png"
    _plot_lengths(hist, os.path.join(out_dir, png), cfg.max_chars)
    report = {
        "input": n_input,
        "kept": kept,
        "rejected": {r: int(rejected[r]) for r in REJECT_REASONS},
        "rejected_total": int(sum(rejected.values())),
        "splits": splits,
        "length_chars": {side: _percentiles(h) | {"max": max(s["longest"][side] for s in stage2)}
                         for side, h in hist.items()},
        "sources": sorted({u.where() for u in units}),
        "units": len(units),
        "histogram_png": png,
        "rejects_file": rejects_file,
        "fingerprint": fingerprint,
        "reused": False,
        "units_reused": len(units) - len(pending),
    }
    if report["input"] != report["kept"] + report["rejected_total"]:  # the account must balance
        raise AssertionError(f"record account does not balance: {report}")
    _check_not_empty(report)
    manifest = {
        "version": FORMAT_VERSION,
        "kind": "raw",
        "fingerprint": fingerprint,
        "columns": RAW_SCHEMA.names,
        "shards": [{k: s[k] for k in ("file", "rows", "splits", "sha256")} for s in stage2],
        "splits": splits,
    }
    for name in os.listdir(out_dir):  # shards of an earlier run with more shards
        if name.startswith("shard-") and name.endswith(".parquet") and name not in {s["file"] for s in stage2}:
            os.remove(os.path.join(out_dir, name))
    write_json_atomic(report_path, report)
    write_json_atomic(manifest_path, manifest)  # last: its presence means the step finished
    return report


def _check_not_empty(report: dict) -> None:
    """Stop here, with the reject counts, when cleaning left nothing to train on: the tokenizer would
    otherwise fail later with a message that names neither the data nor the reason."""
    counts = ", ".join(f"{r} {n}" for r, n in report["rejected"].items() if n) or "none"
    where = ", ".join(report["sources"][:3]) + (", ..." if len(report["sources"]) > 3 else "")
    if report["kept"] == 0:
        raise DataError(
            f"no pair of {where} survived cleaning: {report['input']} records read, all rejected ({counts}); "
            "see data.max_chars, data.max_length_ratio, data.format"
        )
    if report["splits"]["train"] == 0:
        raise DataError(
            f"the train split of {where} is empty: {report['kept']} pairs kept, all held out "
            f"({report['splits']}); lower data.valid_fraction/test_fraction or add data to data.paths"
        )


def _percentiles(hist: np.ndarray) -> dict[str, float]:
    """Bincount of lengths -> {'p50': .., 'p95': .., 'p99': .., 'max': ..} (capped at the last bin, HIST_CHARS)."""
    total = int(hist.sum())
    if total == 0:
        return {"p50": 0, "p95": 0, "p99": 0, "max": 0}
    cdf = np.cumsum(hist)
    out = {f"p{q}": int(np.searchsorted(cdf, q / 100 * total)) for q in (50, 95, 99)}
    out["max"] = int(np.nonzero(hist)[0][-1])
    return out


def _plot_lengths(hist: dict[str, np.ndarray], path: str, max_chars: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for side, h in hist.items():
        top = max(int(np.nonzero(h)[0][-1]) + 1 if h.any() else 1, 2)
        ax.step(np.arange(top), h[:top], where="mid", label=side)
    cap = "" if max_chars <= HIST_CHARS else f"; the last bin holds all over {HIST_CHARS}"
    ax.set_xlabel(f"characters (longer than {max_chars} are rejected{cap})")
    ax.set_ylabel("kept pairs")
    ax.set_title("Length histogram of kept pairs")
    ax.legend(loc="upper right")  # loc="best" searches every point of every line
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The encode step


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


def _encode_shard(
    raw_path: str,
    shard: int,
    tokenizer_dir: str,
    out_dir: str,
    max_tokens_per_side: int,
    metadata: dict[str, str],
    tokenizer_loader: Callable[[str], Any],
    write_rejects: bool = False,
) -> dict:
    maybe_kill("encode")  # durability tests: a worker lost mid-task (no-op unless injected)
    t_start = time.perf_counter()
    tokenize_s = 0.0
    tok = tokenizer_loader(tokenizer_dir)
    schema = TOKEN_SCHEMA.with_metadata({f"tpipe.{k}": v for k, v in metadata.items()})
    paths = {sp: os.path.join(out_dir, sp, f"part-{shard:05d}.parquet") for sp in SPLITS}
    tmps = {sp: tmp_path_for(p) for sp, p in paths.items()}
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    writers = {sp: pq.ParquetWriter(tmps[sp], schema, compression="zstd") for sp in SPLITS}
    rows = dict.fromkeys(SPLITS, 0)
    tokens = {"src": 0, "tgt": 0}
    too_long = 0
    rejects_path = os.path.join(out_dir, "rejects", f"part-{shard:05d}.jsonl")
    if write_rejects:
        os.makedirs(os.path.dirname(rejects_path), exist_ok=True)
    rej_tmp = tmp_path_for(rejects_path)
    rej_f = open(rej_tmp, "w", encoding="utf-8") if write_rejects else None
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
            if rej_f is not None:
                for i in np.flatnonzero(~ok).tolist():
                    rec = {"reason": "too_long_tokens", "file": os.path.basename(raw_path), "row": first_row + i,
                           "src_tokens": int(src_len[i]), "tgt_tokens": int(tgt_len[i]), "src": srcs[i], "tgt": tgts[i]}
                    rej_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            first_row += len(srcs)
            split = np.asarray(batch.column(2).to_numpy(zero_copy_only=False))
            t = pa.table([src_arr, tgt_arr, pa.array(src_len), pa.array(tgt_len)], schema=schema)
            for sp in SPLITS:
                m = ok & (split == sp)
                if m.any():
                    part = t.filter(pa.array(m))
                    writers[sp].write_table(part, row_group_size=_ENCODE_BATCH_ROWS)
                    rows[sp] += len(part)
            tokens["src"] += int(src_len[ok].sum())
            tokens["tgt"] += int(tgt_len[ok].sum())
        for sp in SPLITS:
            writers[sp].close()
            os.replace(tmps[sp], paths[sp])
        if rej_f is not None:
            rej_f.close()
            os.replace(rej_tmp, rejects_path)
    finally:
        for sp in SPLITS:
            if os.path.exists(tmps[sp]):
                writers[sp].close()
                os.remove(tmps[sp])
        if rej_f is not None and os.path.exists(rej_tmp):
            rej_f.close()
            os.remove(rej_tmp)
    return {
        "shard": shard,
        "files": {
            sp: {"file": os.path.relpath(paths[sp], out_dir), "rows": rows[sp], "sha256": sha256_file(paths[sp])}
            for sp in SPLITS
        },
        "too_long_tokens": too_long,
        "rejects_file": os.path.relpath(rejects_path, out_dir) if write_rejects else None,
        "tokens": tokens,
        "seconds": {"task": time.perf_counter() - t_start, "tokenize": tokenize_s},
    }


def encode_shards(
    raw_dir: str,
    tokenizer_dir: str,
    out_dir: str,
    *,
    max_tokens_per_side: int,
    config_hash: str,
    tokenizer_loader: Callable[[str], Any] | None = None,
    write_rejects: bool = False,
) -> dict:
    """Tokenize every raw shard in its own Ray task; returns the token manifest (also out_dir/_manifest.json).

    `tokenizer_loader(dir) -> Tokenizer` defaults to data.tokenizer.load_tokenizer; tests pass a
    stand-in. `write_rejects` also writes the rows rejected for too many tokens to
    out_dir/rejects.jsonl (raw shard file and row, token counts, text). A shard is re-encoded only when its raw content, the tokenizer fingerprint,
    config_hash or max_tokens_per_side changed.
    """
    ray = _require_ray()
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
    old_by_raw: dict[str, dict] = {}
    if os.path.exists(manifest_path):
        old = read_json(manifest_path)
        if old.get("metadata") == metadata and old.get("write_rejects", False) == write_rejects:
            old_by_raw = {s["raw_sha256"]: s for s in old.get("shards", [])}

    if os.path.exists(manifest_path):  # unfinished until the new manifest is written
        os.remove(manifest_path)
    encode = ray.remote(num_cpus=1)(_encode_shard)
    shards: list[dict] = [{} for _ in raw_manifest["shards"]]
    pending: dict[int, Any] = {}
    for i, raw in enumerate(raw_manifest["shards"]):
        prev = old_by_raw.get(raw["sha256"])
        if prev is not None and prev["shard"] == i and _outputs_intact(out_dir, list(prev["files"].values())):
            shards[i] = dict(prev, reused=True)
        else:
            raw_path = os.path.join(raw_dir, raw["file"])
            pending[i] = encode.remote(
                raw_path, i, tokenizer_dir, out_dir, max_tokens_per_side, metadata, loader, write_rejects
            )
    for i, r in zip(pending, _get(ray, list(pending.values()), "encode", "shards")):
        shards[i] = dict(r, reused=False, raw_sha256=raw_manifest["shards"][i]["sha256"])
    keep = {f["file"] for s in shards for f in s["files"].values()} | {s.get("rejects_file") for s in shards}
    for sub in (*SPLITS, "rejects"):  # parts of an earlier run with more shards or with rejects
        d = os.path.join(out_dir, sub)
        for name in os.listdir(d) if os.path.isdir(d) else []:
            if name.endswith((".parquet", ".jsonl")) and os.path.join(sub, name) not in keep:
                os.remove(os.path.join(d, name))
    if not write_rejects and os.path.exists(os.path.join(out_dir, "rejects.jsonl")):
        os.remove(os.path.join(out_dir, "rejects.jsonl"))
    rejects_file = None
    if write_rejects:
        rejects_file = "rejects.jsonl"
        with atomic_path(os.path.join(out_dir, rejects_file)) as tmp, open(tmp, "wb") as out:
            for s in shards:
                with open(os.path.join(out_dir, s["rejects_file"]), "rb") as f:
                    shutil.copyfileobj(f, out)
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
    write_json_atomic(manifest_path, manifest)
    return manifest


def token_files(token_dir: str, split: str) -> list[str]:
    """Absolute paths of a split's token shards, from the manifest, e.g. for TokenBatchLoader."""
    manifest = read_json(os.path.join(token_dir, MANIFEST))
    return [os.path.join(token_dir, e["file"]) for e in manifest["splits"][split]]
