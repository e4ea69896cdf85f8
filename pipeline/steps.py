"""The pipeline's steps: prepare -> tokenizer -> encode -> train -> register -> evaluate.

Each step is a plain function of a StepContext (see pipeline/workflow.py) that writes its output
folder and returns a small JSON summary. The Ray work happens inside the data/ functions they call
(Ray tasks per shard) and in the training driver (Ray Train).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data.io import MANIFEST
from pipeline.workflow import Step, StepContext


# ---- prepare: read, clean, split and shard the corpus into Parquet (Ray tasks) ---------------
def prepare(ctx: StepContext) -> dict[str, Any]:
    from data.prepare import prepare_raw_shards

    report = prepare_raw_shards(ctx.cfg.data, str(ctx.out_dir), seed=ctx.cfg.seed)
    return {
        "input": report.get("input"),
        "kept": report.get("kept"),
        "rejected": report.get("rejected"),
        "splits": report.get("splits"),
    }


def raw_shards(prepare_dir: Path) -> list[str]:
    manifest = json.loads((prepare_dir / MANIFEST).read_text(encoding="utf-8"))
    return [str(prepare_dir / s["file"]) for s in manifest["shards"]]


# ---- tokenizer: byte-level BPE counted by Ray tasks over the train split ----------------------
def tokenizer(ctx: StepContext) -> dict[str, Any]:
    from data.tokenizer import train_tokenizer

    tok = train_tokenizer(ctx.cfg.tokenizer, raw_shards(ctx.input_dir("prepare")), text_columns=("src", "tgt"), split="train")
    tok.save(ctx.out_dir)
    return {"vocab_size": tok.vocab_size, "fingerprint": tok.fingerprint}


# ---- encode: token-id Parquet shards per split (Ray tasks) -----------------------------------
def encode(ctx: StepContext) -> dict[str, Any]:
    from data.encode import encode_shards

    manifest = encode_shards(
        str(ctx.input_dir("prepare")),
        str(ctx.input_dir("tokenizer")),
        str(ctx.out_dir),
        max_tokens_per_side=ctx.cfg.data.max_tokens_per_side,
        config_hash=ctx.cfg.fingerprint("data", "tokenizer"),
        write_rejects=ctx.cfg.data.write_rejects,
    )
    return {"rows": {split: sum(s["rows"] for s in shards) for split, shards in manifest["splits"].items()}}


def token_shards(encode_dir: Path, split: str) -> list[str]:
    manifest = json.loads((encode_dir / MANIFEST).read_text(encoding="utf-8"))
    return [str(encode_dir / s["file"]) for s in manifest["splits"].get(split, [])]


# ---- train: Ray Train TorchTrainer, 2 DDP workers, Lightning inside ---------------------------
def train(ctx: StepContext) -> dict[str, Any]:
    import dataclasses

    import mlflow
    from safetensors.torch import load_model

    from data.tokenizer import load_tokenizer
    from model.transformer import Transformer
    from pipeline.tracking import log_dict_params, log_training_pictures
    from pipeline.train import check_training_inputs, run_training
    from pipeline.translate import save_model_package

    cfg = ctx.cfg
    # an empty split or a pair longer than train.max_tokens: one line now, not after Ray Train's retries
    check_training_inputs(cfg, token_shards(ctx.input_dir("encode"), "train"), token_shards(ctx.input_dir("encode"), "valid"))
    tok_dir = ctx.input_dir("tokenizer")
    tok = load_tokenizer(tok_dir)
    # The model's vocabulary and special ids come from the tokenizer, never from hand-set config.
    model_cfg = dataclasses.replace(
        cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id
    )
    cfg = dataclasses.replace(cfg, model=model_cfg)

    # A fixed validation sample for BLEU during training (greedy decoding on rank 0's schedule).
    valid_raw = _split_texts(raw_shards(ctx.input_dir("prepare")), "valid", limit=32)
    valid_ids = tok.encode_batch([s for s, _ in valid_raw])
    bleu_sample = [(ids[: model_cfg.max_seq_len - 1] + [tok.eos_id], ref) for ids, (_, ref) in zip(valid_ids, valid_raw)]

    # One MLflow run per training, created on the driver (the step's nested run, see
    # runner.mlflow_step_run; an interrupted attempt's run is continued); its id goes to the workers.
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("the train step runs inside an MLflow run (pipeline.runner.mlflow_step_run)")
    if "train.max_steps" not in mlflow.get_run(run.info.run_id).data.params:
        log_dict_params(cfg.to_dict())
    mlflow.set_tags({"tpipe.tokenizer_fingerprint": tok.fingerprint})
    # Workers read the tokenizer and shards from where they are stored (the URIs of a remote root:
    # a worker's machine may not share this one's disk); the BLEU sample travels as data.
    metrics = run_training(
        cfg,
        tokenizer_dir=ctx.input_location("tokenizer"),
        train_shards=_shard_locations(ctx, "train"),
        valid_shards=_shard_locations(ctx, "valid"),
        bleu_sample=bleu_sample,
        tracking_uri=mlflow.get_tracking_uri(),
        mlflow_run_id=run.info.run_id,
        storage_path=cfg.train.storage_path or _default_storage_path(ctx),
        name=f"train-{ctx.final_dir.name}",
        out_dir=ctx.out_dir,
    )
    model = Transformer(model_cfg)
    load_model(model, str(ctx.out_dir / "model.safetensors"))
    generation = {
        "beam_size": cfg.eval.beam_size,
        "length_penalty": cfg.eval.length_penalty,
        "max_len": cfg.eval.max_len,
        "batch_size": cfg.eval.batch_size,
    }
    save_model_package(ctx.out_dir / "package", model, model_cfg, generation, tok_dir)
    (ctx.out_dir / "model.safetensors").unlink()  # the package holds the weights now
    n_params = model.num_parameters()
    mlflow.log_metric("model/parameters", n_params)
    example = (valid_ids[0], tok.encode(valid_raw[0][1]))
    log_training_pictures(run.info.run_id, model.eval(), tok, example, ctx.state_dir)
    from pipeline.translate import Translator

    sample = valid_raw[:16]
    hyps = Translator(ctx.out_dir / "package").translate([s for s, _ in sample])
    mlflow.log_table(
        {"source": [s for s, _ in sample], "reference": [r for _, r in sample], "translation": hyps},
        "samples/validation_translations.json",
    )
    return {"mlflow_run_id": run.info.run_id, "metrics": metrics, "parameters": n_params}


def _shard_locations(ctx: StepContext, split: str) -> list[str]:
    """A split's token shards as training workers open them (URIs when the artifact root is remote)."""
    encode_dir = ctx.input_dir("encode")
    return [ctx.input_location("encode", Path(p).relative_to(encode_dir).as_posix()) for p in token_shards(encode_dir, split)]


