"""gettext catalogs: .po parsing, .mo reading and writing, parity with msgfmt and Python's gettext."""

from __future__ import annotations

import gettext
import io
import shutil
import subprocess

import pytest

from data.gettext import CatalogError, Entry, entry_pairs, parse_mo, parse_po, write_mo

PO = r'''# Translator comment
msgid ""
msgstr ""
"Project-Id-Version: demo\n"
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=3; plural=(n==1 ? 0 : n%10>=2 && n%10<=4 && (n%100<10 || n%100>=20) ? 1 : 2);\n"

#: src/main.c:10
msgid "Open"
msgstr "Открыть"

msgctxt "menu"
msgid "Open"
msgstr "Открыть…"

#, fuzzy
msgid "Close"
msgstr "Закрыть"

#, c-format
msgid "%d file"
msgid_plural "%d files"
msgstr[0] "%d файл"
msgstr[1] "%d файла"
msgstr[2] "%d файлов"

msgid ""
"two "
"lines\n"
"tab\there \"quoted\" \\ \101"
msgstr "две строки\n"
"таб\tздесь «в кавычках» \\ A"

msgid "untranslated"
msgstr ""

#~ msgid "obsolete"
#~ msgstr "устарело"
'''


def key(e: Entry) -> tuple:
    return e.context, e.msgid, e.msgid_plural, tuple(e.msgstr)


def test_po_entries_plurals_contexts_fuzzy_escapes():
    entries = list(parse_po(PO.encode(), "ru.po"))
    assert [(e.context, e.msgid, e.fuzzy) for e in entries] == [
        ("", "Open", False), ("menu", "Open", False), ("", "Close", True), ("", "%d file", False),
        ("", 'two lines\ntab\there "quoted" \\ A', False), ("", "untranslated", False),
    ]
    assert entries[0].line == 9
    plural = entries[3]
    assert list(entry_pairs(plural)) == [("%d file", "%d файл"), ("%d files", "%d файла"), ("%d files", "%d файлов")]
    assert entries[4].msgstr == ["две строки\nтаб\tздесь «в кавычках» \\ A"]


def test_mo_round_trip_and_python_gettext_reads_it():
    entries = list(parse_po(PO.encode(), "ru.po"))
    mo = write_mo(entries)
    back = list(parse_mo(mo, "ru.mo"))
    kept = [e for e in entries if not e.fuzzy and any(e.msgstr)]  # as msgfmt: no fuzzy, no untranslated
    assert sorted(map(key, back)) == sorted(map(key, kept))
    t = gettext.GNUTranslations(io.BytesIO(mo))
    assert t.gettext("Open") == "Открыть" and t.pgettext("menu", "Open") == "Открыть…"
    assert t.gettext("Close") == "Close"  # fuzzy left out


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="GNU msgfmt is not installed")
def test_parity_with_gnu_msgfmt(tmp_path):
    (tmp_path / "ru.po").write_text(PO, encoding="utf-8")
    subprocess.run(["msgfmt", "-o", str(tmp_path / "ru.mo"), str(tmp_path / "ru.po")], check=True)
    theirs = list(parse_mo((tmp_path / "ru.mo").read_bytes(), "ru.mo"))
    ours = list(parse_mo(write_mo(list(parse_po(PO.encode(), "ru.po"))), "ours.mo"))
    assert sorted(map(key, theirs)) == sorted(map(key, ours))


def test_declared_charset_and_invalid_bytes():
    latin1 = 'msgid ""\nmsgstr "Content-Type: text/plain; charset=ISO-8859-1\\n"\n\nmsgid "yes"\nmsgstr "sí"\n'
    (e,) = parse_po(latin1.encode("latin-1"), "es.po")
    assert e.msgstr == ["sí"] and not e.invalid_encoding
    bad = b'msgid "a"\nmsgstr "\xff\xfe"\n\nmsgid "b"\nmsgstr "c"\n'
    a, b = parse_po(bad, "x.po")
    assert a.invalid_encoding and not b.invalid_encoding
    (m,) = parse_mo(write_mo([Entry("k", ["v"])]).replace(b"v\x00", b"\xff\x00"), "x.mo")
    assert m.invalid_encoding


@pytest.mark.parametrize(
    "text, message",
    [
        ('msgid "a"\n', r"x\.po line 1: msgid without msgstr"),
        ('"orphan"\n', r"x\.po line 1: string continuation outside an entry"),
        ('msgid "a"\nmsgstr "b"\nbogus\n', r"x\.po line 3: cannot parse 'bogus'"),
        ('msgid "a\\q"\nmsgstr "b"\n', r"x\.po line 1: unknown escape \\q"),
    ],
)
def test_malformed_po_names_the_line(text, message):
    with pytest.raises(CatalogError, match=message):
        list(parse_po(text.encode(), "x.po"))


def test_truncated_mo():
    mo = write_mo([Entry("key", ["value"])])
    with pytest.raises(CatalogError, match="past the end"):
        list(parse_mo(mo[:-12], "x.mo"))


# ---- property tests: any text survives .po and .mo ----------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _po_quote(s: str) -> str:
    """The C-string quoting msgfmt reads: backslash, quote, newline, tab and CR escaped."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


# Text without NUL (a .mo separator) and without characters a .po line split would change.
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x04\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_text, _text, st.booleans(), st.one_of(st.none(), _text)), min_size=1, max_size=6, unique_by=lambda x: (x[3], x[0])))
def test_po_and_mo_round_trip_any_text(entries):
    lines = []
    for msgid, msgstr, plural, ctx in entries:
        if ctx is not None:
            lines.append(f"msgctxt {_po_quote(ctx)}")
        lines.append(f"msgid {_po_quote(msgid)}")
        if plural:
            lines += [f"msgid_plural {_po_quote(msgid + 's')}", f"msgstr[0] {_po_quote(msgstr)}", f"msgstr[1] {_po_quote(msgstr + '2')}"]
        else:
            lines.append(f"msgstr {_po_quote(msgstr)}")
        lines.append("")
    parsed = list(parse_po("\n".join(lines).encode(), "h.po"))
    want = [(ctx or "", msgid, msgid + "s" if plural else "", (msgstr, msgstr + "2") if plural else (msgstr,))
            for msgid, msgstr, plural, ctx in entries]
    assert [key(e) for e in parsed] == want
    assert sorted(key(e) for e in parse_mo(write_mo(parsed), "h.mo")) == sorted(want)
