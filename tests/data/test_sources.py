"""Every input format read into the same records, compression, globs, URIs, and errors naming file and line."""

from __future__ import annotations

import gzip
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data.config import DataConfig
from data.gettext import Entry, write_mo
from data.io import DataError, expand_paths
from data.cleaning import REJECT_REASONS, clean_batch
from data.sources import read_batches
from data.units import Unit, line_chunks, plan_units

# Nasty but valid pairs: CJK, emoji, combining marks, quotes and backslashes, an inner tab for JSON.
PAIRS = [
    ("Hello, world!", "Hallo, Welt!"),
    ("two thousand and forty-five", "二千零四十五"),
    ("smile 😀 please", "bitte 😀 lächeln"),
    ('say "hi" \\ bye', 'sag „hi" \\ tschüss'),
    ("cafe\u0301", "Café"),
]


def read_unit(unit: Unit, cfg: DataConfig):
    """Every record (line, src, tgt, known reason) of one unit, in file order, one at a time."""
    for lines, srcs, tgts, known in read_batches(unit, cfg):
        for i, (n, s, t) in enumerate(zip(lines.tolist(), srcs, tgts)):
            yield n, s, t, None if known is None else known[i]


def clean_pair(src: bytes | str, tgt: bytes | str, cfg: DataConfig) -> str | None:
    """The reject reason of one pair, or None if it is kept: clean_pair('a', 'b' * 10, cfg) -> 'ratio'."""
    codes, _, _ = clean_batch([src], [tgt], cfg)
    return REJECT_REASONS[codes[0] - 1] if codes[0] else None


def records(cfg: DataConfig) -> list[tuple[str, str]]:
    """Decoded (src, tgt) of every record, reading every unit in order (no Ray)."""
    out = []
    for unit in plan_units(cfg, seed=0):
        recs = list(read_unit(unit, cfg))
        if not recs:
            continue
        _, srcs, tgts, known = zip(*recs)
        codes, s, t = clean_batch(list(srcs), list(tgts), cfg, list(known))
        assert not codes.any(), [REJECT_REASONS[c - 1] for c in codes if c]
        out += zip(s.to_pylist(), t.to_pylist())
    return out


def compress(path, data: bytes) -> str:
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif str(path).endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
def test_line_formats_give_the_same_pairs(tmp_path, suffix):
    tsv = "".join(f"pkg\t{s}\t{t}\n" for s, t in PAIRS).encode()
    jsonl = "".join(json.dumps({"en": s, "de": t, "other": 1}, ensure_ascii=False) + "\n" for s, t in PAIRS).encode()
    compress(tmp_path / f"c.en{suffix}", "".join(s + "\n" for s, _ in PAIRS).encode())
    compress(tmp_path / f"c.de{suffix}", "".join(t + "\n" for _, t in PAIRS).encode())
    kw = dict(source="files", src_lang="en", tgt_lang="de")
    assert records(DataConfig(paths=[compress(tmp_path / f"c.tsv{suffix}", tsv)], **kw)) == PAIRS
    assert records(DataConfig(paths=[compress(tmp_path / f"c.jsonl{suffix}", jsonl)], **kw)) == PAIRS
    assert records(DataConfig(paths=[str(tmp_path / "c")], format="moses", **kw)) == PAIRS  # a prefix
    assert records(DataConfig(paths=[str(tmp_path / f"c.de{suffix}")], **kw)) == PAIRS  # either side, auto
    text = compress(tmp_path / f"m.txt{suffix}", "".join(s + "\n" for s, _ in PAIRS).encode())
    assert records(DataConfig(paths=[text], **kw)) == [(s, s) for s, _ in PAIRS]


