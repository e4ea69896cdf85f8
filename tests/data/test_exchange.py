"""The data steps' tasks passing files through a store instead of the driver's folders (data/exchange.py).

The store here is a `file://` folder, which pyarrow opens like a bucket: the same code path as S3
(moto S3 and nodes without the driver's disk: tests/pipeline/test_private_disks.py, heavy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data.config import DataConfig
from data.encode import encode_shards
from data.exchange import Exchange, join_uri
from data.prepare import prepare_raw_shards
from data.tokenizer import TokenizerConfig, train_tokenizer

pytestmark = pytest.mark.usefixtures("ray_local")


def _manifest(d: Path) -> dict:
    return json.loads((d / "_manifest.json").read_text())


def _spoil(folder: Path) -> None:
    """Zero the Parquet files of a driver folder, same size: a task that opened them would fail."""
    for p in folder.rglob("*.parquet"):
        p.write_bytes(bytes(p.stat().st_size))


def test_tasks_through_a_store_write_what_they_write_locally(tmp_path):
    pairs = [(f"line {i} of the corpus", f"Zeile {i} des Korpus") for i in range(400)]
    long = " ".join(f"w{i}" for i in range(80))
    pairs += pairs[:40] + [(long, long)]  # duplicates (prepare's rejects) and a pair too long to encode
    corpus = tmp_path / "c.tsv"
    corpus.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    cfg = DataConfig(source="files", paths=[str(corpus)], n_shards=2, valid_fraction=0.1, test_fraction=0.1,
                     write_rejects=True)
    tok_cfg = TokenizerConfig(vocab_size=300, num_workers=2)

    def encode(raw: Path, tok: Path, out: Path, exchange: Exchange | None = None) -> dict:
        return encode_shards(str(raw), str(tok), str(out), max_tokens_per_side=40, config_hash="h",
                             write_rejects=True, exchange=exchange)

    local = tmp_path / "local"
    prepare_raw_shards(cfg, str(local / "prepare"), seed=1)
    tok = train_tokenizer(tok_cfg, [str(local / "prepare" / s["file"]) for s in _manifest(local / "prepare")["shards"]])
    tok.save(local / "tok")
    encode(local / "prepare", local / "tok", local / "encode")

    store, drv = tmp_path / "store", tmp_path / "driver"
    uri = f"file://{store}"
    report = prepare_raw_shards(cfg, str(drv / "prepare"), seed=1, exchange=Exchange(stage=join_uri(uri, "prepare-stage")))
    assert report["reused"] is False and not (store / "prepare-stage").exists()  # the stage is removed
    assert not (drv / "prepare" / ".units").exists()  # stage-1 output stayed in the stage
    for name in ("data_report.json", "rejects.jsonl"):
        assert (drv / "prepare" / name).read_bytes() == (local / "prepare" / name).read_bytes(), name
    assert _manifest(drv / "prepare") == _manifest(local / "prepare")

    # What the workflow does between steps: the output goes up to the store, the driver keeps its copy.
    shutil.copytree(drv / "prepare", store / "prepare")
    _spoil(drv / "prepare")
    inputs = ((str(drv / "prepare"), join_uri(uri, "prepare")), (str(drv / "tok"), join_uri(uri, "tok")))
    shards = [str(drv / "prepare" / s["file"]) for s in _manifest(drv / "prepare")["shards"]]
    ours = train_tokenizer(tok_cfg, shards, exchange=Exchange(stage=join_uri(uri, "tok-stage"), inputs=inputs))
    assert ours.fingerprint == tok.fingerprint and ours.train_stats["files"] == sorted(shards)
    ours.save(drv / "tok")
    shutil.copytree(drv / "tok", store / "tok")

    m = encode(drv / "prepare", drv / "tok", drv / "encode", Exchange(stage=join_uri(uri, "enc-stage"), inputs=inputs))
    want = _manifest(local / "encode")
    assert m["rejected"] == want["rejected"] == {"too_long_tokens": 1}
    assert m["splits"] == want["splits"]  # files, rows and sha256 of every token shard
    assert (drv / "encode" / "rejects.jsonl").read_bytes() == (local / "encode" / "rejects.jsonl").read_bytes()
    assert sorted(p.name for p in store.iterdir()) == ["prepare", "tok"]
