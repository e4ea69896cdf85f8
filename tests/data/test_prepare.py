"""The raw and encode steps on a real local Ray, with real Parquet files in tmp_path."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.config import DataConfig
from data.io import DataError
from data.cleaning import REJECT_REASONS, pair_key, splits_of
from data.encode import encode_shards
from data.prepare import prepare_raw_shards
from data.shards import SPLITS, token_files

pytestmark = pytest.mark.usefixtures("ray_local")


def _shards(out_dir) -> list[dict]:
    return json.loads((out_dir / "_manifest.json").read_text())["shards"]


def _rows(out_dir) -> list[tuple[str, str, str]]:
    rows = []
    for s in _shards(out_dir):
        t = pq.read_table(out_dir / s["file"])
        rows += zip(*(t.column(c).to_pylist() for c in ("src", "tgt", "split")))
    return rows


def _write_tsv(path, pairs) -> str:
    with open(path, "wb") as f:
        for s, t in pairs:
            f.write((s.encode() if isinstance(s, str) else s) + b"\t" + (t.encode() if isinstance(t, str) else t) + b"\n")
    return str(path)


def split_of(src: str, tgt: str, valid_fraction: float, test_fraction: float) -> str:
    """The split a (stripped) pair gets, whatever corpus it is in: split_of('one', '一', .02, .02) -> 'train'."""
    key = np.frombuffer(pair_key(src.encode(), tgt.encode()), dtype="<u8").reshape(1, 2)
    return SPLITS[int(splits_of(key, valid_fraction, test_fraction)[0])]


def test_builtin_balances_and_is_deterministic(tmp_path, capsys):
    cfg = DataConfig(builtin_size=600, n_shards=3, valid_fraction=0.1, test_fraction=0.1)
    a = prepare_raw_shards(cfg, str(tmp_path / "a"), seed=5)
    out = capsys.readouterr().out  # progress of both stages, as plain lines (not a terminal)
    assert "prepare: read" in out and "prepare: write: 3/3 shards" in out and "\r" not in out
    b = prepare_raw_shards(cfg, str(tmp_path / "b"), seed=5)
    c = prepare_raw_shards(cfg, str(tmp_path / "c"), seed=6)
    assert {k: v for k, v in a.items() if k != "fingerprint"} == {k: v for k, v in b.items() if k != "fingerprint"}
    assert c["fingerprint"] != a["fingerprint"] == b["fingerprint"]
    assert a["input"] == 600 == a["kept"] + sum(a["rejected"].values()) == a["kept"] + a["rejected_total"]
    assert a["rejected"]["duplicate"] > 0  # small numbers repeat in the generator
    assert set(a["rejected"]) == set(REJECT_REASONS)
    assert sum(a["splits"].values()) == a["kept"] and a["splits"]["valid"] > 0 and a["splits"]["test"] > 0
    assert [s["sha256"] for s in _shards(tmp_path / "a")] == [s["sha256"] for s in _shards(tmp_path / "b")]
    assert [s["sha256"] for s in _shards(tmp_path / "a")] != [s["sha256"] for s in _shards(tmp_path / "c")]
    for name in ("_manifest.json", "data_report.json", "lengths.png"):
        assert (tmp_path / "a" / name).exists()
    assert (tmp_path / "a" / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "a" / "data_report.json").read_text())["kept"] == a["kept"]
    shard = pq.read_table(tmp_path / "a" / "shard-00000.parquet")
    assert shard.schema.names == ["src", "tgt", "split"] and str(shard.schema.field("src").type) == "string"
    assert [p for p in os.listdir(tmp_path / "a") if p.startswith(".")] == [".units"]  # no temporaries left
    rows = _rows(tmp_path / "a")
    assert len(rows) == a["kept"] == len(set((s, t) for s, t, _ in rows))


def test_every_reject_reason_is_counted_and_written(tmp_path):
    pairs = [
        ("hello", "hallo"),
        (b"bad \xff byte", "kaputt"),  # invalid_utf8, line 2
        ("   ", "leer"),  # empty after stripping, line 3
        ("x" * 60, "y" * 60),  # too_long (max_chars 50), line 4
        ("a", "b" * 20),  # ratio 20 > 9, line 5
        ("hello", "hallo"),  # duplicate of line 1, line 6
        ("  good\u00a0", "gut"),  # surrounding Unicode space is stripped, kept
        ("hello", "hallo"),  # another duplicate, line 8
    ]
    path = _write_tsv(tmp_path / "c.tsv", pairs)
    cfg = DataConfig(source="files", paths=[path], max_chars=50, n_shards=2, write_rejects=True)
    r = prepare_raw_shards(cfg, str(tmp_path / "out"), seed=0)
    assert r["input"] == 8 and r["kept"] == 2
    assert r["rejected"] == {"header": 0, "invalid_utf8": 1, "fuzzy": 0, "control_chars": 0, "empty": 1, "too_long": 1,
                             "ratio": 1, "duplicate": 2}
    assert r["input"] == r["kept"] + r["rejected_total"]
    assert sorted((s, t) for s, t, _ in _rows(tmp_path / "out")) == [("good", "gut"), ("hello", "hallo")]
    rejects = [json.loads(line) for line in (tmp_path / "out" / r["rejects_file"]).read_text().splitlines()]
    assert sorted((x["reason"], x["line"]) for x in rejects) == [
        ("duplicate", 6), ("duplicate", 8), ("empty", 3), ("invalid_utf8", 2), ("ratio", 5), ("too_long", 4)
    ]
    assert all(x["file"] == path for x in rejects)
    assert next(x for x in rejects if x["reason"] == "invalid_utf8")["src"] == "bad \\xff byte"


def test_dedup_off_keeps_duplicates(tmp_path):
    path = _write_tsv(tmp_path / "c.tsv", [("a b", "c d")] * 3)
    r = prepare_raw_shards(DataConfig(source="files", paths=[path], dedup=False), str(tmp_path / "o"), seed=0)
    assert r["kept"] == 3 and r["rejected_total"] == 0


def test_split_of_a_pair_is_stable_when_the_corpus_grows(tmp_path):
    first = [(f"sentence {i}", f"Satz {i}") for i in range(400)]
    more = [(f"new sentence {i}", f"neuer Satz {i}") for i in range(300)]
    small = _write_tsv(tmp_path / "small.tsv", first)
    big = _write_tsv(tmp_path / "big.tsv", more[:150] + first + more[150:])
    kw = dict(source="files", valid_fraction=0.1, test_fraction=0.1)
    prepare_raw_shards(DataConfig(paths=[small], n_shards=2, **kw), str(tmp_path / "a"), seed=1)
    prepare_raw_shards(DataConfig(paths=[big], n_shards=3, **kw), str(tmp_path / "b"), seed=2)
    split_a = {(s, t): sp for s, t, sp in _rows(tmp_path / "a")}
    split_b = {(s, t): sp for s, t, sp in _rows(tmp_path / "b")}
    assert len(split_a) == 400 and len(split_b) == 700
    assert all(split_b[k] == v for k, v in split_a.items())
    assert all(split_of(s, t, 0.1, 0.1) == sp for (s, t), sp in split_b.items())  # one function, anywhere
    assert {"train", "valid", "test"} == set(split_a.values())


def test_user_given_validation_files_go_to_valid(tmp_path):
    train = _write_tsv(tmp_path / "train.tsv", [(f"s{i}", f"t{i}") for i in range(50)])
    valid = _write_tsv(tmp_path / "valid.tsv", [(f"v{i}", f"w{i}") for i in range(7)])
    cfg = DataConfig(source="files", paths=[train], valid_paths=[valid], valid_fraction=0.0, test_fraction=0.0)
    r = prepare_raw_shards(cfg, str(tmp_path / "o"), seed=0)
    assert r["splits"] == {"train": 50, "valid": 7, "test": 0}


def test_shards_are_reused_when_inputs_and_settings_are_unchanged(tmp_path):
    path = _write_tsv(tmp_path / "c.tsv", [(f"s{i}", f"t{i}") for i in range(100)])
    cfg = DataConfig(source="files", paths=[path], n_shards=2)
    out = str(tmp_path / "o")
    assert prepare_raw_shards(cfg, out, seed=0)["reused"] is False
    mtimes = [os.stat(os.path.join(out, s["file"])).st_mtime_ns for s in _shards(tmp_path / "o")]
    assert prepare_raw_shards(cfg, out, seed=99)["reused"] is True  # files do not depend on the seed
    assert mtimes == [os.stat(os.path.join(out, s["file"])).st_mtime_ns for s in _shards(tmp_path / "o")]
    assert prepare_raw_shards(DataConfig(source="files", paths=[path], n_shards=2, max_chars=80), out, seed=0)[
        "reused"
    ] is False  # a setting changed
    _write_tsv(tmp_path / "c.tsv", [(f"s{i}", f"t{i}") for i in range(101)])
    r = prepare_raw_shards(DataConfig(source="files", paths=[path], n_shards=2, max_chars=80), out, seed=0)
    assert r["reused"] is False and r["input"] == 101  # the input changed
    os.remove(os.path.join(out, "shard-00001.parquet"))
    assert prepare_raw_shards(DataConfig(source="files", paths=[path], n_shards=2, max_chars=80), out, seed=0)[
        "reused"
    ] is False  # an output went missing


def test_misaligned_moses_files_name_both_files_and_counts(tmp_path):
    (tmp_path / "train.en").write_text("a\nb\nc\n")
    (tmp_path / "train.de").write_text("x\ny\n")
    cfg = DataConfig(source="files", paths=[str(tmp_path / "train")], src_lang="en", tgt_lang="de")
    with pytest.raises(DataError, match=r"train\.en has 3 lines, .*train\.de has 2 lines"):
        prepare_raw_shards(cfg, str(tmp_path / "o"), seed=0)


def test_encode_writes_per_split_token_shards_with_metadata(tmp_path, byte_tokenizer_loader, byte_tokenizer):
    pairs = [(f"number {i}", f"Nummer {i}") for i in range(200)] + [("long " * 10, "lang " * 10)]
    path = _write_tsv(tmp_path / "c.tsv", pairs)
    raw = str(tmp_path / "raw")
    prepare_raw_shards(DataConfig(source="files", paths=[path], n_shards=2, valid_fraction=0.1, test_fraction=0.1),
                       raw, seed=0)
    out = str(tmp_path / "tok")
    m = encode_shards(raw, "unused", out, max_tokens_per_side=20, config_hash="cfg123", tokenizer_loader=byte_tokenizer_loader)
    assert m["rejected"] == {"too_long_tokens": 1} and m["input"] == 201 and m["kept"] == 200
    assert sum(m["rows"].values()) + 1 == 201 and m["rows"]["valid"] > 0 and m["rows"]["test"] > 0
    assert sorted(m["splits"]) == ["test", "train", "valid"] and len(m["splits"]["train"]) == 2
    assert m["splits"]["train"][0]["file"] == os.path.join("train", "part-00000.parquet")
    t = pq.read_table(token_files(out, "train")[0])
    meta = t.schema.metadata
    assert meta[b"tpipe.tokenizer_fingerprint"] == b"test-bytes+3" and meta[b"tpipe.config_hash"] == b"cfg123"
    assert t.schema.names == ["src_ids", "tgt_ids", "src_len", "tgt_len"]
    assert [t.schema.field(c).type.value_type for c in ("src_ids", "tgt_ids")] == [pa.int32(), pa.int32()]
    assert [t.schema.field(c).type for c in ("src_len", "tgt_len")] == [pa.int32(), pa.int32()]
    import pyarrow.dataset as ds

    # the folder opens as one Parquet dataset (the manifest's leading "_" keeps pyarrow off it), splits as partitions
    assert ds.dataset(out).count_rows() == m["kept"] and ds.dataset(os.path.join(out, "train")).count_rows() == m["rows"]["train"]
    row = t.slice(0, 1).to_pylist()[0]
    src_text = bytes(i - 3 for i in row["src_ids"]).decode()
    assert src_text.startswith("number ") and row["src_len"] == len(row["src_ids"])  # no bos/eos in shards
    assert row["tgt_ids"] == byte_tokenizer.encode_batch(["Nummer " + src_text.split()[1]])[0]

    again = encode_shards(raw, "unused", out, max_tokens_per_side=20, config_hash="cfg123",
                          tokenizer_loader=byte_tokenizer_loader)
    assert again["reused"] == 2 and again["splits"] == m["splits"]
    changed = encode_shards(raw, "unused", out, max_tokens_per_side=20, config_hash="other",
                            tokenizer_loader=byte_tokenizer_loader, write_rejects=True)
    assert changed["reused"] == 0 and changed["rejects_file"] == "rejects.jsonl"
    (rej,) = [json.loads(x) for x in open(os.path.join(out, "rejects.jsonl"), encoding="utf-8")]
    assert rej["reason"] == "too_long_tokens" and rej["src"] == ("long " * 10).strip() and rej["src_tokens"] == 49
    assert encode_shards(raw, "unused", out, max_tokens_per_side=20, config_hash="other",
                         tokenizer_loader=byte_tokenizer_loader, write_rejects=True)["reused"] == 2


def test_loader_reads_what_encode_wrote(tmp_path, byte_tokenizer_loader, byte_tokenizer):
    from data.loader import TokenBatchLoader

    pairs = [(f"sentence {i}", f"Satz {i}") for i in range(300)]
    raw, out = str(tmp_path / "raw"), str(tmp_path / "tok")
    prepare_raw_shards(DataConfig(source="files", paths=[_write_tsv(tmp_path / "c.tsv", pairs)], n_shards=2), raw, seed=0)
    encode_shards(raw, "", out, max_tokens_per_side=50, config_hash="h", tokenizer_loader=byte_tokenizer_loader)
    tok = byte_tokenizer
    loader = TokenBatchLoader(token_files(out, "train"), max_tokens=256, pad_id=tok.pad_id, bos_id=tok.bos_id,
                              eos_id=tok.eos_id, seed=0)
    got = set()
    for batch in loader:
        for src, tgt in zip(batch["src"].tolist(), batch["tgt"].tolist()):
            assert tgt[0] == tok.bos_id
            got.add((tok.decode(src), tok.decode(tgt)))
    want = {(s, t) for s, t, sp in _rows(tmp_path / "raw") if sp == "train"}
    assert got == want and len(got) > 250


def test_gettext_catalogs_through_the_raw_step(tmp_path):
    from data.gettext import parse_po, write_mo

    po = tmp_path / "de.po"
    po.write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Open"\nmsgstr "Öffnen"\n\n#, fuzzy\nmsgid "Close"\nmsgstr "Zu"\n\n'
        'msgid "Quit"\nmsgstr ""\n\nmsgid "%d file"\nmsgid_plural "%d files"\nmsgstr[0] "%d Datei"\n'
        'msgstr[1] "%d Dateien"\n',
        encoding="utf-8",
    )
    (tmp_path / "de.mo").write_bytes(write_mo(list(parse_po(po.read_bytes(), str(po)))))
    r = prepare_raw_shards(DataConfig(source="files", paths=[str(tmp_path / "de.*")]), str(tmp_path / "o"), seed=0)
    # .mo first (sorted glob): 3 pairs kept; the .po repeats them (duplicates), plus a fuzzy and an untranslated
    assert r["input"] == 3 + 5 and r["kept"] == 3
    assert r["rejected"]["fuzzy"] == 1 and r["rejected"]["empty"] == 1 and r["rejected"]["duplicate"] == 3


def test_adding_a_file_reads_only_the_new_file(tmp_path):
    a = _write_tsv(tmp_path / "a.tsv", [(f"a{i}", f"x{i}") for i in range(80)] + [("dup", "dup")])
    b = _write_tsv(tmp_path / "b.tsv", [(f"b{i}", f"y{i}") for i in range(60)] + [("dup", "dup")])
    kw = dict(source="files", n_shards=2, write_rejects=True)
    first = prepare_raw_shards(DataConfig(paths=[a], **kw), str(tmp_path / "o"), seed=0)
    assert first["units_reused"] == 0
    grown = prepare_raw_shards(DataConfig(paths=[b, a], **kw), str(tmp_path / "o"), seed=0)
    fresh = prepare_raw_shards(DataConfig(paths=[b, a], **kw), str(tmp_path / "fresh"), seed=0)
    assert grown["units_reused"] == 1 and fresh["units_reused"] == 0
    assert [s["sha256"] for s in _shards(tmp_path / "o")] == [s["sha256"] for s in _shards(tmp_path / "fresh")]
    assert grown["rejected"]["duplicate"] == 1
    (dup,) = [json.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert dup["file"] == a and dup["line"] == 81  # b comes first now, so a's copy is the duplicate
    assert len(os.listdir(tmp_path / "o" / ".units")) == 2
    prepare_raw_shards(DataConfig(paths=[b], **kw), str(tmp_path / "o"), seed=0)
    assert len(os.listdir(tmp_path / "o" / ".units")) == 1  # a's unit is gone with a


def test_encode_with_the_real_tokenizer(tmp_path):
    """The default tokenizer_loader: data.tokenizer.load_tokenizer inside each Ray task."""
    from data.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer

    raw, tok_dir, out = str(tmp_path / "raw"), tmp_path / "tok", str(tmp_path / "enc")
    prepare_raw_shards(DataConfig(builtin_size=300, n_shards=2), raw, seed=3)
    shards = [os.path.join(raw, s["file"]) for s in _shards(tmp_path / "raw")]
    train_tokenizer(TokenizerConfig(vocab_size=300, num_workers=1), shards).save(tok_dir)
    tok = load_tokenizer(tok_dir)
    m = encode_shards(raw, str(tok_dir), out, max_tokens_per_side=126, config_hash="h")
    assert m["metadata"]["tokenizer_fingerprint"] == tok.fingerprint
    t = pq.read_table(token_files(out, "train")[0])
    assert t.schema.metadata[b"tpipe.tokenizer_fingerprint"] == tok.fingerprint.encode()
    raw_train = {s for s, _, sp in _rows(tmp_path / "raw") if sp == "train"}
    decoded = {tok.decode(ids) for ids in t.column("src_ids").to_pylist()}
    assert decoded <= raw_train and decoded


def test_a_lone_surrogate_in_json_is_an_invalid_utf8_reject(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"en": "bad \\ud800", "zh": "x"}\n{"en": "good", "zh": "gut"}\n')
    cfg = DataConfig(source="files", paths=[str(tmp_path / "c.jsonl")], write_rejects=True)
    r = prepare_raw_shards(cfg, str(tmp_path / "o"), seed=0)
    assert r["kept"] == 1 and r["rejected"]["invalid_utf8"] == 1
    (rej,) = [json.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rej["src"] == "bad \\ud800" and rej["line"] == 1


def test_a_huge_line_keeps_the_length_histogram_small(tmp_path):
    """With data.max_chars raised, one 1 MB line used to make the histogram (and the plot, and the
    task results) a bin per character: minutes for a 10 MB line. Lengths over HIST_CHARS share the
    last bin; the report's max stays exact. Plain functions, no Ray needed."""
    from dataclasses import asdict

    from data.dedup import write_shard as _write_shard
    from data.ingest import ingest_unit as _ingest_unit
    from data.report import HIST_CHARS
    from data.report import percentiles as _percentiles
    from data.units import plan_units

    path = _write_tsv(tmp_path / "c.tsv", [("hello", "hallo"), ("w " * 500_000, "x " * 500_000)])
    cfg = DataConfig(source="files", paths=[path], max_chars=10_000_000, n_shards=1, valid_fraction=0, test_fraction=0)
    (unit,) = plan_units(cfg, seed=0)
    _ingest_unit(unit.to_dict(), asdict(cfg), str(tmp_path / "u0"), False)
    shard = _write_shard(0, [str(tmp_path / "u0")], ["c.tsv"], asdict(cfg), str(tmp_path), str(tmp_path / "s.parquet"),
                         False)
    assert shard["rows"] == 2
    assert len(shard["hist"]["src"]) == HIST_CHARS + 1 and shard["longest"]["src"] == 999_999
    assert _percentiles(np.array(shard["hist"]["src"]))["p50"] == 5