def _default_storage_path(ctx: StepContext) -> str:
    """Ray Train's checkpoints: beside the artifact root, on it when it is remote (every node reaches it)."""
    if ctx.run.remote is not None:
        return ctx.run.remote.uri_of("ray_results")
    return str(ctx.run.artifacts.parent / "ray_results")


def _split_texts(shards: list[str], split: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(src, tgt) pairs of one split from raw Parquet shards, in shard order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: list[tuple[str, str]] = []
    for path in shards:
        t = pq.read_table(path, columns=["src", "tgt", "split"])
        t = t.filter(pc.equal(t["split"], split))
        out += list(zip(t["src"].to_pylist(), t["tgt"].to_pylist()))
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


STEPS = [
    Step("prepare", prepare, ("seed", "data"), description="read, clean, split and shard the corpus (Ray tasks)"),
    Step("tokenizer", tokenizer, ("seed", "tokenizer"), ("prepare",), description="train the tokenizer (Ray tasks)"),
    Step("encode", encode, ("data.max_tokens_per_side", "data.write_rejects"), ("prepare", "tokenizer"),
         description="token-id shards (Ray tasks)"),
    Step("train", train, ("seed", "model", "train", "eval"), ("prepare", "tokenizer", "encode"), description="Ray Train + Lightning DDP"),
]


HELD_OUT_SPLITS = ("valid", "test")


# ---- register: the model package becomes a version of a registered model ---------------------
def register(ctx: StepContext) -> dict[str, Any]:
    import shutil

    import mlflow

    from pipeline.registry import log_and_register
    from pipeline.translate import write_json

    cfg = ctx.cfg
    train_summary = ctx.inputs["train"].summary
    package = ctx.out_dir / "package"
    shutil.copytree(ctx.input_dir("train") / "package", package)
    lineage = lineage_of(ctx)
    write_json(package / "lineage.json", lineage)
    (package / "README.md").write_text(model_card(cfg, lineage, train_summary), encoding="utf-8")
    tags = {
        "tpipe.tokenizer_fingerprint": lineage["tokenizer_fingerprint"],
        "tpipe.config_hash": lineage["config_hash"],
        "tpipe.code_version": lineage["code_version"],
        "tpipe.git_commit": lineage["git_commit"] or "unknown",
        "tpipe.step_keys": json.dumps(lineage["step_keys"], sort_keys=True),
        "tpipe.src_lang": cfg.data.src_lang,
        "tpipe.tgt_lang": cfg.data.tgt_lang,
    }
    with mlflow.start_run(run_id=train_summary["mlflow_run_id"], nested=True):
        info = log_and_register(package, cfg.registry.model_name, tags=tags)
        mlflow.log_dict(lineage, "lineage.json")
        # The held-out splits travel with the version's run, so `tpipe evaluate --split test` works
        # on a machine that never saw the pipeline's artifacts (pipeline/evaluate.py).
        for split in HELD_OUT_SPLITS:
            pairs = _split_texts(raw_shards(ctx.input_dir("prepare")), split)
            mlflow.log_text("".join(json.dumps({"src": a, "tgt": b}, ensure_ascii=False) + "\n" for a, b in pairs),
                            f"data/{split}.jsonl")
    return info | {"model_name": cfg.registry.model_name}


def _registered_version_exists(out_dir: Path, summary: dict[str, Any]) -> bool:
    """A cached registration is valid only if the registry still has that version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_model_version(summary["model_name"], str(summary["version"]))
        return True
    except MlflowException:
        return False


def lineage_of(ctx: StepContext) -> dict[str, Any]:
    """Where the model came from: shard hashes, tokenizer fingerprint, config hash, code."""
    import subprocess

    enc = json.loads((ctx.input_dir("encode") / MANIFEST).read_text(encoding="utf-8"))
    shard_hashes = {split: [s.get("sha256") for s in shards] for split, shards in enc["splits"].items()}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "corpus_shards": shard_hashes,
        "tokenizer_fingerprint": ctx.inputs["tokenizer"].summary["fingerprint"],
        "config_hash": ctx.cfg.fingerprint(),
        "code_version": ctx.run.version,
        "git_commit": commit,
        "step_keys": {name: r.key for name, r in ctx.inputs.items()},
    }


def model_card(cfg, lineage: dict[str, Any], train_summary: dict[str, Any]) -> str:
    m = cfg.model
    metrics = train_summary.get("metrics", {})
    return f"""# {cfg.registry.model_name}

Encoder-decoder Transformer trained by tpipe on `{cfg.data.source}` data ({cfg.data.src_lang} -> {cfg.data.tgt_lang}).

| | |
|---|---|
| d_model / heads / layers | {m.d_model} / {m.n_heads} / {m.n_encoder_layers}+{m.n_decoder_layers} |
| d_ff / norm / positional / ffn | {m.d_ff} / {m.norm}-{m.norm_position} / {m.positional} / {m.ffn} |
| parameters | {train_summary.get("parameters")} |
| steps | {metrics.get("step")} |
| final validation loss | {metrics.get("val/loss", float("nan")):.4f} |
| tokenizer fingerprint | `{lineage["tokenizer_fingerprint"]}` |
| config hash | `{lineage["config_hash"]}` |
| code version / git commit | `{lineage["code_version"]}` / `{lineage["git_commit"]}` |

Load it with `mlflow.pyfunc.load_model("models:/{cfg.registry.model_name}@champion").predict(["..."])`.
Corpus shard hashes are in `lineage.json`.
"""


# ---- evaluate: pull the registered model through MLflow, score it, maybe promote it ----------
def evaluate(ctx: StepContext) -> dict[str, Any]:
    import mlflow

    from pipeline.evaluate import data_identity, evaluate_pyfunc, record_evaluation, score
    from pipeline.registry import CHAMPION, alias_version, promote_if_better
    from pipeline.translate import write_json

    cfg = ctx.cfg
    reg = ctx.inputs["register"].summary
    name, version = reg["model_name"], reg["version"]
    pairs = _split_texts(raw_shards(ctx.input_dir("prepare")), "test")
    if cfg.eval.max_sentences:
        pairs = pairs[: cfg.eval.max_sentences]
    if not pairs:
        raise RuntimeError("the test split is empty; raise data.test_fraction or add data")
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    data = data_identity(pairs, f"split:test of {ctx.input_dir('prepare')}", split="test")
    result = evaluate_pyfunc(f"models:/{name}/{version}", sources, refs, cfg.data.tgt_lang, data=data)
    record_evaluation(name, version, result, canonical=True)
    # The champion is scored on these same sentences, pulled from the registry as users get it:
    # promotion compares results on the same data only.
    holder = alias_version(name, CHAMPION)
    held = None if holder in (None, version) else evaluate_pyfunc(f"models:/{name}/{holder}", sources, refs, cfg.data.tgt_lang, data=data)
    promoted, message = promote_if_better(name, version, cfg.registry.promote_metric, result, held)
    champion = result if promoted else held
    baseline = score(sources, refs, cfg.data.tgt_lang)  # copy-the-source baseline
    mlflow.log_metrics({f"{prefix}/{k}": r[k] for prefix, r in (("champion", champion), ("baseline_copy", baseline))
                        for k in ("bleu", "chrf", "ter", "exact_match")})
    report = {
        "model": f"models:/{name}/{version}",
        "candidate": {k: result[k] for k in ("bleu", "chrf", "ter", "exact_match", "length_ratio", "sentences_per_second")},
        "champion": {k: champion[k] for k in ("bleu", "chrf", "ter", "exact_match")} | {"uri": f"models:/{name}@{CHAMPION}"},
        "baseline_copy": {k: baseline[k] for k in ("bleu", "chrf", "ter", "exact_match")},
        "promoted": promoted,
        "promotion": message,
        "signature": result["signature"],
        "n_sentences": len(pairs),
        "samples": result["samples"][:8],
    }
    write_json(ctx.out_dir / "evaluation.json", report)
    return report


STEPS += [
    Step("register", register, ("registry",), ("prepare", "tokenizer", "encode", "train"),
         verify=_registered_version_exists, description="register the model in MLflow (alias candidate)"),
    Step("evaluate", evaluate, ("eval", "registry"), ("prepare", "register"),
         description="evaluate via models:/NAME, promote @champion if better"),
]
