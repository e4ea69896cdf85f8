"""Benchmark of the data path: ingest + clean + shard + encode, the loader, padding, and memory.

    python bench/data.py                      # corpora from $TPIPE_BENCH_DATA or ~/.cache/tpipe-bench
    python bench/data.py --tokenizer DIR      # encode with a trained tokenizer instead of UTF-8 bytes

Corpora: en_de.tsv (package, English, German) and multi.txt (monolingual, ~196 languages), made by
../shared/bench-data/make_corpora.py. Prints a table, then one JSON object as the last line.

What each number means:
  ingest MB/s   input bytes / wall time of prepare_raw_shards (read, clean, dedup, split, write shards)
  encode MB/s   input bytes / wall time of encode_shards (tokenize, filter, write list<int32> shards)
                With the default stand-in tokenizer (UTF-8 bytes + 3) this is the data path's own cost;
                a BPE tokenizer's encode speed is the tokenizer's, measured in its own bench.
  loader tok/s  padded source + target tokens per second that one rank's TokenBatchLoader yields
                (rank 0 of 2, max_tokens 2048), on one core
  model tok/s   padded tokens per second one training worker of the tiny / base model consumes:
                forward + backward + AdamW step on CPU with 1 thread (train.threads_per_worker),
                on batches from the loader
  padding       pad positions / all positions of an epoch's batches, bucketed (the loader) against
                the same token budget filled in random order (no bucketing)
  peak RSS      of a fresh process that builds the loader and reads 400 batches, corpus repeated 1x..4x
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

MAX_TOKENS = 2048  # train.max_tokens in conf/default.yaml


class ByteTokenizer:
    """Stand-in: UTF-8 bytes shifted past pad/bos/eos; isolates the data path from BPE speed."""

    pad_id, bos_id, eos_id, vocab_size, fingerprint = 0, 1, 2, 259, "bench-bytes+3"

    def encode_batch(self, texts):
        return [[b + 3 for b in t.encode("utf-8")] for t in texts]


def load_bytes(_dir: str) -> ByteTokenizer:
    return ByteTokenizer()


def corpora_dir() -> str:
    d = os.environ.get("TPIPE_BENCH_DATA", os.path.expanduser("~/.cache/tpipe-bench"))
    if not os.path.exists(os.path.join(d, "multi.txt")):
        maker = os.path.join(ROOT, "..", "shared", "bench-data", "make_corpora.py")
        if not os.path.exists(maker):
            sys.exit(f"no corpora in {d} and no {maker}; set TPIPE_BENCH_DATA")
        subprocess.run([sys.executable, maker, d], check=True)
    return d


def run_steps(corpus: str, fmt: str, workers: int, work: str, tokenizer_dir: str | None) -> dict:
    """prepare + encode on a fresh local Ray with `workers` CPUs; returns timings and counts."""
    import ray

    from data.config import DataConfig
    from data.encode import encode_shards
    from data.prepare import prepare_raw_shards

    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        cfg = DataConfig(
            source="files", paths=[corpus], format=fmt, src_lang="en", tgt_lang="de", n_shards=4, chunk_mb=8,
            max_tokens_per_side=1000, max_chars=1000,
        )
        raw, tok = os.path.join(work, f"raw-{workers}"), os.path.join(work, f"tok-{workers}")
        for d in (raw, tok):
            shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        report = prepare_raw_shards(cfg, raw, seed=0)
        t1 = time.perf_counter()
        manifest = encode_shards(
            raw, tokenizer_dir or "", tok, max_tokens_per_side=cfg.max_tokens_per_side, config_hash="bench",
            tokenizer_loader=None if tokenizer_dir else load_bytes,
        )
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    return {"prepare_s": t1 - t0, "encode_s": t2 - t1, "report": report, "manifest": manifest, "tok_dir": tok}


def padding_fractions(paths: list[str], seed: int = 0) -> tuple[float, float]:
    """(bucketed, unsorted) padding of one epoch at the same token budget, from the length columns."""
    from data.loader import TokenBatchLoader, _cut_batches

    loader = TokenBatchLoader(paths, max_tokens=MAX_TOKENS, pad_id=0, bos_id=1, eos_id=2, seed=seed)
    s_all = loader._src_len.astype(np.int64) + 1
    t_all = loader._tgt_len.astype(np.int64) + 2

    def pad(batches: list[np.ndarray]) -> float:
        real = total = 0
        for b in batches:
            s, t = s_all[b], t_all[b]
            real += int(s.sum() + t.sum())
            total += len(b) * int(s.max() + t.max())
        return 1 - real / total

    bucketed = pad(loader.epoch_batches(0))
    order = np.random.default_rng(seed).permutation(loader.n_rows)
    cuts = _cut_batches(s_all[order], t_all[order], MAX_TOKENS)
    return bucketed, pad(np.split(order, cuts))


def loader_rate(paths: list[str], seconds: float = 8.0) -> dict:
    """Padded tokens/s that rank 0 of 2 yields, single thread, for about `seconds`."""
    import torch

    torch.set_num_threads(1)
    from data.loader import TokenBatchLoader

    t0 = time.perf_counter()
    loader = TokenBatchLoader(paths, max_tokens=MAX_TOKENS, pad_id=0, bos_id=1, eos_id=2, seed=0, world_size=2)
    n = len(loader)
    t_plan = time.perf_counter() - t0
    tokens = batches = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for b in loader:
        tokens += b["src"].numel() + b["tgt"].numel()
        batches += 1
        if time.perf_counter() - t0 > seconds:
            break
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    # CPU-time rate too: on a shared machine wall time also counts other people's processes
    return {"tokens_per_s": tokens / dt, "tokens_per_cpu_s": tokens / dc, "batches_per_s": batches / dt,
            "plan_s": t_plan, "batches_per_epoch": n}


def model_rate(paths: list[str], preset: str, steps: int, vocab_size: int) -> float:
    """Padded tokens/s of forward + backward + AdamW on one CPU thread, on the loader's batches."""
    import torch
    import yaml

    from data.loader import TokenBatchLoader
    from model.config import ModelConfig
    from model.transformer import Transformer

    torch.set_num_threads(1)
    preset_d = yaml.safe_load(open(os.path.join(ROOT, "conf", "model", f"{preset}.yaml")))
    cfg = ModelConfig(**preset_d, vocab_size=vocab_size)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = TokenBatchLoader(paths, max_tokens=MAX_TOKENS, pad_id=0, bos_id=1, eos_id=2, seed=0)
    it = iter(loader)
    tokens, t0 = 0, None
    for step in range(steps + 1):
        b = next(it)
        src, tgt = b["src"][:, : cfg.max_seq_len], b["tgt"][:, : cfg.max_seq_len]
        if step == 1:
            t0, tokens = time.perf_counter(), 0  # step 0 warms up
        logits = model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1), ignore_index=0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += src.numel() + tgt.numel()
    return tokens / (time.perf_counter() - t0)


