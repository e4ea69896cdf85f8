"""The pipeline's steps: prepare -> tokenizer -> encode -> train -> register -> evaluate.

Each step is a plain function of a StepContext (see pipeline/workflow.py) that writes its output
folder and returns a small JSON summary; it reads as a recipe, and the work lives in the functions
it calls. The Ray work happens inside the data/ functions they call (Ray tasks per shard) and in
the training driver (Ray Train, pipeline/train.py). `STEPS`, at the bottom, declares their order,
the config sections each depends on and their inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.shards import raw_shards, split_texts, token_files
from pipeline.workflow import Step, StepContext, ray_storage


# ---- prepare: read, clean, split and shard the corpus into Parquet (Ray tasks) ---------------
def prepare(ctx: StepContext) -> dict[str, Any]:
    from data.prepare import prepare_raw_shards

    report = prepare_raw_shards(ctx.cfg.data, str(ctx.out_dir), seed=ctx.cfg.seed, exchange=ctx.exchange())
    return {
        "input": report.get("input"),
        "kept": report.get("kept"),
        "rejected": report.get("rejected"),
        "splits": report.get("splits"),
    }


# ---- tokenizer: byte-level BPE counted by Ray tasks over the train split ----------------------
def tokenizer(ctx: StepContext) -> dict[str, Any]:
    from data.tokenizer import train_tokenizer

    tok = train_tokenizer(ctx.cfg.tokenizer, raw_shards(ctx.input_dir("prepare")), text_columns=("src", "tgt"),
                          split="train", exchange=ctx.exchange())
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
        exchange=ctx.exchange(),
    )
    return {"rows": {split: sum(s["rows"] for s in shards) for split, shards in manifest["splits"].items()}}


# ---- train: Ray Train TorchTrainer, 2 DDP workers, Lightning inside ---------------------------
def train(ctx: StepContext) -> dict[str, Any]:
    import mlflow

    from data.tokenizer import load_tokenizer
    from pipeline import package
    from pipeline.report import log_training_report
    from pipeline.train import FINAL_WEIGHTS, train_model, with_tokenizer_ids

    tok = load_tokenizer(ctx.input_dir("tokenizer"))
    cfg = with_tokenizer_ids(ctx.cfg, tok)
    valid_pairs = split_texts(raw_shards(ctx.input_dir("prepare")), "valid", limit=32)
    # Workers read the tokenizer and shards from where they are stored (the URIs of a remote root:
    # a worker's machine may not share this one's disk).
    model, metrics = train_model(
        cfg, tok, valid_pairs,
        shards={split: token_files(ctx.input_dir("encode"), split) for split in ("train", "valid")},
        locations={split: _shard_locations(ctx, split) for split in ("train", "valid")},
        tokenizer_location=ctx.input_location("tokenizer"),
        storage_path=cfg.train.storage_path or ray_storage(ctx.run.artifacts, ctx.run.remote),
        name=f"train-{ctx.final_dir.name}", out_dir=ctx.out_dir,
    )
    package.save(ctx.out_dir / "package", model, cfg.model, package.generation_settings(cfg.eval), ctx.input_dir("tokenizer"))
    (ctx.out_dir / FINAL_WEIGHTS).unlink()  # the package holds the weights now
    run_id = mlflow.active_run().info.run_id
    n_params = log_training_report(run_id, ctx.out_dir / "package", model, tok, valid_pairs, ctx.state_dir)
    return {"mlflow_run_id": run_id, "metrics": metrics, "parameters": n_params}


def _shard_locations(ctx: StepContext, split: str) -> list[str]:
    """A split's token shards as training workers open them (URIs when the artifact root is remote)."""
    encode_dir = ctx.input_dir("encode")
    return [ctx.input_location("encode", Path(p).relative_to(encode_dir).as_posix()) for p in token_files(encode_dir, split)]


# ---- register: the model package becomes a version of a registered model ---------------------
def register(ctx: StepContext) -> dict[str, Any]:
    import shutil

    import mlflow

    from data.io import write_json_atomic
    from data.progress import Progress
    from pipeline.evaluate import log_held_out_splits
    from pipeline.lineage import lineage, model_card, version_tags
    from pipeline.registry import log_and_register

    cfg, train_summary = ctx.cfg, ctx.inputs["train"].summary
    # copying the package, logging and registering it (its weights go to the artifact store), the held-out splits
    progress = Progress(f"register {cfg.registry.model_name}", total=3, unit="stages")
    package = ctx.out_dir / "package"
    shutil.copytree(ctx.input_dir("train") / "package", package)
    progress.update()
    record = lineage(ctx.input_dir("encode"), ctx.inputs["tokenizer"].summary["fingerprint"], cfg.fingerprint(),
                     ctx.run.version, {name: r.key for name, r in ctx.inputs.items()})
    write_json_atomic(package / "lineage.json", record, sort_keys=True)
    (package / "README.md").write_text(model_card(cfg, record, train_summary), encoding="utf-8")
    # Logged in this step's own run: reopening the training's run would change its end time.
    info = log_and_register(package, cfg.registry.model_name, tags=version_tags(cfg, record),
                            train_run_id=train_summary["mlflow_run_id"])
    mlflow.log_dict(record, "lineage.json")
    progress.update()
    log_held_out_splits(ctx.input_dir("prepare"))
    progress.update()
    progress.close()
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


# ---- evaluate: pull the registered model through MLflow, score it, maybe promote it ----------
def evaluate(ctx: StepContext) -> dict[str, Any]:
    from pipeline.evaluate import data_identity, evaluate_and_promote
    from data.io import write_json_atomic

    cfg, reg = ctx.cfg, ctx.inputs["register"].summary
    pairs = split_texts(raw_shards(ctx.input_dir("prepare")), "test")
    if cfg.eval.max_sentences:
        pairs = pairs[: cfg.eval.max_sentences]
    if not pairs:
        raise RuntimeError("the test split is empty; raise data.test_fraction or add data")
    data = data_identity(pairs, f"split:test of {ctx.input_dir('prepare')}", split="test")
    report = evaluate_and_promote(reg["model_name"], reg["version"], pairs, data, cfg.data.tgt_lang,
                                  cfg.registry.promote_metric)
    write_json_atomic(ctx.out_dir / "evaluation.json", report, sort_keys=True)
    return report


STEPS = [
    Step("prepare", prepare, ("seed", "data"), description="read, clean, split and shard the corpus (Ray tasks)"),
    Step("tokenizer", tokenizer, ("seed", "tokenizer"), ("prepare",), description="train the tokenizer (Ray tasks)"),
    Step("encode", encode, ("data.max_tokens_per_side", "data.write_rejects"), ("prepare", "tokenizer"),
         description="token-id shards (Ray tasks)"),
    Step("train", train, ("seed", "model", "train", "eval"), ("prepare", "tokenizer", "encode"), description="Ray Train + Lightning DDP"),
    Step("register", register, ("registry",), ("prepare", "tokenizer", "encode", "train"),
         verify=_registered_version_exists, description="register the model in MLflow (alias candidate)"),
    Step("evaluate", evaluate, ("eval", "registry"), ("prepare", "register"),
         description="evaluate via models:/NAME, promote @champion if better"),
]
