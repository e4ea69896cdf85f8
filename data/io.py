"""Files: local paths, globs and fsspec/pyarrow URIs, gzip/zstd by suffix, atomic writes, content hashes,
the redaction of credentials in URIs, and a lock file."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import uuid
from contextlib import contextmanager
from typing import IO, Any, Iterator

from data.errors import UserError

COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")

# The data steps' manifest. Its name starts with "_" so that `pyarrow.dataset.dataset(folder)` skips
# it (as it skips the workflow's "_COMPLETE.json"): a step's folder opens as a Parquet dataset as it is.
MANIFEST = "_manifest.json"


class DataError(UserError, ValueError):
    """Bad input: the message names the file and, where there is one, the line."""


def is_remote(path: str) -> bool:
    """'s3://b/k' -> True; '/data/x', 'file:///data/x', 'x.tsv' and 'C://x' (a drive letter, not a scheme) -> False."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme != "file"


# scheme://USER:PASSWORD@host...: the user-info runs from `://` to the last '@' of the authority.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#'\"<>]*)@")


def redact_uri(uri: str) -> str:
    """The URI without its user-info, the one form of a URI tpipe prints, logs, records or sends.

    'http://me:s3cret@mlflow:5000/x' -> 'http://mlflow:5000/x'; a URI without user-info is returned as is.
    """
    return redact_text(uri)


def redact_text(text: str) -> str:
    """`text` with the user-info of every URI in it removed (error messages, logged lines, params).

    'cannot reach http://me:pw@h:5000 (via https://t@x/y)' -> 'cannot reach http://h:5000 (via https://x/y)'
    """
    return _USERINFO.sub(lambda m: m["scheme"], text) if "@" in text else text


def uri_credentials(uri: str) -> tuple[str | None, str | None]:
    """(user, password) held in a URI's user-info, percent-decoded; (None, None) when it has none.

    'http://me:p%40ss@h/' -> ('me', 'p@ss'); 'https://TOKEN@h/' -> ('TOKEN', None).
    """
    from urllib.parse import unquote

    m = _USERINFO.match(uri)
    if m is None:
        return None, None
    user, sep, password = m["userinfo"].partition(":")
    return unquote(user), (unquote(password) if sep else None)


def local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def expand_paths(patterns: list[str]) -> list[str]:
    """Globs expanded, each pattern's matches sorted, order of patterns kept, duplicates dropped.

    A pattern that matches nothing is an error (a typo must not silently train on less data).
    """
    out: list[str] = []
    for pat in patterns:
        if is_remote(pat):
            import fsspec

            fs, _, paths = fsspec.get_fs_token_paths(pat)
            proto = pat.split("://", 1)[0]
            matches = sorted(p if "://" in p else f"{proto}://{p}" for p in paths if not fs.isdir(p))
        elif glob.has_magic(local_path(pat)):
            matches = sorted(p for p in glob.glob(local_path(pat), recursive=True) if os.path.isfile(p))
        else:
            p = local_path(pat)
            matches = [p] if os.path.isfile(p) else []
        if not matches:
            raise DataError(f"data path {pat!r} matches no file")
        out += [m for m in matches if m not in out]
    return out


def compression_of(path: str) -> str | None:
    """'a.tsv.gz' -> 'gzip'; 'a.en.zst' -> 'zstd'; 'a.tsv' -> None."""
    if path.endswith(".gz"):
        return "gzip"
    if path.endswith((".zst", ".zstd")):
        return "zstd"
    return None


def strip_compression(path: str) -> str:
    """'train.de.gz' -> 'train.de'."""
    for suf in COMPRESSED_SUFFIXES:
        if path.endswith(suf):
            return path[: -len(suf)]
    return path


@contextmanager
def open_binary(path: str) -> Iterator[IO[bytes]]:
    """A binary stream of the decompressed content of a local path or a URI."""
    comp = compression_of(path)
    if is_remote(path) or comp is not None:
        import fsspec

        with fsspec.open(path, "rb", compression=comp) as f:
            # zstandard's reader has no readline; a buffer in front gives line iteration to every codec
            yield io.BufferedReader(f, buffer_size=1 << 20) if comp == "zstd" else f
    else:
        with open(local_path(path), "rb", buffering=1 << 20) as f:
            yield f


def file_identity(path: str) -> dict[str, Any]:
    """What decides whether an input changed: size and modification time (as make does), not a full read."""
    if is_remote(path):
        import fsspec

        fs, _, (p,) = fsspec.get_fs_token_paths(path)
        info = fs.info(p)
        return {"path": path, "size": info.get("size"), "version": str(info.get("ETag") or info.get("mtime") or "")}
    st = os.stat(local_path(path))
    return {"path": os.path.abspath(local_path(path)), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tmp_path_for(path: str) -> str:
    """A unique sibling temporary name, so that os.replace stays on one filesystem and is atomic."""
    d, name = os.path.split(path)
    return os.path.join(d, f".{name}.tmp-{uuid.uuid4().hex[:12]}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Write to the yielded temporary path; it becomes `path` only if the block finishes.

    The one atomic write of tpipe: the file is flushed to disk (fsync) before the rename, so a crash
    leaves the old file or the new one, never an empty one; the temporary file is removed however
    the block ends.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        if os.path.isfile(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> None:
    """`obj` as indented UTF-8 JSON with a final newline, written atomically (see atomic_path)."""
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextmanager
def file_lock(path: str, *, wait: bool = True) -> Iterator[IO[str]]:
    """An exclusive lock on `path` (created if missing) for the block; yields the open lock file.

    fcntl.flock: the kernel releases it when the holder's process ends, however it ends, so a lock
    left by a killed process never blocks anyone. With `wait=False` a held lock raises
    BlockingIOError at once instead of waiting for it.
    """
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# The fsspec package behind each object-store scheme, and the extra of this project that brings it.
FSSPEC_EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def check_filesystems(patterns: list[str], key: str) -> None:
    """Fail at once, naming the URI, when fsspec cannot open its scheme on this machine.

    Input files are read through fsspec (open_binary, expand_paths), which imports a scheme's
    package (s3fs, gcsfs, ...) only on first use: inside a Ray task, a minute into the run.
    Example: check_filesystems(["s3://b/train.tsv"], "data.paths") without s3fs installed raises
    DataError("data.paths: s3://b/train.tsv needs s3fs, which is not installed: pip install 'transformer-pipeline[s3]'").
    """
    import fsspec

    for pattern in patterns:
        if not is_remote(pattern):
            continue
        scheme = pattern.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError as e:
            package, extra = FSSPEC_EXTRAS.get(scheme, (None, None))
            how = f"{package}, which is not installed: pip install 'transformer-pipeline[{extra}]'" if extra else str(e)
            raise DataError(f"{key}: {pattern} needs {how}") from None
        except ValueError:
            raise DataError(f"{key}: {pattern}: no filesystem for {scheme}:// (fsspec knows none by that name)") from None
