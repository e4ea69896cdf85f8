"""Training throughput: a plain single-process PyTorch loop against tpipe on Ray Train (1 and 2 workers).

    python bench/train.py [--steps 120] [--model tiny]

All three train the same model (conf/model/<model>.yaml) on the same token shards (the built-in
corpus, prepared once by the pipeline's own prepare/tokenizer/encode steps) with the same batches
(TokenBatchLoader, max_tokens per worker), one torch thread per worker:

  plain      the loop a user would write: forward, label-smoothed loss, backward, clip, AdamW step
  tpipe 1w   run_training with 1 Ray Train worker (Lightning + RayDDPStrategy + MLflow logging)
  tpipe 2w   the same with 2 workers (gloo DDP); tokens/s counts both workers

tokens/s = padded source + target tokens per second after `--warmup` steps, by one estimator for all
three: the rate over each 10-step interval (tpipe's is the train/tokens_per_s metric rank 0 logs every
10 steps, measured in training_step; the plain loop times the same intervals), averaged.
On a shared 2-core machine the same loop's speed drifts by 10-15 % from minute to minute (two plain
runs back to back differ by that much), so a round brackets the tpipe runs between two plain runs
(plain, 1w, 2w, plain; every second round 2w before 1w), and each tpipe run is compared with the
mean of its own round's two plain runs. The headline ratio is the median of those per-round ratios;
the second plain run against the first (plain vs plain, same code) is printed as the noise floor.
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
LOG_EVERY = 10  # tpipe logs train/tokens_per_s every LOG_EVERY steps; the plain loop times the same intervals


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
    # Rate per 10-step interval, timed at the same point of the step as tpipe's metric (after the
    # forward pass), so both sides use one estimator.
    step, tokens, t_last, rates = 0, 0, None, []
    while step < steps:
        for batch in loader:
            src, tgt = batch["src"], batch["tgt"]
            logits = model(src, tgt[:, :-1])
            if step % LOG_EVERY == 0:
                now = time.perf_counter()
                if t_last is not None and step > warmup:
                    rates.append(tokens / (now - t_last))
                t_last, tokens = now, 0
            tokens += src.numel() + tgt.numel()
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1),
                                   ignore_index=tok.pad_id, label_smoothing=cfg.train.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break
    return sum(rates) / len(rates)


def tpipe_run(cfg, results, workers: int, steps: int, warmup: int, home: Path) -> float:
    import dataclasses

    import mlflow
    from mlflow import MlflowClient

    from data.tokenizer import load_tokenizer
    from data.shards import token_files
    from pipeline.train import run_training

    tok_dir = results["tokenizer"].out_dir
    tok = load_tokenizer(tok_dir)
    mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    tcfg = dataclasses.replace(cfg.train, num_workers=workers, max_steps=steps, val_every_steps=steps, log_every_steps=LOG_EVERY)
    run_cfg = dataclasses.replace(cfg, model=mcfg, train=tcfg)
    with mlflow.start_run(run_name=f"bench-{workers}w") as run:
        run_training(
            run_cfg, tokenizer_dir=tok_dir,
            train_shards=token_files(results["encode"].out_dir, "train"),
            valid_shards=token_files(results["encode"].out_dir, "valid"),
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
    p.add_argument("--repeats", type=int, default=4, help="rounds of plain, 1w, 2w, plain; the table shows medians")
    args = p.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tpipe-bench-train-"))
    os.environ["TPIPE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import ray

    ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1", log_to_driver=False)
    cfg, results = prepare(home, args.model, args.max_tokens)
    from data.shards import token_files

    shards = token_files(results["encode"].out_dir, "train")

    def plain() -> float:
        return plain_loop(cfg, results["tokenizer"].out_dir, shards, args.steps, args.warmup)

    rounds = []
    for r in range(args.repeats):
        before = plain()
        order = (1, 2) if r % 2 == 0 else (2, 1)
        rates = {w: tpipe_run(cfg, results, w, args.steps, args.warmup, home) for w in order}
        after = plain()
        ref = (before + after) / 2
        rounds.append({"plain": [before, after], "1w": rates[1], "2w": rates[2],
                       "1w_ratio": rates[1] / ref, "2w_ratio": rates[2] / ref, "aa": after / before})
        x = rounds[-1]
        print(f"round {r + 1}: plain {before:.0f}, {order[0]}w, {order[1]}w, plain {after:.0f}  "
              f"1w {x['1w']:.0f} ({x['1w_ratio']:.3f})  2w {x['2w']:.0f} ({x['2w_ratio']:.3f})  "
              f"plain vs plain {x['aa']:.3f}", flush=True)
    ray.shutdown()

    def med(key: str) -> float:
        return statistics.median(x[key] for x in rounds)

    plains = [p for x in rounds for p in x["plain"]]
    aa = [x["aa"] for x in rounds]
    print(f"model {args.model}, {args.steps} steps ({args.warmup} warm-up), max_tokens {args.max_tokens}/worker, "
          f"1 thread/worker, {args.repeats} rounds; ratio = median over rounds of tpipe / mean(plain before, after)")
    print(f"{'':28s} {'median tok/s':>12s} {'min':>7s} {'max':>7s} {'vs plain':>9s}")
    print(f"{'plain loop (1 process)':28s} {statistics.median(plains):12.0f} {min(plains):7.0f} {max(plains):7.0f} "
          f"{1.0:9.3f}")
    for w, name in ((1, "tpipe, 1 Ray Train worker"), (2, "tpipe, 2 Ray Train workers")):
        vals = [x[f"{w}w"] for x in rounds]
        print(f"{name:28s} {statistics.median(vals):12.0f} {min(vals):7.0f} {max(vals):7.0f} {med(f'{w}w_ratio'):9.3f}")
    print(f"noise floor: plain vs plain (same code, one round apart) median {statistics.median(aa):.3f}, "
          f"range {min(aa):.3f}-{max(aa):.3f}")
    print(json.dumps({
        "model": args.model, "steps": args.steps, "max_tokens": args.max_tokens, "repeats": args.repeats,
        "plain_tokens_per_s": round(statistics.median(plains)), "tpipe_1w_tokens_per_s": round(med("1w")),
        "tpipe_2w_tokens_per_s": round(med("2w")),
        "tpipe_1w_vs_plain": round(med("1w_ratio"), 3), "tpipe_2w_vs_plain": round(med("2w_ratio"), 3),
        "round_ratios_1w": [round(x["1w_ratio"], 3) for x in rounds],
        "round_ratios_2w": [round(x["2w_ratio"], 3) for x in rounds],
        "plain_vs_plain": [round(v, 3) for v in aa],
        "rounds": [{"plain": [round(p) for p in x["plain"]], "1w": round(x["1w"]), "2w": round(x["2w"])} for x in rounds],
        "target_1w_within_10pct": med("1w_ratio") >= 0.9,
    }))


if __name__ == "__main__":
    main()
