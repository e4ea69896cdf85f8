"""The prepare step as Ray tasks: raw corpus -> cleaned, split raw Parquet shards.

prepare_raw_shards is a two-stage shuffle so that exact-duplicate removal is global yet parallel:

    stage 1 (data/ingest.py), one task per input unit (file, byte range, Moses pair): read, clean,
             hash each pair, route it by hash to one of n_shards partial Arrow files
    stage 2 (data/dedup.py), one task per shard: concatenate its partials in input order, drop
             repeated pairs (a pair and its duplicates hash to the same shard), write shard-0000i.parquet

A pair's hash also assigns its split (data/cleaning.py). Every input record is kept or counted under
exactly one reject reason; `data_report.json` (data/report.py) states input = kept + rejected. Files
are written atomically, the manifest (`_manifest.json`) last, and earlier output whose inputs and
settings match is reused. The encode step that follows is data/encode.py.

With a remote Exchange (data/exchange.py; a remote artifact root) no task opens this machine's
folders: stage-1 tasks publish their unit folders to the stage, stage-2 tasks download the partials
of their shard from it and publish the shard, which the driver collects into out_dir. A unit read
from a local file (the user's data.paths) runs on the driver's node, the one node known to have that
file; units on object storage and the builtin corpus run on any node.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict

from data.config import DataConfig
from data.dedup import write_shard, write_shard_published
from data.exchange import Exchange, collect, join_uri
from data.ingest import ingest_unit, ingest_unit_published
from data.io import MANIFEST, file_identity, is_remote, read_json, write_json_atomic
from data.report import LENGTHS_PNG, check_not_empty, data_report
from data.shards import FORMAT_VERSION, RAW_SCHEMA, outputs_intact
from data.tasks import concat_files, gather, require_ray
from data.units import Unit, plan_units


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


def _reuse(out_dir: str, fingerprint: str) -> dict | None:
    """The earlier report, marked reused, when out_dir holds a finished run with this fingerprint."""
    manifest_path = os.path.join(out_dir, MANIFEST)
    report_path = os.path.join(out_dir, "data_report.json")
    if os.path.exists(manifest_path) and os.path.exists(report_path):
        old = read_json(manifest_path)
        if old.get("fingerprint") == fingerprint and outputs_intact(out_dir, old["shards"]):
            report = read_json(report_path)
            report["reused"] = True
            return report
    return None


def _run_stages(ray, cfg: DataConfig, units: list[Unit], unit_dirs: list[str], out_dir: str, seed: int,
                exchange: Exchange):
    """Stage 1 for the units without a finished unit dir, then stage 2 for every shard.

    Returns (stage-1 counts per unit, stage-2 results per shard, units read now, rejects file or None).
    """
    cfg_d = asdict(cfg)
    work_dir = os.path.join(out_dir, f".work-{uuid.uuid4().hex[:12]}")
    os.makedirs(work_dir)
    try:
        ingest = exchange.task(ray, ingest_unit)
        pending = {
            i: ingest.remote(u.to_dict(), cfg_d, unit_dirs[i], cfg.write_rejects, seed)
            for i, u in enumerate(units)
            if not os.path.exists(os.path.join(unit_dirs[i], "counts.json"))
        }
        done = dict(zip(pending, gather(ray, list(pending.values()), "prepare: read", "input pieces")))
        stage1 = [done[i] if i in done else read_json(os.path.join(unit_dirs[i], "counts.json")) for i in range(len(units))]
        unit_where = [u.where() for u in units]
        write = exchange.task(ray, write_shard)
        shard_paths = [os.path.join(out_dir, f"shard-{i:05d}.parquet") for i in range(cfg.n_shards)]
        stage2 = gather(
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
            concat_files(parts, os.path.join(out_dir, rejects_file), missing_ok=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return stage1, stage2, len(pending), rejects_file


def _reads_local_file(unit: Unit) -> bool:
    return any(p and not is_remote(p) for p in (unit.path, unit.path2))


def _run_stages_published(ray, cfg: DataConfig, units: list[Unit], out_dir: str, seed: int, exchange: Exchange):
    """_run_stages for tasks on nodes without this machine's disk: they pass their files through the
    exchange's stage (see the module's docstring); only the shards and rejects come to out_dir. Every
    unit is read (its stage-1 output lives in the stage, for this call only)."""
    cfg_d = asdict(cfg)
    work_dir = os.path.join(out_dir, f".work-{uuid.uuid4().hex[:12]}")  # the rejects' parts, on this machine
    os.makedirs(work_dir)
    try:
        anywhere, here = exchange.task(ray, ingest_unit_published), exchange.task(ray, ingest_unit_published, on_driver=True)
        refs = [(here if _reads_local_file(u) else anywhere).remote(u.to_dict(), cfg_d, exchange.part("units"),
                                                                    cfg.write_rejects, seed) for u in units]
        stage1 = gather(ray, refs, "prepare: read", "input pieces")
        unit_at = [r.pop("at") for r in stage1]
        write = exchange.task(ray, write_shard_published)
        stage2 = gather(
            ray,
            [
                write.remote(i, [join_uri(at, f"s{i:05d}.arrow") if r["shard_rows"][i] else "" for at, r in zip(unit_at, stage1)],
                             [u.where() for u in units], cfg_d, exchange.part("shards"), cfg.write_rejects)
                for i in range(cfg.n_shards)
            ],
            "prepare: write",
            "shards",
        )
        parts = []
        for r in stage2:
            wanted = {r["file"]: os.path.join(out_dir, r["file"])}
            if cfg.write_rejects and r["duplicates"]:
                parts.append(os.path.join(work_dir, f"rejects-s{r['shard']:05d}.jsonl"))
                wanted[os.path.basename(parts[-1])] = parts[-1]
            collect(r.pop("at"), wanted)
        rejects_file = None
        if cfg.write_rejects:
            rejects_file = "rejects.jsonl"
            units_rejects = [os.path.join(work_dir, f"rejects-u{k:05d}.jsonl") for k in range(len(units))]
            for at, dest in zip(unit_at, units_rejects):
                collect(at, {"rejects.jsonl": dest})
            concat_files(units_rejects + parts, os.path.join(out_dir, rejects_file))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        exchange.remove_stage()
    return stage1, stage2, len(units), rejects_file


def prepare_raw_shards(cfg: DataConfig, out_dir: str, *, seed: int, exchange: Exchange | None = None) -> dict:
    """Read, clean, split and shard the corpus with Ray tasks; returns the data report (also in
    out_dir/data_report.json). Reuses out_dir's shards when the inputs and settings are unchanged.
    `exchange` says where the tasks run and how they pass files (data/exchange.py); by default they
    read and write out_dir."""
    ray = require_ray()
    exchange = exchange or Exchange()
    os.makedirs(out_dir, exist_ok=True)
    units = plan_units(cfg, seed)
    fingerprint = _raw_fingerprint(cfg, seed, units)
    reused = _reuse(out_dir, fingerprint)
    if reused is not None:
        return reused
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):  # from here on the directory is unfinished until the new one
        os.remove(manifest_path)
    if exchange.remote:
        stage1, stage2, n_read, rejects_file = _run_stages_published(ray, cfg, units, out_dir, seed, exchange)
    else:
        # Stage-1 output is kept per unit under .units/<key>: a re-run after adding a file reads only
        # the new file; stage 2 (cheap: Arrow in, Parquet out) always runs, since dedup is global.
        units_dir = os.path.join(out_dir, ".units")
        os.makedirs(units_dir, exist_ok=True)
        unit_dirs = [os.path.join(units_dir, _unit_key(u, cfg, seed)) for u in units]
        stage1, stage2, n_read, rejects_file = _run_stages(ray, cfg, units, unit_dirs, out_dir, seed, exchange)
        for name in set(os.listdir(units_dir)) - {os.path.basename(d) for d in unit_dirs}:
            shutil.rmtree(os.path.join(units_dir, name), ignore_errors=True)  # units of inputs no longer used

    report = data_report(stage1, stage2, out_dir, cfg.max_chars) | {
        "sources": sorted({u.where() for u in units}),
        "units": len(units),
        "histogram_png": LENGTHS_PNG,
        "rejects_file": rejects_file,
        "fingerprint": fingerprint,
        "reused": False,
        "units_reused": len(units) - n_read,
    }
    if report["input"] != report["kept"] + report["rejected_total"]:  # the account must balance
        raise AssertionError(f"record account does not balance: {report}")
    check_not_empty(report)
    manifest = {
        "version": FORMAT_VERSION,
        "kind": "raw",
        "fingerprint": fingerprint,
        "columns": RAW_SCHEMA.names,
        "shards": [{k: s[k] for k in ("file", "rows", "splits", "sha256")} for s in stage2],
        "splits": report["splits"],
    }
    for name in os.listdir(out_dir):  # shards of an earlier run with more shards
        if name.startswith("shard-") and name.endswith(".parquet") and name not in {s["file"] for s in stage2}:
            os.remove(os.path.join(out_dir, name))
    write_json_atomic(os.path.join(out_dir, "data_report.json"), report)
    write_json_atomic(manifest_path, manifest)  # last: its presence means the step finished
    return report
