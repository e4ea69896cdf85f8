"""Evaluation of a registered model: load it through MLflow, score it (pipeline/metrics.py), record the result."""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from data.errors import UserError
from pipeline.metrics import score


class EvaluationError(UserError, ValueError):
    """A model URI, data file, split or language an evaluation cannot use."""


def data_identity(pairs: list[tuple[str, str]], data: str, split: str | None = None) -> dict[str, Any]:
    """What an evaluation is measured on: a label, the split (None for a file), a hash and the size.

    Two results are comparable only when their `sha256` match (the same pairs in the same order).
    """
    h = hashlib.sha256()
    for source, reference in pairs:
        h.update(json.dumps([source, reference], ensure_ascii=False).encode())
        h.update(b"\n")
    return {"data": data, "split": split, "sha256": h.hexdigest(), "n_sentences": len(pairs)}


EVAL_CHUNK = 512  # sentences per predict call (several decoding batches; sorted by length within)


def evaluate_pyfunc(
    model_uri: str, sources: list[str], references: list[str], tgt_lang: str, params: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    translate=None,
) -> dict[str, Any]:
    """Load a registered model through MLflow (as a user would) and score it on (sources, references).

    `params` change the decoding for this evaluation, e.g. {"beam_size": 5}; without them the
    model decodes with its own settings. The result records the decoding used and `data`
    (data_identity of the pairs, computed here when not given). `translate`, when given, produces
    the translations instead of the loaded model's predict (`tpipe evaluate` passes the Ray Data
    path of pipeline/batch_translate.py for a large set: the same output, on every CPU).
    """
    import warnings

    import mlflow

    from data.progress import Progress

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints.*")
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if translate is not None:
        hyps = list(translate(sources))
    else:
        hyps: list[str] = []
        progress = Progress(f"evaluate {model_uri}", len(sources), "sentences")
        for start in range(0, len(sources), EVAL_CHUNK):  # a chunk per call, so progress can be reported
            chunk = sources[start : start + EVAL_CHUNK]
            hyps += list(pyfunc.predict(chunk, params=params) if params else pyfunc.predict(chunk))
            progress.update(len(chunk))
        progress.close()
    decode_s = time.perf_counter() - t0
    result = score(hyps, references, tgt_lang)
    # Loss, perplexity and the decoding settings need the translator itself, not just its output.
    translator = pyfunc.unwrap_python_model().translator
    nll_sum, n_tokens = translator.nll(sources, references)
    loss = nll_sum / max(n_tokens, 1)
    decoding = {k: translator.generation.get(k) for k in ("beam_size", "max_len", "max_len_a", "max_len_b", "length_penalty")}
    decoding |= {k: v for k, v in (params or {}).items() if v is not None}
    result.update(
        {
            "data": data or data_identity(list(zip(sources, references)), "pairs"),
            "decoding": decoding,
            "tgt_lang": tgt_lang,
            "loss": round(loss, 5),
            "perplexity": round(math.exp(min(loss, 50.0)), 4),
            "model_uri": model_uri,
            "load_seconds": round(load_s, 3),
            "sentences_per_second": round(len(sources) / max(decode_s, 1e-9), 2),
            "samples": [
                {"source": s, "reference": r, "hypothesis": h} for s, r, h in list(zip(sources, references, hyps))[:20]
            ],
        }
    )
    return result


HELD_OUT_SPLITS = ("valid", "test")


def log_held_out_splits(prepare_dir: Path) -> None:
    """Log the held-out splits with the active run (the version's), so `tpipe evaluate --split test`
    works on a machine that never saw the pipeline's artifacts (read back by split_pairs_of_version)."""
    import mlflow

    from data.shards import raw_shards, split_texts

    for split in HELD_OUT_SPLITS:
        pairs = split_texts(raw_shards(prepare_dir), split)
        mlflow.log_text("".join(json.dumps({"src": a, "tgt": b}, ensure_ascii=False) + "\n" for a, b in pairs),
                        f"data/{split}.jsonl")


