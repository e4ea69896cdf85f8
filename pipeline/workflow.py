"""A small durable workflow on plain Ray: steps with fingerprinted, atomically written outputs.

Ray Workflows was removed after Ray 2.47, so durability is ours:

* Each step declares the config sections it reads and the steps it consumes. Its output folder is
  `<artifacts>/<step>/<key>`, where `key` hashes those config sections, the inputs' keys and the
  code version. The same config on the same code maps to the same folders.
* A step writes into a temporary folder and renames it into place only when it has finished, with
  a `_COMPLETE.json` marker inside. A folder with the marker is done; anything else is not.
* Re-running skips every step whose output exists and verifies, so a run killed at any point
  continues where it stopped (long steps, i.e. training, also resume from their own checkpoints).
* With a remote artifact root (`artifact_root: s3://...`, pipeline/artifacts.py) the local folder
  is its cache: a finished output is uploaded with its marker last, and an output found only
  remotely is downloaded before it is used. Another machine sharing the root reuses the outputs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.errors import UserError
from data.exchange import Exchange
from data.io import sha256_file, write_json_atomic
from pipeline.artifacts import RemoteRoot
from pipeline.config import PipelineConfig

MARKER = "_COMPLETE.json"


_CODE_PACKAGES = ("data", "model", "pipeline")


class UnknownStep(UserError, ValueError):
    """`--from` / `--until` name no step of the pipeline, or an empty range."""


def check_step_range(names: list[str], from_step: str | None, until_step: str | None) -> None:
    """Refuse a `--from`/`--until` that names no step (or runs nothing), before anything starts.

    >>> check_step_range(["a", "b"], "trian", None)
    Traceback (most recent call last):
    ...
    pipeline.workflow.UnknownStep: unknown step 'trian' for --from; steps are: a, b
    """
    for flag, n in (("--from", from_step), ("--until", until_step)):
        if n is not None and n not in names:
            raise UnknownStep(f"unknown step '{n}' for {flag}; steps are: {', '.join(names)}")
    if from_step is not None and until_step is not None and names.index(from_step) > names.index(until_step):
        raise UnknownStep(f"--from {from_step} comes after --until {until_step}; nothing would run")


def code_version() -> str:
    """Hash of tpipe's own source files: a change of code invalidates cached step outputs."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in _CODE_PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


@dataclass
class StepContext:
    """What a running step sees: its config, its inputs' outputs, and where to write."""

    cfg: PipelineConfig
    out_dir: Path  # temporary folder; renamed to the final place when the step returns
    final_dir: Path  # where the output will live (for paths recorded inside the output)
    inputs: dict[str, "StepResult"]
    state_dir: Path  # survives an interrupted attempt: e.g. the training run's MLflow id
    run: "PipelineRun"

    def input_dir(self, step: str) -> Path:
        return self.inputs[step].out_dir

    def input_location(self, step: str, rel: str = "") -> str:
        """Where another process opens an input's file or folder: its URI on a remote artifact root
        (a Ray worker may run on a machine without this one's disk), else its local path."""
        result = self.inputs[step]
        if self.run.remote is not None:
            return self.run.remote.uri_of(step, result.key, rel)
        return str(result.out_dir / rel) if rel else str(result.out_dir)

    def exchange(self) -> Exchange:
        """How this step's data tasks reach their inputs and hand back outputs (data/exchange.py): through
        the remote artifact root when there is one (a task's node may not have this disk), under a
        stage of this attempt's own, `<root>/<step>/.tasks-<attempt>`; else through the local folders."""
        resource = self.cfg.ray.task_resource
        remote = self.run.remote
        if remote is None:
            return Exchange(resource=resource)
        inputs = tuple((str(r.out_dir), remote.uri_of(name, r.key)) for name, r in self.inputs.items())
        stage = remote.uri_of(self.final_dir.parent.name, f".tasks-{self.out_dir.name.lstrip('.')}")
        return Exchange(stage=stage, resource=resource, inputs=inputs)