def test_nested_jsonl_keys(tmp_path):
    lines = [json.dumps({"id": i, "translation": {"en": s, "de": t}}, ensure_ascii=False) for i, (s, t) in enumerate(PAIRS)]
    (tmp_path / "hf.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = DataConfig(source="files", paths=[str(tmp_path / "hf.jsonl")], src_key="translation.en", tgt_key="translation.de")
    assert records(cfg) == PAIRS
    with pytest.raises(DataError, match=r"hf\.jsonl line 1: no key 'translation.fr'"):
        records(DataConfig(source="files", paths=[str(tmp_path / "hf.jsonl")], src_key="translation.fr"))


def test_parquet_and_custom_keys_and_columns(tmp_path):
    t = pa.table({"source": [s for s, _ in PAIRS], "target": [t for _, t in PAIRS]})
    pq.write_table(t, tmp_path / "c.parquet")
    cfg = DataConfig(source="files", paths=[str(tmp_path / "c.parquet")], src_key="source", tgt_key="target")
    assert records(cfg) == PAIRS
    (tmp_path / "r.tsv").write_text("".join(f"{t}\t{s}\n" for s, t in PAIRS))
    assert records(DataConfig(source="files", paths=[str(tmp_path / "r.tsv")], tsv_columns=[1, 0])) == PAIRS


def test_gettext_po_and_the_mo_compiled_from_it(tmp_path):
    po = tmp_path / "de.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
        '"Plural-Forms: nplurals=2; plural=(n != 1);\\n"\n\n'
        'msgid "Open"\nmsgstr "Öffnen"\n\n'
        'msgctxt "verb"\nmsgid "Save"\nmsgstr "Speichern"\n\n'
        'msgctxt "noun"\nmsgid "Save"\nmsgstr "Sicherung"\n\n'
        'msgid "%d file"\nmsgid_plural "%d files"\nmsgstr[0] "%d Datei"\nmsgstr[1] "%d Dateien"\n',
        encoding="utf-8",
    )
    want = [("Open", "Öffnen"), ("Save", "Speichern"), ("Save", "Sicherung"), ("%d file", "%d Datei"),
            ("%d files", "%d Dateien")]
    assert records(DataConfig(source="files", paths=[str(po)])) == want
    from data.gettext import parse_po

    (tmp_path / "de.mo").write_bytes(write_mo(list(parse_po(po.read_bytes(), str(po)))))
    assert sorted(records(DataConfig(source="files", paths=[str(tmp_path / "de.mo")]))) == sorted(want)


