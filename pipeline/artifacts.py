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
import uuid
from pathlib import Path

from data.exchange import join_uri

MARKER = "_COMPLETE.json"  # the workflow's completion marker (pipeline/workflow.py)


class RemoteRoot:
    """Step outputs under `<uri>/<step>/<key>/` on a pyarrow filesystem."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")  # a query, if any, carries the store's settings (e.g. an endpoint)
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
        return join_uri(self.uri, *parts)

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

