"""Translating whole corpora on Ray Data: `tpipe translate MODEL_URI --input PATH --output PATH`.

    plan     (driver)    read every line; encode it; cut the corpus into the decoding batches
                         Translator.translate would use (length-sorted, `length_batches`)
    decode   (Ray Data)  one row per batch, a few dozen rows per block; a pool of actors, each loading
                         the version's package once (read in place where its node sees the file,
                         else downloaded through MLflow), decodes the blocks it is handed, longest
                         batches first
    write    (driver)    translations placed by line number, checked complete, written atomically

Because the batches are Translator's own, the output is Translator's, line for line: a batch
decodes to the same tokens whichever process runs it. A lost actor is restarted by Ray Data and its
unfinished batches run again (a batch's result exists once it has been returned, never half-way),
and the driver checks that every line came back exactly once before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.errors import UserError
from data.io import is_remote

# Test hook: "BATCH:MARKER" makes the actor handed plan batch BATCH SIGKILL itself, once (while
# MARKER does not exist; the actor creates it).
from data.faults import TRANSLATE_ACTOR_KILL as INJECT_KILL_ENV, translate_actor_kill  # noqa: F401 (tests import the name from here)


class TranslateError(UserError, ValueError):
    """An input, output or model URI of `tpipe translate` was refused; the message names it."""


# --------------------------------------------------------------------------------------------
# Reading and writing corpora (local paths or URIs pyarrow opens: s3://, gs://, ...)


def _filesystem(path_or_uri: str):
    """(pyarrow filesystem, path on it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if is_remote(path_or_uri):
        try:
            return pafs.FileSystem.from_uri(path_or_uri)
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, ValueError, OSError
            raise TranslateError(f"cannot open {path_or_uri}: {e}") from None
    return pafs.LocalFileSystem(), str(Path(path_or_uri.removeprefix("file://")).expanduser().resolve())


def corpus_format(path_or_uri: str) -> str:
    """'parquet' for *.parquet, 'tsv' for *.tsv (compressed too), else 'text'."""
    name = path_or_uri.lower()
    for ext in (".gz", ".zst", ".bz2"):
        name = name.removesuffix(ext)
    return "parquet" if name.endswith(".parquet") else "tsv" if name.endswith(".tsv") else "text"


@dataclass
class Corpus:
    """The source lines of an input file, in order, and what reading them had to repair."""

    lines: list[str]
    invalid_utf8_lines: int = 0  # decoded with U+FFFD replacements, still translated (kept and counted)


def read_corpus(path_or_uri: str, column: str | None = None) -> Corpus:
    """Every line of a text file; the first field of each TSV line; a Parquet string column.

    Parquet: `column`, else `text`, else `src`, else the only string column. Nothing is dropped:
    an empty line is translated like any other and keeps its place.
    """
    import pyarrow.fs as pafs

    fs, path = _filesystem(path_or_uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise TranslateError(f"input {path_or_uri} does not exist")
    if info.type != pafs.FileType.File:
        raise TranslateError(f"input {path_or_uri} is not a file")
    fmt = corpus_format(path_or_uri)
    if fmt == "parquet":
        return Corpus(_parquet_column(fs, path, path_or_uri, column))
    with fs.open_input_stream(path, compression="detect") as f:
        raw = f.read()
    lines, bad = [], 0
    for line in raw.split(b"\n"):
        line = line.removesuffix(b"\r")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text, bad = line.decode("utf-8", errors="replace"), bad + 1
        lines.append(text.split("\t", 1)[0] if fmt == "tsv" else text)
    if raw.endswith(b"\n") or not raw:
        lines.pop()  # the final newline ends the last line; it does not start another
    return Corpus(lines, bad)


def _parquet_column(fs, path: str, shown: str, column: str | None) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path, filesystem=fs)
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    picked = column or next((c for c in ("text", "src") if c in schema.names), strings[0] if len(strings) == 1 else None)
    if picked is None or picked not in schema.names:
        raise TranslateError(
            f"input {shown}: no column {column or 'text or src'} to translate; columns: {', '.join(schema.names)}"
            " (pick one with --column)"
        )
    values = pq.read_table(path, columns=[picked], filesystem=fs).column(picked).to_pylist()
    return ["" if v is None else str(v) for v in values]


def output_format(path_or_uri: str) -> str:
    return "parquet" if path_or_uri.lower().endswith(".parquet") else "text"


def check_output(path_or_uri: str) -> None:
    """Refuse an output that cannot be written before any work starts."""
    import pyarrow.fs as pafs

    fs, path = _filesystem(path_or_uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        raise TranslateError(f"output {path_or_uri} is a directory; give a file (.parquet, or text)")
    if isinstance(fs, pafs.LocalFileSystem) and not Path(path).parent.is_dir():
        raise TranslateError(f"output {path_or_uri}: folder {Path(path).parent} does not exist")


def write_translations(path_or_uri: str, sources: list[str], translations: list[str], metadata: dict[str, Any]) -> None:
    """Write atomically: Parquet (source, translation) with `metadata` in the file's key-value
    metadata, or text, one translation per line, with `metadata` beside it in PATH.meta.json.

    Local files are written under a temporary name and renamed; an object store's single PUT is
    already atomic. A translation's own line breaks would shift every later line of a text file, so
    there they become spaces (counted in the metadata as `line_breaks_replaced`).
    """
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = _filesystem(path_or_uri)
    local = isinstance(fs, pafs.LocalFileSystem)
    tmp = f"{Path(path).parent}/.{Path(path).name}.tmp-{uuid.uuid4().hex[:8]}" if local else path

    def commit(write: Callable[[str], None], final: str, tmp_path: str) -> None:
        try:
            write(tmp_path)
            if local:
                os.replace(tmp_path, final)
        except BaseException:
            if local and os.path.exists(tmp_path):
                os.unlink(tmp_path)
            raise

    if output_format(path_or_uri) == "parquet":
        table = pa.table({"source": sources, "translation": translations})
        table = table.replace_schema_metadata({"tpipe": json.dumps(metadata, ensure_ascii=False, sort_keys=True)})
        commit(lambda p: pq.write_table(table, p, filesystem=fs), path, tmp)
        return
    replaced = sum(("\n" in t or "\r" in t) for t in translations)
    body = "".join(t.replace("\r\n", " ").replace("\n", " ").replace("\r", " ") + "\n" for t in translations)
    meta = json.dumps(metadata | {"line_breaks_replaced": replaced}, ensure_ascii=False, indent=2, sort_keys=True) + "\n"

    def write_text(text: str):
        def write(p: str) -> None:
            with fs.open_output_stream(p) as f:
                f.write(text.encode("utf-8"))
        return write

    # The metadata first: a translation file that exists always has its metadata beside it.
    commit(write_text(meta), f"{path}.meta.json", f"{tmp}.meta.json" if local else f"{path}.meta.json")
    commit(write_text(body), path, tmp)


# --------------------------------------------------------------------------------------------
# The decoding pool


class BatchDecoder:
    """A Ray Data actor: loads the registered model once, then decodes the planned batches of one
    block per call."""

    def __init__(self, package_uri: str, tracking_uri: str, generation: dict[str, Any], threads: int,
                 inject_kill: list[Any] | None = None):
        import torch

        from pipeline.inference import Translator
        from pipeline.registry import fetch_package

        torch.set_num_threads(threads)
        # The package pyfunc's load_context would load, without pyfunc: the same Translator.
        self.translator = Translator(fetch_package(package_uri, tracking_uri))
        self.generation = generation
        self.inject_kill = inject_kill

    def __call__(self, block):
        """Decode each planned batch of a block of them (one table row each), in turn."""
        import pyarrow as pa

        out: dict[str, list] = {"batch": [], "lines": [], "translations": [], "out_tokens": []}
        columns = (block[name].to_pylist() for name in ("batch", "lines", "lengths", "ids"))
        for plan_batch, lines, lengths, flat in zip(*columns):
            if self.inject_kill is not None:
                _kill_once(plan_batch, *self.inject_kill)
            src, start = [], 0
            for n in lengths:
                src.append(flat[start : start + n])
                start += n
            hyps = self.translator.generate_batch(src, self.generation)
            out["batch"].append(plan_batch)
            out["lines"].append(lines)
            out["translations"].append([self.translator.tokenizer.decode(h) for h in hyps])
            out["out_tokens"].append(sum(len(h) for h in hyps))
        return pa.table(out)


def _kill_once(plan_batch: int, at_batch: int, marker: str) -> None:
    import signal

    if plan_batch == at_batch and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        print(f"[translate] injected failure: the actor decoding batch {at_batch} kills itself", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Plan:
    """The decoding batches of a corpus, as Translator.translate would cut them (no Ray needed)."""

    model_uri: str  # as given (may name an alias)
    version_uri: str  # the concrete version, even if the alias moves meanwhile
    package_uri: str  # that version's package folder (an artifact URI), which every actor loads
    model_name: str
    model_version: int
    generation: dict[str, Any]
    ids: list[list[int]]  # each line's source token ids
    batches: list[list[int]]  # line numbers (0-based) per decoding batch, shortest batch first

    @property
    def padding_fraction(self) -> float:
        """Share of the encoder's input that is padding, over every batch."""
        padded = sum(len(b) * max(len(self.ids[i]) for i in b) for b in self.batches)
        return 1 - sum(len(x) for x in self.ids) / padded if padded else 0.0

    def metadata(self) -> dict[str, Any]:
        return {"model_uri": self.model_uri, "model_name": self.model_name, "model_version": self.model_version,
                "generation": self.generation, "lines": len(self.ids), "batches": len(self.batches)}


def plan_translation(model_uri: str, sources: list[str], tracking_uri: str, overrides: dict[str, Any] | None = None) -> Plan:
    """Resolve the model to a version, load it once here, encode `sources` and cut the batches.

    `overrides` change the decoding (beam_size, max_len, length_penalty, batch_size) as
    Translator.translate's do. Raises TranslateError for a URI that is not in the registry.
    """
    from pipeline.evaluate import resolve_version
    from pipeline.inference import Translator, length_batches
    from pipeline.registry import fetch_package, package_uri

    from mlflow import MlflowClient

    try:
        name, version = resolve_version(model_uri)
        MlflowClient().get_model_version(name, str(version))  # exists, before anything loads
    except ValueError as e:
        raise TranslateError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - MlflowException for an unknown name, version or alias
        raise TranslateError(f"{model_uri}: not in the registry at {tracking_uri} ({str(e).splitlines()[0]})") from None
    version_uri = f"models:/{name}/{version}"
    package = package_uri(name, version)
    translator = Translator(fetch_package(package, tracking_uri))
    gen = translator.decoding(**(overrides or {}))
    ids = translator.encode_sources(sources)
    batches = length_batches([len(x) for x in ids], int(gen.get("batch_size", 64)))
    return Plan(model_uri, version_uri, package, name, version, gen, ids, batches)


def translate_plan(
    plan: Plan,
    *,
    tracking_uri: str,
    actors: int | None = None,
    threads_per_actor: int = 1,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Decode the planned batches on a pool of Ray Data actors (Ray must be up).

    Returns the translations in input order and the run's figures. `actors` defaults to one per
    `threads_per_actor` CPUs of the cluster (every CPU in use), never more than there are batches.
    """
    import ray

    ids = plan.ids
    if not plan.batches:
        return [], {"actors": 0, "sentences_per_second": 0.0, "tokens_per_second": 0.0, "padding_fraction": 0.0}
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n_actors = max(1, min(actors or cpus // threads_per_actor, len(plan.batches)))
    # One row per planned batch, the longest first: they take longest, and starting them first
    # keeps the pool busy to the end instead of leaving one actor on a long tail.
    rows = [
        {"batch": b, "lines": idx, "lengths": [len(ids[i]) for i in idx], "ids": [t for i in idx for t in ids[i]]}
        for b, idx in reversed(list(enumerate(plan.batches)))
    ]
    inject_kill = translate_actor_kill()  # for fault-tolerance tests

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Blocks of planned batches, not one block per batch: each block costs Ray Data a task's round
    # trip (tens of ms), which on a small model is as long as decoding the batch itself (measured:
    # one block per batch of 64 ran at 0.5x the single-process loop). Several blocks per actor keep
    # the pool balanced to the end; at most 32 batches per block keep progress and a lost actor's
    # redone work small.
    n_blocks = min(len(rows), max(4 * n_actors, math.ceil(len(rows) / 32)))
    ds = ray.data.from_items(rows, override_num_blocks=n_blocks).map_batches(
        BatchDecoder,
        batch_size=None,  # a whole block per call; its planned batches decode one by one, unchanged
        batch_format="pyarrow",
        fn_constructor_kwargs={"package_uri": plan.package_uri, "tracking_uri": tracking_uri,
                               "generation": plan.generation, "threads": threads_per_actor, "inject_kill": inject_kill},
        compute=ray.data.ActorPoolStrategy(size=n_actors),
        num_cpus=threads_per_actor,
    )
    out: list[str | None] = [None if x else "" for x in ids]  # an empty line is in no batch: it stays empty
    done_lines, out_tokens, last_print = 0, 0, 0.0
    t0 = time.perf_counter()
    for row in ds.iter_rows():
        for i, text in zip(row["lines"], row["translations"]):
            if out[i] is not None:
                raise RuntimeError(f"line {i + 1} came back twice (batch {row['batch']})")
            out[i] = text
        done_lines += len(row["lines"])
        out_tokens += int(row["out_tokens"])
        now = time.perf_counter()
        if progress is not None and (now - last_print >= 2.0 or done_lines == len(ids)):
            last_print = now
            progress(f"translated {done_lines}/{len(ids)} lines  {done_lines / max(now - t0, 1e-9):.0f} sentences/s  "
                     f"{out_tokens / max(now - t0, 1e-9):.0f} tokens/s  ({n_actors} actors)")
    seconds = time.perf_counter() - t0
    missing = [i + 1 for i, t in enumerate(out) if t is None]
    if missing:
        raise RuntimeError(f"{len(missing)} lines came back without a translation (first: line {missing[0]})")
    stats = {
        "actors": n_actors, "threads_per_actor": threads_per_actor, "seconds": round(seconds, 3),
        "sentences_per_second": round(len(ids) / seconds, 2), "output_tokens": out_tokens,
        "tokens_per_second": round(out_tokens / seconds, 2), "padding_fraction": round(plan.padding_fraction, 4),
    }
    return [t for t in out if t is not None], stats