def evaluate_and_promote(name: str, version: int, pairs: list[tuple[str, str]], data: dict[str, Any], tgt_lang: str,
                         promote_metric: str) -> dict[str, Any]:
    """The pipeline's evaluation of a new version: score it, record it, score the champion on the same
    sentences, promote the version if it is better, log both and a copy-the-source baseline."""
    import mlflow

    from pipeline.registry import CHAMPION, alias_version, promote_if_better

    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    result = evaluate_pyfunc(f"models:/{name}/{version}", sources, refs, tgt_lang, data=data)
    record_evaluation(name, version, result, canonical=True)
    # The champion is scored on these same sentences, pulled from the registry as users get it:
    # promotion compares results on the same data only.
    holder = alias_version(name, CHAMPION)
    held = None if holder in (None, version) else evaluate_pyfunc(f"models:/{name}/{holder}", sources, refs, tgt_lang, data=data)
    promoted, message = promote_if_better(name, version, promote_metric, result, held)
    champion = result if promoted else held
    baseline = score(sources, refs, tgt_lang)  # copy-the-source baseline
    mlflow.log_metrics({f"{prefix}/{k}": r[k] for prefix, r in (("champion", champion), ("baseline_copy", baseline))
                        for k in RECORDED})
    return {
        "model": f"models:/{name}/{version}",
        "candidate": {k: result[k] for k in ("bleu", "chrf", "ter", "exact_match", "length_ratio", "sentences_per_second")},
        "champion": {k: champion[k] for k in RECORDED} | {"uri": f"models:/{name}@{CHAMPION}"},
        "baseline_copy": {k: baseline[k] for k in RECORDED},
        "promoted": promoted,
        "promotion": message,
        "signature": result["signature"],
        "n_sentences": len(pairs),
        "samples": result["samples"][:8],
    }


METRICS = ("bleu", "chrf", "ter", "exact_match", "length_ratio", "loss", "perplexity")


def resolve_version(model_uri: str) -> tuple[str, int]:
    """models:/NAME/VERSION or models:/NAME@ALIAS -> (NAME, VERSION); ModelNotFound (one line) if none."""
    from pipeline.registry import resolve_model_uri

    return resolve_model_uri(model_uri)


def step_keys_of_version(name: str, version: int) -> dict[str, str]:
    """The workflow step keys a registered version was made from (its `tpipe.step_keys` tag)."""
    import json

    from mlflow import MlflowClient

    tag = MlflowClient().get_model_version(name, str(version)).tags.get("tpipe.step_keys")
    if tag is None:
        raise ValueError(f"models:/{name}/{version} has no tpipe.step_keys tag: it was not registered by tpipe run")
    return json.loads(tag)


def check_split(split: str) -> None:
    """`--split nosuch` -> one line listing the splits a pipeline writes."""
    from data.shards import SPLITS

    if split not in SPLITS:
        raise EvaluationError(f"--split {split!r}: no such split; the splits are {', '.join(SPLITS)}")


def split_pairs_of_version(name: str, version: int, split: str) -> list[tuple[str, str]]:
    """The (source, reference) pairs of `split` from the data the version was trained on.

    From the pipeline's prepared shards when they are on this machine; otherwise from the copy the
    register step logged with the version's run (`data/<split>.jsonl`), through the tracking server.
    """
    import json

    import mlflow
    from mlflow import MlflowClient

    from data.io import MANIFEST
    from pipeline.home import Home
    from data.shards import raw_shards, split_texts

    key = step_keys_of_version(name, version)["prepare"]
    prepare_dir = Home.resolve().artifacts / "prepare" / key
    if (prepare_dir / MANIFEST).exists():
        pairs = split_texts(raw_shards(prepare_dir), split)
    else:
        run_id = MlflowClient().get_model_version(name, str(version)).run_id
        try:
            text = mlflow.artifacts.load_text(f"runs:/{run_id}/data/{split}.jsonl")
        except Exception as e:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
            raise EvaluationError(
                f"the {split} split of models:/{name}/{version} is neither on this machine ({prepare_dir}) nor logged "
                f"with its run {run_id} (data/{split}.jsonl: {str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                "give --data FILE.tsv instead"
            ) from e
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        pairs = [(r["src"], r["tgt"]) for r in rows]
    if not pairs:
        raise EvaluationError(f"the {split} split of models:/{name}/{version} is empty; give --data FILE.tsv")
    return pairs


