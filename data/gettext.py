"""gettext catalogs as translation pairs: `.po` text and compiled `.mo`, with plurals and contexts.

A catalog entry becomes one pair per plural form: msgid -> msgstr[0], msgid_plural -> msgstr[1..]
(a language with one form, like Chinese, gives one pair; Russian gives three). The context
(msgctxt) disambiguates two entries with the same msgid; it is kept as `Entry.context` but is not
part of the pair. The header entry (msgid "") is metadata, not a record; obsolete `#~` entries are
comments. Fuzzy `.po` entries are records that `read_po_pairs` marks, since msgfmt leaves them out
of the `.mo` as unreliable.

    >>> e = Entry(msgid="%d file", msgid_plural="%d files", msgstr=["%d Datei", "%d Dateien"])
    >>> list(entry_pairs(e))
    [('%d file', '%d Datei'), ('%d files', '%d Dateien')]
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from data.errors import UserError


class CatalogError(UserError, ValueError):
    """A catalog is malformed; the message names the file and, for `.po`, the line."""


@dataclass
class Entry:
    msgid: str
    msgstr: list[str]  # one per plural form; msgstr[0] for a singular entry
    msgid_plural: str = ""
    context: str = ""
    fuzzy: bool = False
    invalid_encoding: bool = False  # some byte was invalid in the declared charset (shown as U+FFFD)
    line: int = 0  # line of the msgid in a .po; index + 1 in a .mo


def entry_pairs(e: Entry) -> Iterator[tuple[str, str]]:
    """('%d file', '%d files', ['a', 'b', 'c']) -> ('%d file', 'a'), ('%d files', 'b'), ('%d files', 'c')."""
    for i, tgt in enumerate(e.msgstr):
        yield (e.msgid if i == 0 else e.msgid_plural), tgt


# --------------------------------------------------------------------------------------------
# .po


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_KEYWORD = re.compile(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(\".*)$")
_CHARSET = re.compile(r"charset=([A-Za-z0-9_.:-]+)", re.IGNORECASE)


def _unquote(text: str, path: str, line: int) -> str:
    """'"a\\tb"' -> 'a\tb'. A .po string is a C string literal in double quotes."""
    text = text.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise CatalogError(f"{path} line {line}: expected a quoted string, got {text[:60]!r}")
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            n = body[i + 1]
            if n in _ESCAPES:
                out.append(_ESCAPES[n])
                i += 2
                continue
            if n in "01234567":  # octal, as msgfmt accepts
                m = re.match(r"[0-7]{1,3}", body[i + 1 :])
                out.append(chr(int(m.group(0), 8)))  # type: ignore[union-attr]
                i += 1 + len(m.group(0))  # type: ignore[union-attr]
                continue
            raise CatalogError(f"{path} line {line}: unknown escape \\{n}")
        out.append(c)
        i += 1
    return "".join(out)


def po_charset(data: bytes) -> str:
    """The charset the header declares (UTF-8 when none); the header is ASCII in every encoding po allows."""
    m = _CHARSET.search(data[:4096].decode("ascii", "replace"))
    cs = m.group(1) if m else "UTF-8"
    return "UTF-8" if cs.upper() == "CHARSET" else cs  # xgettext's template placeholder


def known_charset(charset: str, path: str) -> str:
    """The header's charset if Python has a codec for it: 'nosuch' is a CatalogError naming the file."""
    import codecs

    try:
        codecs.lookup(charset)
    except LookupError:
        raise CatalogError(f"{path}: the header declares charset {charset!r}, which is not a known encoding") from None
    return charset


def parse_po(data: bytes, path: str) -> Iterator[Entry]:
    """Yield every entry of a .po file except the header. An entry with bytes invalid in the
    declared charset comes with `invalid_encoding=True`, for the caller to count as a reject."""
    charset = known_charset(po_charset(data), path)
    cur: dict = {}
    fuzzy_next = False
    last_key: tuple[str, int] | None = None

    def flush() -> Iterator[Entry]:
        nonlocal cur
        if "msgid" in cur:
            if "msgstr" not in cur:
                raise CatalogError(f"{path} line {cur['line']}: msgid without msgstr")
            n = max(cur["msgstr"]) + 1
            forms = [cur["msgstr"].get(i, "") for i in range(n)]
            if cur["msgid"] != "" or cur.get("msgctxt"):  # msgid "" without context is the header
                yield Entry(
                    cur["msgid"], forms, cur.get("msgid_plural", ""), cur.get("msgctxt", ""),
                    cur["fuzzy"], cur.get("invalid", False), cur["line"],
                )
        elif cur:
            raise CatalogError(f"{path} line {cur.get('line', '?')}: entry without msgid")
        cur = {}

    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line, bad = raw.rstrip(b"\r").decode(charset).strip(), False
        except UnicodeDecodeError:
            line, bad = raw.rstrip(b"\r").decode(charset, "replace").strip(), True
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("#,") and "fuzzy" in [f.strip() for f in line[2:].split(",")]:
                fuzzy_next = True
            if line.startswith("#~"):
                continue
            continue
        if line.startswith('"'):
            if last_key is None:
                raise CatalogError(f"{path} line {lineno}: string continuation outside an entry")
            kw, idx = last_key
            s = _unquote(line, path, lineno)
            cur["invalid"] = cur.get("invalid", False) or bad
            if kw == "msgstr":
                cur["msgstr"][idx] += s
            else:
                cur[kw] += s
            continue
        m = _KEYWORD.match(line)
        if not m:
            raise CatalogError(f"{path} line {lineno}: cannot parse {line[:60]!r}")
        kw, idx, rest = m.group(1), m.group(2), m.group(3)
        if kw.startswith("msgstr"):
            kw = "msgstr"
        # A msgctxt, or a msgid not preceded by its msgctxt, starts a new entry.
        if kw == "msgctxt" or (kw == "msgid" and "msgid" in cur) or (kw == "msgid" and "msgstr" in cur):
            yield from flush()
        if not cur:
            cur = {"fuzzy": fuzzy_next, "line": lineno}
            fuzzy_next = False
        if kw == "msgid":
            cur["line"] = lineno
        s = _unquote(rest, path, lineno)
        cur["invalid"] = cur.get("invalid", False) or bad
        if kw == "msgstr":
            i = int(idx) if idx is not None else 0
            cur.setdefault("msgstr", {})[i] = s
            last_key = ("msgstr", i)
        else:
            cur[kw] = s
            last_key = (kw, 0)
    yield from flush()


