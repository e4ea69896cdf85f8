"""A remote artifact root (s3://, gs://, ... anything pyarrow.fs opens) for the workflow's step outputs.

Steps always work on local folders: a remote root is mirrored in `$TPIPE_HOME/artifacts`, which
acts as its cache. Object stores have no atomic rename of a folder, so completeness is carried by
the marker alone: an output is uploaded file by file and its `_COMPLETE.json` goes last; a reader
trusts a remote output only when that marker is there, and downloads it into a temporary local
folder that is renamed into place once every file has arrived.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from data.io import is_remote

MARKER = "_COMPLETE.json"  # the workflow's completion marker (pipeline/workflow.py)


class RemoteRoot:
    """Step outputs under `<uri>/<step>/<key>/` on a pyarrow filesystem."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")
        prefix, _, self.query = uri.partition("?")  # the query carries settings, e.g. an endpoint
        self.prefix = prefix.rstrip("/")
        try:
            self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, ValueError, OSError
            raise ValueError(f"artifact_root: cannot open '{uri}': {e}") from e
        self.base = self.base.rstrip("/")

    def _dir(self, step: str, key: str) -> str:
        return f"{self.base}/{step}/{key}"

    def uri_of(self, *parts: str) -> str:
        """The URI of a path under the root, settings included: what another process or node opens.

        Example: RemoteRoot("s3://b/art?scheme=http").uri_of("encode", "k1", "train/shard-00000.parquet")
        -> "s3://b/art/encode/k1/train/shard-00000.parquet?scheme=http"
        """
        path = "/".join(p.strip("/") for p in parts if p)
        return f"{self.prefix}/{path}" + (f"?{self.query}" if self.query else "")

    def check(self) -> None:
        """Fail early, with the URI in the message, when the root cannot be listed (bucket, credentials)."""
        import pyarrow.fs as pafs

        try:
            self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"artifact_root: cannot list '{self.uri}': {e}") from e

    def has(self, step: str, key: str) -> bool:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(f"{self._dir(step, key)}/{MARKER}")
        return info.type == pafs.FileType.File

    def download(self, step: str, key: str, dest: Path) -> None:
        """Copy a complete remote output to `dest` (absent before), atomically on the local side."""
        import pyarrow.fs as pafs

        tmp = dest.with_name(f".{dest.name}.download-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            src = self._dir(step, key)
            infos = self.fs.get_file_info(pafs.FileSelector(src, recursive=True))
            for info in infos:
                if info.type != pafs.FileType.File:
                    continue
                target = tmp / os.path.relpath(info.path, src)
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.fs.open_input_stream(info.path) as r, open(target, "wb") as w:
                    shutil.copyfileobj(r, w, 1 << 20)
            if not (tmp / MARKER).exists():
                raise FileNotFoundError(f"{self.uri}/{step}/{key} lost its {MARKER} while being downloaded")
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def upload(self, src: Path, step: str, key: str) -> None:
        """Copy a finished local output up: stale objects cleared, every file, then the marker last."""
        dst = self._dir(step, key)
        self.fs.delete_dir_contents(dst, missing_dir_ok=True)  # leftovers of an interrupted upload
        self.fs.create_dir(dst, recursive=True)
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.name != MARKER)
        for p in [*files, src / MARKER]:
            rel = p.relative_to(src).as_posix()
            if "/" in rel:
                self.fs.create_dir(f"{dst}/{rel.rsplit('/', 1)[0]}", recursive=True)
            with open(p, "rb") as r, self.fs.open_output_stream(f"{dst}/{rel}") as w:
                shutil.copyfileobj(r, w, 1 << 20)


# ---- the per-node cache: what workers on other machines read from a remote root --------------
def node_cache_dir() -> Path:
    """This node's cache of remote files: $TPIPE_NODE_CACHE, else a folder in the node's temp dir.

    It is never the driver's $TPIPE_HOME: on a cluster without a shared volume, that folder exists
    on the driver's machine only.
    """
    configured = os.environ.get("TPIPE_NODE_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"tpipe-node-cache-{os.getuid()}"


_FILESYSTEMS: dict[str, object] = {}


def _open_uri(uri: str):
    """(pyarrow filesystem, path) of a URI; one filesystem per store and settings, reused."""
    import pyarrow.fs as pafs

    scheme_host = uri.split("?", 1)[0].split("/", 3)[:3]
    store = "/".join(scheme_host) + "?" + uri.partition("?")[2]
    fs, path = pafs.FileSystem.from_uri(uri)
    return _FILESYSTEMS.setdefault(store, fs), path


def local_copy(location: str) -> str:
    """A local path holding `location`: the path itself when local, else a copy in this node's cache.

    A remote file or folder is fetched once per node and version: the cache entry is named after
    its URI, size and modification time, so a re-written object gets a new entry and readers of the
    old one are never disturbed. Several processes of one node may fetch at once; each downloads
    into a temporary folder renamed into place, and the first rename wins.
    Example: local_copy("s3://b/art/encode/k1/train/shard-00000.parquet?scheme=http")
    -> "/tmp/tpipe-node-cache-1000/3f2a9c0d1e5b7a44/shard-00000.parquet"
    """
    import hashlib

    import pyarrow.fs as pafs

    if not is_remote(location):
        return location
    fs, path = _open_uri(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        files = [info]
    elif info.type == pafs.FileType.Directory:
        files = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File]
    else:
        raise FileNotFoundError(f"{location} does not exist")
    identity = [location.split("?", 1)[0]] + [f"{i.path}|{i.size}|{i.mtime_ns}" for i in files]
    entry = node_cache_dir() / hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]
    if not entry.exists():
        tmp = entry.with_name(f".{entry.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            for i in files:
                target = tmp / (os.path.relpath(i.path, path) if i is not info else os.path.basename(path))
                target.parent.mkdir(parents=True, exist_ok=True)
                with fs.open_input_stream(i.path) as r, open(target, "wb") as w:
                    shutil.copyfileobj(r, w, 1 << 20)
            os.rename(tmp, entry)
        except OSError:
            if not entry.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(entry / os.path.basename(path)) if info.type == pafs.FileType.File else str(entry)
