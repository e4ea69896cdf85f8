"""How the data steps' Ray tasks reach their inputs and hand back their outputs (issue 18).

On one machine, or on nodes that share a volume, a task opens the step's folders directly:
`Exchange()` (the default), and nothing here is used. With a remote artifact root a task may run on
a node that does not have the driver's disk, so no driver path crosses to it:

    inputs   an earlier step's file or folder is opened at its URI on the root (`Exchange.location`),
             through this node's cache (`local_copy`: fetched once per node and version)
    outputs  the task writes into a scratch folder on its own node and `publish`es it under the
             step's stage, `<root>/<step>/.tasks-<attempt>/<part>/<id>/`: every file, then its
             `_COMPLETE.json` last, as pipeline/artifacts.py uploads a step. It returns that prefix;
             the driver `collect`s from it only an output whose marker is there, into the step's
             local folder, and removes the stage when the step's tasks are done.

A retried task publishes under a fresh id, so two attempts never mix their files. The user's own
local input files (data.paths) are not the driver's to hide: the prepare step reads them on the
driver's node (data/prepare.py); a path on object storage is read by a task on any node.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.io import atomic_path, is_remote, local_path

MARKER = "_COMPLETE.json"  # the same name as a step's completion marker (pipeline/workflow.py)


def join_uri(uri: str, *parts: str) -> str:
    """A path under a URI, its query (the store's settings) kept at the end.

    Example: join_uri("s3://b/x?scheme=http", "units", "ab12") -> "s3://b/x/units/ab12?scheme=http"
    """
    prefix, _, query = uri.partition("?")
    path = "/".join(p.strip("/") for p in parts if p)
    return f"{prefix.rstrip('/')}/{path}" + (f"?{query}" if query else "")


_FILESYSTEMS: dict[str, Any] = {}


def open_uri(uri: str):
    """(pyarrow filesystem, path) of a URI; one filesystem per store and settings, reused."""
    import pyarrow.fs as pafs

    scheme_host = uri.split("?", 1)[0].split("/", 3)[:3]
    store = "/".join(scheme_host) + "?" + uri.partition("?")[2]
    fs, path = pafs.FileSystem.from_uri(uri)
    return _FILESYSTEMS.setdefault(store, fs), path


@dataclass(frozen=True)
class Exchange:
    """Where a data step's tasks run, open their inputs and leave their outputs.

    stage:    a URI prefix the tasks publish their outputs under; "" when they write the step's local
              folder (one machine or a shared volume)
    resource: a custom Ray resource each task asks one unit of (ray.task_resource); "" for none
    inputs:   (local folder, its URI) of the earlier steps, so that a task is handed the URI of an input
    """

    stage: str = ""
    resource: str = ""
    inputs: tuple[tuple[str, str], ...] = ()

    @property
    def remote(self) -> bool:
        return bool(self.stage)

    def location(self, path: str) -> str:
        """Where a task opens `path`, a file or folder of an earlier step: its URI when it has one.

        Example: with inputs (("/h/art/prepare/k1", "s3://b/art/prepare/k1"),),
        location("/h/art/prepare/k1/shard-00000.parquet") -> "s3://b/art/prepare/k1/shard-00000.parquet"
        """
        for local, uri in self.inputs:
            rel = os.path.relpath(path, local)
            if rel == ".":
                return uri
            if not rel.startswith(".."):
                return join_uri(uri, Path(rel).as_posix())
        return path

    def task(self, ray, fn, *, on_driver: bool = False):
        """`fn` as a Ray task of one CPU, on a node offering `resource`, or (on_driver) on the driver's own node."""
        if on_driver:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            return ray.remote(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))(fn)
        if self.resource:
            return ray.remote(num_cpus=1, resources={self.resource: 1})(fn)
        return ray.remote(num_cpus=1)(fn)

    def part(self, name: str) -> str:
        """The stage's prefix for one kind of task output, e.g. part("shards")."""
        return join_uri(self.stage, name)

    def remove_stage(self) -> None:
        """Delete what the tasks published (called by the driver once it has collected what it keeps)."""
        if self.remote:
            fs, path = open_uri(self.stage)
            try:
                fs.delete_dir(path)
            except FileNotFoundError:
                pass


def publish(local_dir: str, part: str) -> str:
    """Task side: upload every file under local_dir to a fresh prefix under `part`, the marker last;
    returns that prefix's URI, which the task hands back to the driver."""
    prefix = join_uri(part, uuid.uuid4().hex[:12])
    fs, base = open_uri(prefix)
    files = sorted(p.relative_to(local_dir).as_posix() for p in Path(local_dir).rglob("*") if p.is_file())
    if fs.type_name == "local":  # a folder store needs its folders; an object store has none to make
        for folder in sorted({"", *(rel.rpartition("/")[0] for rel in files)}):
            fs.create_dir(f"{base}/{folder}".rstrip("/"), recursive=True)
    for rel in files:
        with open(os.path.join(local_dir, rel), "rb") as r, fs.open_output_stream(f"{base}/{rel}") as w:
            shutil.copyfileobj(r, w, 1 << 20)
    with fs.open_output_stream(f"{base}/{MARKER}") as w:  # last: its presence means every file is there
        w.write(json.dumps({"files": files}).encode())
    return prefix


def collect(prefix: str, wanted: dict[str, str]) -> None:
    """Driver side: download files of a published task output, {name under prefix: local path}, each
    written atomically; refuses an output whose marker is missing (an upload cut short)."""
    import pyarrow.fs as pafs

    fs, base = open_uri(prefix)
    if fs.get_file_info(f"{base}/{MARKER}").type != pafs.FileType.File:
        raise FileNotFoundError(f"{prefix}: a task's output without its {MARKER}; it did not finish publishing")
    for rel, dest in wanted.items():
        with atomic_path(dest) as tmp, fs.open_input_stream(f"{base}/{rel}") as r, open(tmp, "wb") as w:
            shutil.copyfileobj(r, w, 1 << 20)


def download(uri: str, dest: str) -> str:
    """Task side: copy one file of a stage (read once, so not worth the node cache) to dest; returns dest."""
    fs, path = open_uri(uri)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    with fs.open_input_stream(path) as r, open(dest, "wb") as w:
        shutil.copyfileobj(r, w, 1 << 20)
    return dest


# ---- the per-node cache: what tasks and workers on other machines read from a remote root ----
def node_cache_dir() -> Path:
    """This node's cache of remote files: $TPIPE_NODE_CACHE, else a folder in the node's temp dir.

    It is never the driver's $TPIPE_HOME: on a cluster without a shared volume, that folder exists
    on the driver's machine only.
    """
    configured = os.environ.get("TPIPE_NODE_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"tpipe-node-cache-{os.getuid()}"


def local_copy(location: str) -> str:
    """A local path holding `location`: the path itself when local, else a copy in this node's cache.

    A remote file or folder is fetched once per node and version: the cache entry is named after
    its URI, size and modification time, so a re-written object gets a new entry and readers of the
    old one are never disturbed. Several processes of one node may fetch at once; each downloads
    into a temporary folder renamed into place, and the first rename wins.
    Example: local_copy("s3://b/art/encode/k1/train/shard-00000.parquet?scheme=http")
    -> "/tmp/tpipe-node-cache-1000/3f2a9c0d1e5b7a44/shard-00000.parquet"
    """
    import pyarrow.fs as pafs

    if not is_remote(location):
        return local_path(location)
    fs, path = open_uri(location)
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