def test_globs_uris_and_order(tmp_path):
    for name in ("b.tsv", "a.tsv", "c.txt"):
        (tmp_path / name).write_text(f"{name}\tx\n")
    assert expand_paths([str(tmp_path / "*.tsv")]) == [str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")]
    assert expand_paths([str(tmp_path / "b.tsv"), str(tmp_path / "*.tsv")]) == [
        str(tmp_path / "b.tsv"), str(tmp_path / "a.tsv")]
    assert records(DataConfig(source="files", paths=[f"file://{tmp_path}/a.tsv"])) == [("a.tsv", "x")]
    with pytest.raises(DataError, match="matches no file"):
        expand_paths([str(tmp_path / "*.jsonl")])


def test_fsspec_uri(tmp_path):
    import fsspec

    with fsspec.open("memory://corpus/c.tsv", "wb") as f:
        f.write("a\tb\nc\td\n".encode())
    assert records(DataConfig(source="files", paths=["memory://corpus/*.tsv"])) == [("a", "b"), ("c", "d")]


def test_chunked_reading_equals_whole_file_reading(tmp_path):
    lines = [f"line {i}\tZeile {i}" + ("!" * (i % 7)) for i in range(500)]
    path = tmp_path / "big.tsv"
    path.write_text("\n".join(lines))  # no newline at the end, on purpose
    cfg = DataConfig(source="files", paths=[str(path)])
    whole = [(n, s, t) for n, s, t, _ in read_unit(Unit(0, "tsv", str(path)), cfg)]
    chunks = line_chunks(str(path), 1000)
    assert len(chunks) > 5 and chunks[0][2] == 1
    pieces = [(n, s, t) for i, (a, b, first) in enumerate(chunks)
              for n, s, t, _ in read_unit(Unit(i, "tsv", str(path), start=a, end=b, first_line=first), cfg)]
    assert pieces == whole and [n for n, _, _ in whole] == list(range(1, 501))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("c.tsv", b"a\tb\nc\td\te\n", r"c\.tsv line 2: 3 tab-separated fields, but line 1 has 2"),
        ("c.tsv", b"just one field\n", r"c\.tsv line 1: 1 tab-separated fields; data.tsv_columns=\[-2, -1\] needs"),
        ("c.jsonl", b'{"en": "a", "zh": "b"}\n{"en": "a", \n', r"c\.jsonl line 2: not valid JSON"),
        ("c.jsonl", b'{"en": "a"}\n', r"c\.jsonl line 1: no key 'zh'"),
        ("c.jsonl", b'{"en": "a", "zh": 3}\n', r"c\.jsonl line 1: 'zh' is int, expected a string"),
        ("c.po", b'msgid "a"\nmsgstr "b\n', r"c\.po line 2: expected a quoted string"),
        ("c.mo", b"not a catalog at all, just text", r"c\.mo: not a \.mo file"),
        ("c.xyz", b"a\tb\n", r"cannot tell the format of .*c\.xyz"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        records(DataConfig(source="files", paths=[str(tmp_path / name)]))


def test_misaligned_moses_error_names_both_files_and_counts(tmp_path):
    (tmp_path / "t.en").write_text("a\nb\n")
    (tmp_path / "t.zh").write_text("x\ny\nz\nw\n")
    with pytest.raises(DataError, match=r"t\.en has 2 lines, .*t\.zh has 4 lines"):
        records(DataConfig(source="files", paths=[str(tmp_path / "t.en")]))
    (tmp_path / "u.en").write_text("a\n")
    with pytest.raises(DataError, match=r"u\.en has no partner .*u\.zh"):
        records(DataConfig(source="files", paths=[str(tmp_path / "u.en")]))


@pytest.mark.parametrize(
    "src, tgt, reason",
    [
        (b"\xff\xfe", b"ok", "invalid_utf8"),
        (b"ok", b"\xc3", "invalid_utf8"),  # a truncated 2-byte sequence
        (b"", b"x", "empty"),
        ("x", " \t\u3000", "empty"),  # ideographic space only
        ("x" * 1001, "y", "too_long"),
        ("a", "b" * 10, "ratio"),
        ("\ud800 lone surrogate", "ok", "invalid_utf8"),  # what JSON's "\\ud800" escape decodes to
        ("一", "one", None),  # 3 bytes vs 3 bytes: the ratio counts bytes, not characters
        ("\U0001f600" * 5, "smile " * 3, None),
    ],
)
def test_clean_reasons(src, tgt, reason):
    assert clean_pair(src, tgt, DataConfig()) == reason


def test_gettext_fuzzy_and_untranslated_entries_are_counted(tmp_path):
    (tmp_path / "x.po").write_text(
        'msgid "a"\nmsgstr "b"\n\n#, fuzzy, c-format\nmsgid "c"\nmsgstr "d"\n\nmsgid "e"\nmsgstr ""\n'
    )
    cfg = DataConfig(source="files", paths=[str(tmp_path / "x.po")])
    (unit,) = plan_units(cfg, seed=0)
    recs = [(s, t, r) for _, s, t, r in read_unit(unit, cfg)]
    assert recs == [("a", "b", None), ("c", "d", "fuzzy"), ("e", "", None)]
    assert clean_pair("e", "", cfg) == "empty"
    codes, _, _ = clean_batch(["a", "c", "e"], ["b", "d", ""], cfg, [None, "fuzzy", None])
    assert [REJECT_REASONS[c - 1] if c else None for c in codes] == [None, "fuzzy", "empty"]
    entries = [Entry("a", ["b"]), Entry("c", ["d"], fuzzy=True)]
    assert len(write_mo(entries)) < len(write_mo([Entry("a", ["b"]), Entry("c", ["d"])]))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 but tab, LF, CR; and DEL


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=40), st.text(max_size=40)), min_size=1, max_size=20))
# (st.text has no lone surrogates; test_clean_reasons covers them)
def test_any_text_through_jsonl_is_kept_stripped_or_rejected_for_its_reason(tmp_path_factory, pairs):
    path = tmp_path_factory.mktemp("j") / "c.jsonl"
    path.write_text("".join(json.dumps({"en": s, "zh": t}) + "\n" for s, t in pairs), encoding="utf-8")
    cfg = DataConfig(source="files", paths=[str(path)], max_chars=30)
    (unit,) = plan_units(cfg, seed=0)
    lines, srcs, tgts, known = next(iter(read_batches(unit, cfg)))
    assert lines.tolist() == list(range(1, len(pairs) + 1))
    codes, s_arr, t_arr = clean_batch(srcs, tgts, cfg, known)
    for (s, t), code, s2, t2 in zip(pairs, codes.tolist(), s_arr.to_pylist(), t_arr.to_pylist()):
        ss, ts = s.strip(), t.strip()
        lb, lt = len(ss.encode()), len(ts.encode())
        if CONTROL.search(ss) or CONTROL.search(ts):
            want = "control_chars"
        elif not ss or not ts:
            want = "empty"
        elif len(ss) > 30 or len(ts) > 30:
            want = "too_long"
        elif max(lb, lt) > 9 * min(lb, lt):
            want = "ratio"
        else:
            want = None
        assert (REJECT_REASONS[code - 1] if code else None) == want, (s, t)
        if want is None:
            assert (s2, t2) == (ss, ts)