def peak_rss_child(paths: list[str], repeat: int) -> float:
    """Peak RSS (MB) of a fresh process that builds the loader on the corpus repeated and reads 400 batches."""
    code = f"""
import sys, json
sys.path.insert(0, {ROOT!r})
import torch
from data.loader import TokenBatchLoader

def vm(key):  # VmHWM is this process's own peak (ru_maxrss would include the parent's after fork)
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

base = vm("VmRSS")
paths = {paths!r} * {repeat}
loader = TokenBatchLoader(paths, max_tokens={MAX_TOKENS}, pad_id=0, bos_id=1, eos_id=2, seed=0)
for i, b in enumerate(loader):
    if i == 400:
        break
print(json.dumps({{"base_mb": base, "peak_mb": vm("VmHWM"), "rows": loader.n_rows}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", help="a trained tokenizer directory (default: the UTF-8 byte stand-in)")
    ap.add_argument("--model-steps", type=int, default=3, help="timed training steps per model")
    ap.add_argument("--keep", help="keep the work directory here")
    args = ap.parse_args()
    d = corpora_dir()
    work = args.keep or tempfile.mkdtemp(prefix="tpipe-bench-data-")
    os.makedirs(work, exist_ok=True)
    result: dict = {"tokenizer": args.tokenizer or "utf8-bytes+3", "max_tokens": MAX_TOKENS, "corpora": {}}
    rows = []
    for name, fmt in (("en_de.tsv", "tsv"), ("multi.txt", "text")):
        path = os.path.join(d, name)
        mb = os.path.getsize(path) / 1e6
        entry: dict = {"mb": round(mb, 1)}
        for workers in (1, 2):
            r = run_steps(path, fmt, workers, os.path.join(work, name), args.tokenizer)
            rep, man = r["report"], r["manifest"]
            entry[f"workers{workers}"] = {
                "ingest_mb_s": round(mb / r["prepare_s"], 2),
                "encode_mb_s": round(mb / r["encode_s"], 2),
                "prepare_s": round(r["prepare_s"], 2),
                "encode_s": round(r["encode_s"], 2),
                # the encode step without the tokenizer's own time (task time summed over tasks)
                "encode_data_path_mb_s": round(mb / max(man["task_seconds"]["task"] - man["task_seconds"]["tokenize"], 1e-9), 2),
                "tokenize_share": round(man["task_seconds"]["tokenize"] / man["task_seconds"]["task"], 3),
            }
            rows.append((name, workers, mb, r["prepare_s"], r["encode_s"], entry[f"workers{workers}"]["tokenize_share"]))
        entry["input"], entry["kept"], entry["rejected"] = rep["input"], rep["kept"], rep["rejected"]
        entry["too_long_tokens"] = man["rejected"]["too_long_tokens"]
        entry["tokens"] = man["tokens"]
        from data.shards import token_files

        train = token_files(r["tok_dir"], "train")
        bucketed, unsorted = padding_fractions(train)
        entry["padding_bucketed"], entry["padding_unsorted"] = round(bucketed, 4), round(unsorted, 4)
        entry["loader"] = {k: round(v, 2) for k, v in loader_rate(train).items()}
        entry["_train"] = train
        result["corpora"][name] = entry

    train = result["corpora"]["en_de.tsv"].pop("_train")
    multi_train = result["corpora"]["multi.txt"].pop("_train")
    vocab = 259 if not args.tokenizer else __import__("data.tokenizer", fromlist=["x"]).load_tokenizer(args.tokenizer).vocab_size
    result["model_tokens_per_s"] = {p: round(model_rate(train, p, args.model_steps, vocab), 1) for p in ("tiny", "base")}
    result["memory"] = {f"{k}x": peak_rss_child(multi_train, k) for k in (1, 2, 4)}
    loader_tps = result["corpora"]["en_de.tsv"]["loader"]["tokens_per_s"]
    result["loader_over_base_need"] = round(loader_tps / result["model_tokens_per_s"]["base"], 1)
    result["loader_over_tiny_need"] = round(loader_tps / result["model_tokens_per_s"]["tiny"], 1)

    result["loadavg"] = [round(x, 1) for x in os.getloadavg()]  # 1, 5, 15 minutes: other users of the CPUs
    print(f"\nData path ({result['tokenizer']} tokenizer, max_tokens {MAX_TOKENS}, machine: {os.cpu_count()} CPUs)")
    print(f"{'corpus':<11} {'workers':>7} {'MB':>6} {'ingest MB/s':>12} {'encode MB/s':>12} {'ingest s':>9} {'encode s':>9} {'tokenizer share':>16}")
    for name, w, mb, tp, te, share in rows:
        print(f"{name:<11} {w:>7} {mb:>6.1f} {mb / tp:>12.2f} {mb / te:>12.2f} {tp:>9.2f} {te:>9.2f} {share:>16.0%}")
    print(f"\n{'corpus':<11} {'input':>9} {'kept':>9} {'dups':>8} {'pad bucketed':>13} {'pad unsorted':>13} {'loader tok/s':>13} {'tok/cpu-s':>11} {'plan s':>7}")
    for name, e in result["corpora"].items():
        print(
            f"{name:<11} {e['input']:>9} {e['kept']:>9} {e['rejected']['duplicate']:>8} {e['padding_bucketed']:>13.2%} "
            f"{e['padding_unsorted']:>13.2%} {e['loader']['tokens_per_s']:>13,.0f} {e['loader']['tokens_per_cpu_s']:>11,.0f} "
            f"{e['loader']['plan_s']:>7.2f}"
        )
    m = result["model_tokens_per_s"]
    print(f"\nmodel consumption, 1 CPU thread: tiny {m['tiny']:,.0f} tok/s, base {m['base']:,.0f} tok/s; "
          f"loader (en_de) = {result['loader_over_tiny_need']}x tiny, {result['loader_over_base_need']}x base")
    print(f"{'corpus x':>9} {'rows':>10} {'peak RSS MB':>12} {'after imports MB':>17} {'loader MB':>10}")
    for k, v in result["memory"].items():
        print(f"{k:>9} {v['rows']:>10} {v['peak_mb']:>12.0f} {v['base_mb']:>17.0f} {v['peak_mb'] - v['base_mb']:>10.0f}")
    print(f"load average during the run: {result['loadavg']}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
