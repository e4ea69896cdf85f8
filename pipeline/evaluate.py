"""Scores for translations (sacrebleu BLEU, chrF, TER, exact match, length ratio) and model evaluation."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any


def bleu_tokenizer(tgt_lang: str) -> str:
    """sacrebleu's tokenizer for the target language: 'zh' segments CJK characters, else '13a'."""
    return {"zh": "zh", "ja": "char", "ko": "char"}.get(tgt_lang, "13a")


def score(hypotheses: list[str], references: list[str], tgt_lang: str = "en") -> dict[str, Any]:
    """Corpus-level scores. `signature` holds sacrebleu's reproducibility signatures.

    >>> score(["a b c"], ["a b c"])["exact_match"]
    100.0
    """
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise ValueError("no references to score against")
    bleu = sacrebleu.metrics.BLEU(tokenize=bleu_tokenizer(tgt_lang))
    chrf = sacrebleu.metrics.CHRF()
    ter = sacrebleu.metrics.TER(asian_support=tgt_lang in ("zh", "ja", "ko"))
    refs = [references]
    b, c, t = bleu.corpus_score(hypotheses, refs), chrf.corpus_score(hypotheses, refs), ter.corpus_score(hypotheses, refs)
    hyp_len = sum(len(h) for h in hypotheses)
    ref_len = sum(len(r) for r in references)
    return {
        "bleu": round(b.score, 4),
        "chrf": round(c.score, 4),
        "ter": round(t.score, 4),
        "exact_match": round(100.0 * sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references), 4),
        "length_ratio": round(hyp_len / max(ref_len, 1), 4),
        "n_sentences": len(references),
        "signature": {
            "bleu": str(bleu.get_signature()),
            "chrf": str(chrf.get_signature()),
            "ter": str(ter.get_signature()),
        },
    }


def evaluate_pyfunc(
    model_uri: str, sources: list[str], references: list[str], tgt_lang: str, params: dict[str, Any] | None = None,
    translate=None,
) -> dict[str, Any]:
    """Load a registered model through MLflow (as a user would) and score it on (sources, references).

    `params` change the decoding for this evaluation, e.g. {"beam_size": 5}. `translate`, when
    given, produces the translations instead of the loaded model's predict (`tpipe evaluate` passes
    the Ray Data path of pipeline/batch_translate.py for a large set: the same output, on every CPU).
    """
    import mlflow

    import warnings

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints.*")
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if translate is not None:
        hyps = list(translate(sources))
    else:
        hyps = list(pyfunc.predict(sources, params=params) if params else pyfunc.predict(sources))
    decode_s = time.perf_counter() - t0
    result = score(hyps, references, tgt_lang)
    # Loss and perplexity need the network itself, not just its translations.
    nll_sum, n_tokens = pyfunc.unwrap_python_model().translator.nll(sources, references)
    loss = nll_sum / max(n_tokens, 1)
    result.update(
        {
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


METRICS = ("bleu", "chrf", "ter", "exact_match", "length_ratio", "loss", "perplexity")


def resolve_version(model_uri: str) -> tuple[str, int]:
    """models:/NAME/VERSION or models:/NAME@ALIAS -> (NAME, VERSION)."""
    from mlflow import MlflowClient

    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri!r} is not a registered model URI (models:/NAME/VERSION or models:/NAME@ALIAS)")
    rest = model_uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, int(MlflowClient().get_model_version_by_alias(name, alias).version)
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{model_uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    return name, int(version)


def step_keys_of_version(name: str, version: int) -> dict[str, str]:
    """The workflow step keys a registered version was made from (its `tpipe.step_keys` tag)."""
    import json

    from mlflow import MlflowClient

    tag = MlflowClient().get_model_version(name, str(version)).tags.get("tpipe.step_keys")
    if tag is None:
        raise ValueError(f"models:/{name}/{version} has no tpipe.step_keys tag: it was not registered by tpipe run")
    return json.loads(tag)


def split_pairs_of_version(name: str, version: int, split: str) -> list[tuple[str, str]]:
    """The (source, reference) pairs of `split` from the data the version was trained on.

    From the pipeline's prepared shards when they are on this machine; otherwise from the copy the
    register step logged with the version's run (`data/<split>.jsonl`), through the tracking server.
    """
    import json

    import mlflow
    from mlflow import MlflowClient

    from pipeline.home import Home
    from pipeline.steps import _split_texts, raw_shards

    key = step_keys_of_version(name, version)["prepare"]
    prepare_dir = Home.resolve().artifacts / "prepare" / key
    if (prepare_dir / "manifest.json").exists():
        return _split_texts(raw_shards(prepare_dir), split)
    run_id = MlflowClient().get_model_version(name, str(version)).run_id
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/data/{split}.jsonl")
    except Exception as e:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
        raise FileNotFoundError(
            f"the {split} split of models:/{name}/{version} is neither on this machine ({prepare_dir}) nor logged "
            f"with its run {run_id} (data/{split}.jsonl: {e}); give --data FILE.tsv instead"
        ) from e
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(r["src"], r["tgt"]) for r in rows]


def record_evaluation(name: str, version: int, result: dict[str, Any], *, data: str) -> str:
    """Tag the version with its scores and log an evaluation run linked to it; returns the run id."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    for metric in ("bleu", "chrf", "ter", "exact_match"):
        client.set_model_version_tag(name, str(version), f"eval.{metric}", str(result[metric]))
    active = mlflow.active_run()  # the pipeline's evaluate step already runs in its own nested run
    in_step = active is not None and mlflow.get_run(active.info.run_id).data.tags.get("tpipe.step") == "evaluate"
    if in_step:
        scope = nullcontext(active)
    else:
        # Beside the run that made the version (its experiment), where the version's owner may
        # write, rather than in whatever experiment this shell happens to point at.
        source_run = client.get_model_version(name, str(version)).run_id
        experiment_id = client.get_run(source_run).info.experiment_id if source_run else None
        scope = mlflow.start_run(run_name=f"evaluate-{name}-v{version}", nested=active is not None,
                                 experiment_id=None if active is not None else experiment_id)
    with scope as run:
        mlflow.set_tags({"tpipe.step": "evaluate", "tpipe.model_name": name, "tpipe.model_version": str(version),
                         "tpipe.eval_data": data, "sacrebleu.signature": result["signature"]["bleu"]})
        mlflow.log_metrics({f"test/{k}": float(result[k]) for k in METRICS})
        mlflow.log_metric("test/sentences_per_second", result["sentences_per_second"])
        mlflow.log_dict({"signature": result["signature"], "samples": result["samples"]}, "evaluation/samples.json")
        return run.info.run_id