@pytest.mark.parametrize(
    "first_line,setting,header",
    [
        ("en\tde", "auto", True),
        ("source\ttarget", "auto", True),
        ("pkg\tsrc\ttgt", "auto", True),  # the chosen fields are the last two
        ("hello\thallo", "auto", False),
        ("en\ten", "auto", False),  # the same word twice is a sentence pair, not column names
        ("en\tde", "none", False),
        ("hello\thallo", "first", True),
    ],
)
def test_a_tsv_header_is_counted_not_trained_on(tmp_path, first_line, setting, header):
    n_fields = first_line.count("\t") + 1
    rest = "".join(("x\t" * (n_fields - 2)) + f"a {i}\tb {i}\n" for i in range(3))
    path = tmp_path / "c.tsv"
    path.write_text(first_line + "\n" + rest, encoding="utf-8")
    cfg = DataConfig(source="files", paths=[str(path)], src_lang="en", tgt_lang="de", tsv_header=setting)
    (unit,) = plan_units(cfg, seed=0)
    reasons = [r for _, _, _, r in read_unit(unit, cfg)]
    assert reasons == (["header"] if header else [None]) + [None] * 3
    lines, srcs, tgts, known = next(iter(read_batches(unit, cfg)))
    codes, _, _ = clean_batch(srcs, tgts, cfg, known)
    assert (REJECT_REASONS[codes[0] - 1] if codes[0] else None) == ("header" if header else None)


@pytest.mark.parametrize("side", [b"a\x00b", b"\x1b[31mred\x1b[0m", b"bell\x07", b"del\x7f"])
def test_control_characters_are_a_counted_reject(side):
    codes, _, _ = clean_batch([side, b"tab\tand\r ok"], [b"x", b"y"], DataConfig(max_length_ratio=100))
    assert [REJECT_REASONS[c - 1] if c else None for c in codes] == ["control_chars", None]


@pytest.mark.parametrize("name,body", [("c.tsv", "en\tde\nhello\thallo\n"), ("c.jsonl", '{"en": "hello", "de": "hallo"}\n')])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_record(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    cfg = DataConfig(source="files", paths=[str(path)], src_lang="en", tgt_lang="de")
    (unit,) = plan_units(cfg, seed=0)
    records = [(s, t, r) for _, s, t, r in read_unit(unit, cfg)]
    assert records[-1][:2] in ((b"hello", b"hallo"), ("hello", "hallo"))
    assert name != "c.tsv" or records[0][2] == "header"  # 'en<TAB>de' is still seen as the header


@pytest.mark.parametrize("uri, message", [
    ("gs://corpus/a.tsv", "data.test_paths: gs://corpus/a.tsv needs gcsfs, which is not installed: pip install 'transformer-pipeline[gcs]'"),
    ("nosuch://corpus/a.tsv", "data.test_paths: nosuch://corpus/a.tsv: no filesystem for nosuch://"),
])
def test_every_unopenable_scheme_is_named(uri, message, monkeypatch):
    import sys

    from data.io import check_filesystems

    monkeypatch.setitem(sys.modules, "gcsfs", None)  # import gcsfs fails, installed or not
    check_filesystems(["/local/file.tsv", "file:///x.tsv", "memory://x.tsv"], "data.paths")  # fine
    with pytest.raises(DataError) as e:
        check_filesystems(["/local/file.tsv", uri], "data.test_paths")
    assert str(e.value).startswith(message)