def model_tgt_lang(name: str, version: int) -> str:
    """The language a version translates into: its `tpipe.tgt_lang` tag, else its training run's
    `data.tgt_lang` param (versions registered before the tag existed)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    mv = client.get_model_version(name, str(version))
    lang = mv.tags.get("tpipe.tgt_lang")
    if lang is None and mv.run_id:
        lang = client.get_run(mv.run_id).data.params.get("data.tgt_lang")
    if lang is None:
        raise EvaluationError(f"models:/{name}/{version} does not record its target language; give --tgt-lang")
    return lang


def evaluation_key(result: dict[str, Any]) -> str:
    """One key per (data, decoding, target language): the same measurement gets the same key."""
    blob = json.dumps({"data": result["data"]["sha256"], "decoding": result["decoding"], "tgt_lang": result["tgt_lang"]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


RECORDED = ("bleu", "chrf", "ter", "exact_match")


def record_evaluation(name: str, version: int, result: dict[str, Any], *, canonical: bool = False) -> str:
    """Log an evaluation run linked to the version and tag the version with the result; returns the run id.

    Every evaluation is one version tag `eval.<key>` (JSON: data, decoding, scores, run), keyed by
    what it was measured on, so an evaluation on other data never replaces another's record. The
    flat `eval.bleu`, `eval.chrf`, ... tags are the version's test-split scores (`canonical`: the
    pipeline's evaluation, or `tpipe evaluate --split test` with the model's own decoding), with
    `eval.data_sha256` saying which sentences; written by the first such evaluation only, and
    never by an evaluation on other data.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    data, key = result["data"], evaluation_key(result)
    active = mlflow.active_run()  # the pipeline's evaluate step already runs in its own nested run
    in_step = active is not None and mlflow.get_run(active.info.run_id).data.tags.get("tpipe.step") == "evaluate"
    if in_step:
        scope = nullcontext(active)
    else:
        # Beside the run that made the version (its experiment), where the version's owner may
        # write, rather than in whatever experiment this shell happens to point at.
        source_run = client.get_model_version(name, str(version)).run_id
        experiment_id = client.get_run(source_run).info.experiment_id if source_run else None
        label = data["split"] or Path(data["data"]).name
        scope = mlflow.start_run(run_name=f"evaluate-{name}-v{version}-{label}-{time.strftime('%Y%m%d-%H%M%S')}",
                                 nested=active is not None, experiment_id=None if active is not None else experiment_id)
    with scope as run:
        mlflow.set_tags({
            "tpipe.step": "evaluate", "tpipe.model_name": name, "tpipe.model_version": str(version),
            "tpipe.eval_data": data["data"], "tpipe.eval_split": data["split"] or "", "tpipe.eval_data_sha256": data["sha256"],
            "tpipe.eval_n_sentences": str(data["n_sentences"]), "tpipe.eval_key": key,
            "tpipe.eval_decoding": json.dumps(result["decoding"], sort_keys=True),
            "sacrebleu.signature": result["signature"]["bleu"],
        })
        mlflow.log_metrics({f"test/{k}": float(result[k]) for k in METRICS})
        mlflow.log_metric("test/sentences_per_second", result["sentences_per_second"])
        mlflow.log_dict({"signature": result["signature"], "samples": result["samples"]}, "evaluation/samples.json")
        run_id = run.info.run_id
    # First record wins: a later evaluation of the same (data, decoding) has its own run, and
    # never replaces what the version already shows.
    tags = client.get_model_version(name, str(version)).tags
    record = {"data": data, "decoding": result["decoding"], "tgt_lang": result["tgt_lang"], "run_id": run_id}
    if f"eval.{key}" not in tags:
        client.set_model_version_tag(name, str(version), f"eval.{key}",
                                     json.dumps(record | {k: result[k] for k in RECORDED}, sort_keys=True, ensure_ascii=False))
    if canonical and "eval.bleu" not in tags:
        for metric in RECORDED:
            client.set_model_version_tag(name, str(version), f"eval.{metric}", str(result[metric]))
        for k, v in (("data", data["data"]), ("data_sha256", data["sha256"]), ("n_sentences", str(data["n_sentences"])),
                     ("decoding", json.dumps(result["decoding"], sort_keys=True)), ("key", key)):
            client.set_model_version_tag(name, str(version), f"eval.{k}", v)
    return run_id