@dataclass
class Step:
    """A pipeline step. `fn(ctx) -> summary` writes its output into `ctx.out_dir`."""

    name: str
    fn: Callable[[StepContext], dict[str, Any]]
    config_keys: tuple[str, ...]  # dotted config paths whose values the output depends on
    inputs: tuple[str, ...] = ()
    verify: Callable[[Path, dict[str, Any]], bool] | None = None  # extra check of a cached output
    description: str = ""


@dataclass
class StepResult:
    name: str
    key: str
    out_dir: Path
    summary: dict[str, Any]
    cached: bool
    seconds: float


@dataclass
class PipelineRun:
    """One pipeline run: an ordered list of steps and where their outputs go."""

    cfg: PipelineConfig
    steps: list[Step]
    artifacts: Path  # local step outputs; the cache of `remote` when there is one
    run_dir: Path
    on_event: Callable[[str, Step, dict[str, Any]], None] = lambda event, step, info: None
    # Wraps each executed step, e.g. in a nested MLflow run (pipeline/runner.py): (step, key, state_dir).
    step_scope: Callable[[Step, str, Path], AbstractContextManager] = lambda step, key, state_dir: nullcontext()
    results: dict[str, StepResult] = field(default_factory=dict)
    version: str = field(default_factory=code_version)
    remote: RemoteRoot | None = None

    def step_key(self, step: Step) -> str:
        d = self.cfg.to_dict()
        picked = {k: _get_path(d, k) for k in step.config_keys}
        blob = json.dumps(
            {"config": picked, "inputs": {i: self.results[i].key for i in step.inputs}, "code": self.version},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run(self, from_step: str | None = None, until_step: str | None = None) -> dict[str, StepResult]:
        names = [s.name for s in self.steps]
        check_step_range(names, from_step, until_step)
        start = names.index(from_step) if from_step else 0
        stop = names.index(until_step) if until_step else len(names) - 1
        for i, step in enumerate(self.steps[: stop + 1]):
            force = i >= start and from_step is not None
            self.results[step.name] = self._run_step(step, force=force and i == start)
        return self.results

    def _run_step(self, step: Step, force: bool) -> StepResult:
        key = self.step_key(step)
        final = self.artifacts / step.name / key
        marker = final / MARKER
        if not force and self.remote is not None:
            if not marker.exists() and self.remote.has(step.name, key):
                if final.exists():  # an unfinished local attempt: the remote output replaces it
                    shutil.rmtree(final)
                self.remote.download(step.name, key, final)
            elif marker.exists() and not self.remote.has(step.name, key):
                self.remote.upload(final, step.name, key)  # made before the root was set, or upload cut short
        remove_dead_attempts(final.parent)
        if marker.exists() and not force:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
            summary = recorded["summary"]
            if outputs_unchanged(final, recorded.get("files")) and (step.verify is None or step.verify(final, summary)):
                result = StepResult(step.name, key, final, summary, cached=True, seconds=0.0)
                self._record(result, "cached")
                self.on_event("cached", step, {"key": key, "out_dir": str(final), "summary": summary})
                return result
        if final.exists():  # unverified or forced: move the old output aside, never half-delete it
            shutil.rmtree(final.with_name(f".{key}.old"), ignore_errors=True)
            os.replace(final, final.with_name(f".{key}.old"))
        tmp = final.with_name(f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # pid: see remove_dead_attempts
        tmp.mkdir(parents=True)
        state_dir = final.with_name(f".{key}.state")
        state_dir.mkdir(parents=True, exist_ok=True)
        self._record_state(step.name, {"state": "running", "key": key, "started": time.time()})
        self.on_event("start", step, {"key": key})
        ctx = StepContext(self.cfg, tmp, final, {i: self.results[i] for i in step.inputs}, state_dir, self)
        try:
            with self.step_scope(step, key, state_dir):
                t0 = time.perf_counter()  # the step's own time, not the scope's set-up (e.g. Ray's start-up)
                summary = step.fn(ctx)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            # Ctrl-C / SIGTERM (a KeyboardInterrupt) is not a failure of the step: a re-run continues it.
            state = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            self._record_state(step.name, {"state": state, "key": key, "finished": time.time()})
            raise
        seconds = time.perf_counter() - t0
        (tmp / MARKER).write_text(
            json.dumps({"step": step.name, "key": key, "seconds": seconds, "summary": summary,
                        "files": file_records(tmp)}, indent=2),
            encoding="utf-8",
        )
        try:
            os.replace(tmp, final)  # atomic: the output appears complete or not at all
        except OSError as e:
            # Another run sharing this artifact_root (its own home, so its own lock) finished the same
            # fingerprint first. Steps are deterministic, so its output is this one's: keep it, whole.
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (final / MARKER).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if self.remote is not None:
            self.remote.upload(final, step.name, key)  # marker last: complete there too, or not at all
        shutil.rmtree(final.with_name(f".{key}.old"), ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)
        result = StepResult(step.name, key, final, summary, cached=False, seconds=seconds)
        self._record(result, "done")
        self.on_event("done", step, {"key": key, "seconds": seconds, "summary": summary})
        return result

    # ---- run record, for `tpipe status` ------------------------------------------------------
    def _record(self, r: StepResult, state: str) -> None:
        self._record_state(
            r.name,
            {"state": state, "key": r.key, "seconds": round(r.seconds, 2), "out_dir": str(r.out_dir), "finished": time.time()},
        )

    def _record_state(self, name: str, entry: dict[str, Any]) -> None:
        path = self.run_dir / "state.json"
        state = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"steps": {}}
        state["steps"][name] = entry
        state["updated"] = time.time()
        write_json_atomic(path, state)


def file_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Size, modification time and SHA-256 of every file of a finished output, kept in its marker."""
    out = {}
    for p in sorted(out_dir.rglob("*")):
        if p.is_file() and p.name != MARKER:
            st = p.stat()
            out[p.relative_to(out_dir).as_posix()] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                     "sha256": sha256_file(str(p))}
    return out


def outputs_unchanged(out_dir: Path, records: dict[str, dict[str, Any]] | None) -> bool:
    """Every file a cached output had when it was written is still there with the same bytes.

    A size is compared always (a stat); the hash only for a file whose modification time changed
    (rewritten, or copied from a remote root), so a reuse costs a stat per file, not a read. An
    output written before files were recorded is trusted as before.
    """
    if records is None:
        return True
    for rel, rec in records.items():
        p = out_dir / rel
        try:
            st = p.stat()
        except OSError:
            return False
        if st.st_size != rec["size"]:
            return False
        if st.st_mtime_ns != rec["mtime_ns"] and sha256_file(str(p)) != rec["sha256"]:
            return False
    return True


def remove_dead_attempts(step_dir: Path) -> None:
    """Remove the temporary folders of attempts whose process is gone (a killed run): `.KEY.tmp-PID-X`.

    A folder whose process still runs on this machine belongs to a concurrent run and is left alone.
    """
    if not step_dir.is_dir():
        return
    for p in step_dir.glob(".*.tmp-*"):
        pid = p.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        if pid.isdigit() and int(pid) == os.getpid():
            continue
        shutil.rmtree(p, ignore_errors=True)


def ray_storage(artifacts: Path, remote: RemoteRoot | None) -> str:
    """Ray Train's and Tune's storage when train.storage_path is empty: `ray_results` beside the
    artifact root, on it when it is remote (every node reaches it)."""
    return remote.uri_of("ray_results") if remote is not None else str(artifacts.parent / "ray_results")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _get_path(d: dict[str, Any], dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        node = node[part]
    return node
