"""Training throughput: a plain single-process PyTorch loop against tpipe on Ray Train (1 and 2 workers).

    python bench/train.py [--steps 120] [--model tiny]

All three train the same model (conf/model/<model>.yaml) on the same token shards (the built-in
corpus, prepared once by the pipeline's own prepare/tokenizer/encode steps) with the same batches
(TokenBatchLoader, max_tokens per worker), one torch thread per worker:

  plain      the loop a user would write: forward, label-smoothed loss, backward, clip, AdamW step
  tpipe 1w   run_training with 1 Ray Train worker (Lightning + RayDDPStrategy + MLflow logging)
  tpipe 2w   the same with 2 workers (gloo DDP); tokens/s counts both workers

tokens/s = padded source + target tokens per second, measured after `--warmup` steps, from the
same in-loop clock for all three (tpipe's is the train/tokens_per_s metric logged by rank 0).
The three run interleaved, `--repeats` rounds, and the table gives each one's median: on a shared
2-core machine the same loop's speed drifts by 10-15 % from minute to minute, so one round apiece
would compare the machine's moods, not the loops.
Target: tpipe 1w within 10% of plain. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(home: Path, model: str, max_tokens: int):
    """Token shards and tokenizer from the pipeline's own first steps."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    cfg = load_config("default", [f"model={model}", f"train.max_tokens={max_tokens}", "ray.num_cpus=2"])
    out = run_pipeline(cfg, until_step="encode", quiet=True)
    return cfg, out["results"]


def plain_loop(cfg, tok_dir: Path, shards: list[str], steps: int, warmup: int) -> float:
    import dataclasses

    import torch
    import torch.nn.functional as F

    from data.loader import TokenBatchLoader
    from data.tokenizer import load_tokenizer
    from model.transformer import Transformer
    from pipeline.lightning_module import lr_lambda

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(tok_dir)
    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    model = Transformer(mcfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.train.schedule, cfg.train.warmup_steps, steps))
    loader = TokenBatchLoader(shards, max_tokens=cfg.train.max_tokens, pad_id=tok.pad_id, bos_id=tok.bos_id,
                              eos_id=tok.eos_id, seed=cfg.seed)
    step, tokens, t0 = 0, 0, None
    while step < steps:
        for batch in loader:
            if step == warmup:
                t0, tokens = time.perf_counter(), 0
            src, tgt = batch["src"], batch["tgt"]
            logits = model(src, tgt[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1),
                                   ignore_index=tok.pad_id, label_smoothing=cfg.train.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
            tokens += src.numel() + tgt.numel()
            step += 1
            if step >= steps:
                break
    return tokens / (time.perf_counter() - t0)


def tpipe_run(cfg, results, workers: int, steps: int, warmup: int, home: Path) -> float:
    import dataclasses

    import mlflow
    from mlflow import MlflowClient

    from data.tokenizer import load_tokenizer
    from pipeline.steps import token_shards
    from pipeline.train import run_training

    tok_dir = results["tokenizer"].out_dir
    tok = load_tokenizer(tok_dir)
    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    tcfg = dataclasses.replace(cfg.train, num_workers=workers, max_steps=steps, val_every_steps=steps, log_every_steps=10)
    run_cfg = dataclasses.replace(cfg, model=mcfg, train=tcfg)
    with mlflow.start_run(run_name=f"bench-{workers}w") as run:
        run_training(
            run_cfg, tokenizer_dir=tok_dir,
            train_shards=token_shards(results["encode"].out_dir, "train"),
            valid_shards=token_shards(results["encode"].out_dir, "valid"),
            bleu_sample=[], tracking_uri=mlflow.get_tracking_uri(), mlflow_run_id=run.info.run_id,
            storage_path=str(home / "bench_ray"), name=f"bench-{workers}w-{time.time_ns()}",
            out_dir=home / f"bench-{workers}w",
        )
        hist = MlflowClient().get_metric_history(run.info.run_id, "train/tokens_per_s")
    rates = [m.value for m in hist if m.step > warmup]
    return sum(rates) / len(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--model", default="tiny")
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the table shows medians")
    args = p.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tpipe-bench-train-"))
    os.environ["TPIPE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import ray

    ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1", log_to_driver=False)
    cfg, results = prepare(home, args.model, args.max_tokens)
    from pipeline.steps import token_shards

    shards = token_shards(results["encode"].out_dir, "train")
    runs: dict[str, list[float]] = {"plain": [], "1w": [], "2w": []}
    for r in range(args.repeats):
        runs["plain"].append(plain_loop(cfg, results["tokenizer"].out_dir, shards, args.steps, args.warmup))
        runs["1w"].append(tpipe_run(cfg, results, 1, args.steps, args.warmup, home))
        runs["2w"].append(tpipe_run(cfg, results, 2, args.steps, args.warmup, home))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f}" for k, v in runs.items()), flush=True)
    ray.shutdown()
    plain, one, two = (statistics.median(runs[k]) for k in ("plain", "1w", "2w"))

    rows = [("plain loop (1 process)", plain), ("tpipe, 1 Ray Train worker", one), ("tpipe, 2 Ray Train workers", two)]
    print(f"model {args.model}, {args.steps} steps ({args.warmup} warm-up), max_tokens {args.max_tokens}/worker, "
          f"1 thread/worker, median of {args.repeats} interleaved rounds")
    print(f"{'':30s} {'tokens/s':>10s} {'vs plain':>9s}")
    for name, v in rows:
        print(f"{name:30s} {v:10.0f} {v / plain:9.2f}")
    print(json.dumps({
        "model": args.model, "steps": args.steps, "max_tokens": args.max_tokens,
        "plain_tokens_per_s": round(plain), "tpipe_1w_tokens_per_s": round(one), "tpipe_2w_tokens_per_s": round(two),
        "tpipe_1w_vs_plain": round(one / plain, 3), "tpipe_2w_vs_plain": round(two / plain, 3),
        "repeats": args.repeats, "rounds": {k: [round(x) for x in v] for k, v in runs.items()},
        "target_1w_within_10pct": one >= 0.9 * plain,
    }))


if __name__ == "__main__":
    main()