# --------------------------------------------------------------------------------------------
# .mo (GNU gettext's binary format: a header, two tables of (length, offset), NUL-terminated strings)


_MO_MAGIC_LE, _MO_MAGIC_BE = 0x950412DE, 0xDE120495


def parse_mo(data: bytes, path: str) -> Iterator[Entry]:
    """Yield every entry of a .mo except the header; strings stay bytes-decoded with the declared charset."""
    if len(data) < 28:
        raise CatalogError(f"{path}: {len(data)} bytes is too short for a .mo file")
    (magic,) = struct.unpack("<I", data[:4])
    if magic == _MO_MAGIC_LE:
        end = "<"
    elif magic == _MO_MAGIC_BE:
        end = ">"
    else:
        raise CatalogError(f"{path}: not a .mo file (magic 0x{magic:08x})")
    revision, n, orig_off, trans_off = struct.unpack(end + "4I", data[4:20])
    if revision >> 16 > 1:
        raise CatalogError(f"{path}: unsupported .mo major revision {revision >> 16}")

    def string(table: int, i: int) -> bytes:
        length, off = struct.unpack(end + "2I", data[table + 8 * i : table + 8 * i + 8])
        if off + length > len(data):
            raise CatalogError(f"{path}: string {i} points past the end of the file")
        return data[off : off + length]

    charset = "UTF-8"
    for i in range(n):
        if string(orig_off, i) == b"":
            m = _CHARSET.search(string(trans_off, i).decode("ascii", "replace"))
            if m and m.group(1).upper() != "CHARSET":
                charset = known_charset(m.group(1), path)
    for i in range(n):
        key, value = string(orig_off, i), string(trans_off, i)
        if key == b"":
            continue
        context = b""
        if b"\x04" in key:
            context, key = key.split(b"\x04", 1)
        ids = key.split(b"\x00")
        forms = value.split(b"\x00")
        bad = False

        def dec(b: bytes) -> str:
            nonlocal bad
            try:
                return b.decode(charset)
            except UnicodeDecodeError:
                bad = True
                return b.decode(charset, "replace")

        yield Entry(
            msgid=dec(ids[0]),
            msgid_plural=dec(ids[1]) if len(ids) > 1 else "",
            msgstr=[dec(f) for f in forms],
            context=dec(context),
            invalid_encoding=bad,
            line=i + 1,
        )


def write_mo(entries: list[Entry], charset: str = "UTF-8") -> bytes:
    """Compile entries to .mo bytes as msgfmt does: fuzzy and untranslated entries left out, keys sorted."""
    table = {b"": f"Content-Type: text/plain; charset={charset}\n".encode(charset)}
    for e in entries:
        if e.fuzzy or not any(e.msgstr):
            continue
        key = e.msgid.encode(charset)
        if e.msgid_plural:
            key += b"\x00" + e.msgid_plural.encode(charset)
        if e.context:
            key = e.context.encode(charset) + b"\x04" + key
        table[key] = b"\x00".join(s.encode(charset) for s in e.msgstr)
    keys = sorted(table)
    n = len(keys)
    orig_off, trans_off = 28, 28 + 8 * n
    strings_off = trans_off + 8 * n
    blob, origs, trans = bytearray(), [], []
    for k in keys:
        origs.append((len(k), strings_off + len(blob)))
        blob += k + b"\x00"
    for k in keys:
        trans.append((len(table[k]), strings_off + len(blob)))
        blob += table[k] + b"\x00"
    out = struct.pack("<7I", _MO_MAGIC_LE, 0, n, orig_off, trans_off, 0, 0)
    out += b"".join(struct.pack("<2I", *p) for p in origs)
    out += b"".join(struct.pack("<2I", *p) for p in trans)
    return out + bytes(blob)