def test_split_by_keeps_each_group_in_one_split_for_tsv_jsonl_and_parquet(tmp_path):
    from data.cleaning import split_of_value

    groups = [f"pkg{g}" for g in range(30)]
    records = [(g, f"{g} message {i}", f"{g} Meldung {i}") for g in groups for i in range(6)]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("".join(f"{g}\t{s}\t{t}\n" for g, s, t in records), encoding="utf-8")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"meta": {"pkg": g}, "en": s, "de": t}) + "\n" for g, s, t in records))
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"pkg": [g for g, _, _ in records], "en": [s for _, s, _ in records],
                             "de": [t for _, _, t in records]}), parquet)
    group_of = {s: g for g, s, _ in records}
    for path, by in ((tsv, "0"), (jsonl, "meta.pkg"), (parquet, "pkg")):
        cfg = DataConfig(source="files", paths=[str(path)], src_lang="en", tgt_lang="de", split_by=by,
                         valid_fraction=0.2, test_fraction=0.2, n_shards=2)
        out = tmp_path / f"out-{path.suffix[1:]}"
        r = prepare_raw_shards(cfg, str(out), seed=3)
        rows = _rows(out)
        assert len(rows) == len(records) and r["kept"] == len(records)
        split_of_group: dict[str, set] = {}
        for s, _, sp in rows:
            split_of_group.setdefault(group_of[s], set()).add(sp)
        assert all(sps == {split_of_value(g, 3, 0.2, 0.2)} for g, sps in split_of_group.items()), path
        assert {"train", "valid", "test"} == {sp for sps in split_of_group.values() for sp in sps}
    with pytest.raises(DataError, match=r"data.split_by='pkg': a TSV file .*c.tsv\) needs a field index"):
        prepare_raw_shards(DataConfig(source="files", paths=[str(tsv)], split_by="pkg"), str(tmp_path / "bad"), seed=0)
