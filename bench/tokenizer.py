"""Benchmark of the byte-level BPE tokenizer against Hugging Face tokenizers, sentencepiece and tiktoken.

    python bench/tokenizer.py                  # multi.txt (75 MB), vocabulary 32000, 2 Ray workers
    python bench/tokenizer.py --corpus multi20.txt --skip-sentencepiece

Corpora come from $TPIPE_BENCH_DATA (default ~/.cache/tpipe-bench), made by
`python ../shared/bench-data/make_corpora.py`; GPT-2's ranks (gpt2.tiktoken, for tiktoken) by
`../shared/bench-data/get_gpt2_ranks.sh`. All anchors run in this one process, on the same machine:

  training  wall and CPU time on the corpus: ours (Ray counting + merge loop) vs HF ByteLevel BPE
            (min_frequency=2, --workers Rayon threads, in a child process) vs sentencepiece (BPE,
            byte fallback, --workers threads). CPU time is less disturbed by a busy machine.
  compression  bytes per token on en.txt, each trained tokenizer
  encoding  MB/s on en.txt lines in one process (one thread for every library) and over 2 Ray
            workers: ours (trained, and GPT-2's ranks) vs tiktoken (GPT-2) and HF
  memory    peak resident memory of the training driver and of the counting tasks

The table is printed first; the very last line is one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# One thread for HF's Rust side too: "one process" means one core for every contender.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer  # noqa: E402
from data.tokenizer.pretokenize import GPT2_PATTERN  # noqa: E402

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def train_ours(corpus: Path, vocab_size: int, workers: int, out_dir: Path):
    import ray

    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        cfg = TokenizerConfig(vocab_size=vocab_size, min_frequency=2, num_workers=workers, special_tokens=SPECIALS)
        tok, wall, cpu = timed(lambda: train_tokenizer(cfg, [str(corpus)]))
    finally:
        ray.shutdown()
    tok.save(out_dir)
    return tok, wall, cpu


HF_TRAIN = """
import json, sys, time
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
corpus, vocab_size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
hf = Tokenizer(models.BPE())
hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
hf.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=%r,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
t0, c0 = time.perf_counter(), time.process_time()
hf.train([corpus], trainer)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
hf.save(out)
print(json.dumps({"wall": wall, "cpu": cpu}))
""" % (SPECIALS,)


def train_hf(corpus: Path, vocab_size: int, workers: int, out_dir: Path):
    """HF trains in a child process with `workers` Rayon threads (this process keeps one for encoding)."""
    import subprocess

    from tokenizers import Tokenizer

    out = out_dir / "hf.json"
    env = dict(os.environ, RAYON_NUM_THREADS=str(workers), TOKENIZERS_PARALLELISM="true")
    res = subprocess.run(
        [sys.executable, "-c", HF_TRAIN, str(corpus), str(vocab_size), str(out)],
        env=env, check=True, capture_output=True, text=True,
    )
    got = json.loads(res.stdout.strip().splitlines()[-1])
    return Tokenizer.from_file(str(out)), got["wall"], got["cpu"]


def train_sp(corpus: Path, vocab_size: int, workers: int, out_dir: Path):
    import sentencepiece as spm

    prefix = str(out_dir / "sp")
    _, wall, cpu = timed(
        lambda: spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=prefix,
            vocab_size=vocab_size,
            model_type="bpe",
            byte_fallback=True,
            num_threads=workers,
            minloglevel=2,
        )
    )
    return spm.SentencePieceProcessor(model_file=prefix + ".model"), wall, cpu


def mbps(n_bytes: int, seconds: float) -> float:
    return n_bytes / 1e6 / seconds if seconds > 0 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("TPIPE_BENCH_DATA", str(Path.home() / ".cache" / "tpipe-bench")))
    ap.add_argument("--corpus", default="multi.txt", help="training corpus inside --data")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-sentencepiece", action="store_true")
    args = ap.parse_args()

    data = Path(args.data)
    corpus, en = data / args.corpus, data / "en.txt"
    for p in (corpus, en):
        if not p.is_file():
            print(f"missing {p}: run python ../shared/bench-data/make_corpora.py {data}", file=sys.stderr)
            return 2
    ranks_file = data / "gpt2.tiktoken"
    work = Path(tempfile.mkdtemp(prefix="tpipe-bench-tok-"))
    corpus_mb = corpus.stat().st_size / 1e6
    R: dict[str, float | str | None] = {"corpus": corpus.name, "corpus_mb": round(corpus_mb, 1), "vocab_size": args.vocab_size}

    # ---- training --------------------------------------------------------------------------
    ours, R["train_ours_s"], R["train_ours_driver_cpu_s"] = train_ours(corpus, args.vocab_size, args.workers, work / "ours")
    R["peak_rss_driver_mb"] = round(rss_mb(), 1)
    R["peak_rss_count_task_mb"] = ours.train_stats.get("count_peak_rss_mb")
    R["train_ours_count_s"] = ours.train_stats["count_seconds"]
    R["train_ours_merge_s"] = ours.train_stats["merge_seconds"]
    R["train_ours_cpu_s"] = round(R["train_ours_driver_cpu_s"] + ours.train_stats["count_cpu_seconds"], 2)
    hf, R["train_hf_s"], R["train_hf_cpu_s"] = train_hf(corpus, args.vocab_size, args.workers, work)
    sp = None
    if not args.skip_sentencepiece:
        sp, R["train_sp_s"], R["train_sp_cpu_s"] = train_sp(corpus, args.vocab_size, args.workers, work)

    # ---- compression on en.txt -------------------------------------------------------------
    text = en.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]
    n_bytes = sum(len(s.encode("utf-8")) for s in lines)
    ours = load_tokenizer(work / "ours")  # a fresh, cold cache
    ids_cold, t_cold, _ = timed(lambda: ours.encode_batch(lines))
    ids_warm, t_warm, _ = timed(lambda: ours.encode_batch(lines))
    assert ids_cold == ids_warm
    n_ours = sum(map(len, ids_cold))
    hf_ids, t_hf, _ = timed(lambda: hf.encode_batch(lines, add_special_tokens=False))
    n_hf = sum(len(e.ids) for e in hf_ids)
    R["bytes_per_token_ours"] = round(n_bytes / n_ours, 4)
    R["bytes_per_token_hf"] = round(n_bytes / n_hf, 4)
    if sp is not None:
        R["bytes_per_token_sp"] = round(n_bytes / sum(map(len, sp.encode(lines))), 4)

    # ---- encoding speed --------------------------------------------------------------------
    R["encode_ours_cold_mbps"] = round(mbps(n_bytes, t_cold), 2)
    R["encode_ours_warm_mbps"] = round(mbps(n_bytes, t_warm), 2)
    R["encode_hf_mbps"] = round(mbps(n_bytes, t_hf), 2)
    R["encode_tiktoken_mbps"] = R["encode_ours_gpt2_cold_mbps"] = R["encode_ours_gpt2_warm_mbps"] = None
    if ranks_file.is_file():
        import tiktoken

        from data.tokenizer.gpt2 import load_tiktoken_file, read_tiktoken_ranks

        enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=read_tiktoken_ranks(ranks_file), special_tokens={})
        tk_ids, t_tk, _ = timed(lambda: [enc.encode_ordinary(s) for s in lines])
        gpt2 = load_tiktoken_file(ranks_file)
        g_ids, t_g_cold, _ = timed(lambda: gpt2.encode_batch(lines))
        _, t_g_warm, _ = timed(lambda: gpt2.encode_batch(lines))
        R["gpt2_ids_equal_tiktoken"] = g_ids == tk_ids
        R["encode_tiktoken_mbps"] = round(mbps(n_bytes, t_tk), 2)
        R["encode_ours_gpt2_cold_mbps"] = round(mbps(n_bytes, t_g_cold), 2)
        R["encode_ours_gpt2_warm_mbps"] = round(mbps(n_bytes, t_g_warm), 2)
    else:
        print(f"note: {ranks_file} missing (run ../shared/bench-data/get_gpt2_ranks.sh); no tiktoken figures", file=sys.stderr)

    import ray

    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    try:
        cold = load_tokenizer(work / "ours")
        ray.get(ray.remote(lambda: 0).remote())  # workers up before the clock starts
        ray_ids, t_ray, _ = timed(lambda: cold.encode_batch(lines, num_tasks=args.workers))
        assert ray_ids == ids_cold
        R["encode_ours_ray_mbps"] = round(mbps(n_bytes, t_ray), 2)
    finally:
        ray.shutdown()

    # ---- ratios and table ------------------------------------------------------------------
    def ratio(a, b):
        return round(R[a] / R[b], 3) if R.get(a) and R.get(b) else None

    R["ratio_train_ours_over_hf"] = ratio("train_ours_s", "train_hf_s")
    R["ratio_train_ours_over_sp"] = ratio("train_ours_s", "train_sp_s")
    R["ratio_train_cpu_ours_over_hf"] = ratio("train_ours_cpu_s", "train_hf_cpu_s")
    R["ratio_bytes_per_token_ours_over_hf"] = ratio("bytes_per_token_ours", "bytes_per_token_hf")
    R["ratio_encode_warm_over_tiktoken"] = ratio("encode_ours_warm_mbps", "encode_tiktoken_mbps")
    R["ratio_encode_cold_over_tiktoken"] = ratio("encode_ours_cold_mbps", "encode_tiktoken_mbps")
    R["ratio_encode_gpt2_warm_over_tiktoken"] = ratio("encode_ours_gpt2_warm_mbps", "encode_tiktoken_mbps")
    R["ratio_encode_gpt2_cold_over_tiktoken"] = ratio("encode_ours_gpt2_cold_mbps", "encode_tiktoken_mbps")
    R["targets"] = {
        "train_at_most_3x_hf": R["ratio_train_ours_over_hf"] is not None and R["ratio_train_ours_over_hf"] <= 3,
        "compression_within_1pct_of_hf": abs(R["ratio_bytes_per_token_ours_over_hf"] - 1) <= 0.01,
        "encode_at_least_half_tiktoken_warm": (R["ratio_encode_warm_over_tiktoken"] or 0) >= 0.5,
        "encode_at_least_half_tiktoken_cold": (R["ratio_encode_cold_over_tiktoken"] or 0) >= 0.5,
        "peak_memory_under_4gb": max(R["peak_rss_driver_mb"], R["peak_rss_count_task_mb"] or 0) < 4096,
    }
    R["load_average_1min"] = round(os.getloadavg()[0], 2)

    rows = [
        ("training wall s", f"{R['train_ours_s']:.1f}", f"{R['train_hf_s']:.1f}", f"{R.get('train_sp_s') or float('nan'):.1f}", "-", f"ours/HF {R['ratio_train_ours_over_hf']}"),
        ("training CPU s (all processes)", f"{R['train_ours_cpu_s']:.1f}", f"{R['train_hf_cpu_s']:.1f}", f"{R.get('train_sp_cpu_s') or float('nan'):.1f}", "-", f"ours/HF {R['ratio_train_cpu_ours_over_hf']}"),
        ("  ours: counting / merging wall s", f"{R['train_ours_count_s']:.1f} / {R['train_ours_merge_s']:.1f}", "", "", "", ""),
        ("bytes per token (en.txt)", R["bytes_per_token_ours"], R["bytes_per_token_hf"], R.get("bytes_per_token_sp", "-"), "-", f"ours/HF {R['ratio_bytes_per_token_ours_over_hf']}"),
        ("encode MB/s, 1 process, cold", R["encode_ours_cold_mbps"], R["encode_hf_mbps"], "-", R["encode_tiktoken_mbps"], f"ours/tiktoken {R['ratio_encode_cold_over_tiktoken']}"),
        ("encode MB/s, 1 process, warm cache", R["encode_ours_warm_mbps"], "", "", "", f"ours/tiktoken {R['ratio_encode_warm_over_tiktoken']}"),
        ("encode MB/s, GPT-2 ranks cold/warm", f"{R['encode_ours_gpt2_cold_mbps']} / {R['encode_ours_gpt2_warm_mbps']}", "", "", R["encode_tiktoken_mbps"], f"warm/tiktoken {R['ratio_encode_gpt2_warm_over_tiktoken']}"),
        (f"encode MB/s, {args.workers} Ray workers (cold)", R["encode_ours_ray_mbps"], "", "", "", ""),
        ("peak RSS MB: driver / count task", f"{R['peak_rss_driver_mb']:.0f} / {R['peak_rss_count_task_mb']}", "", "", "", ""),
    ]
    head = ("figure", "ours", "HF tokenizers", "sentencepiece", "tiktoken", "ratio")
    widths = [max(len(str(r[k])) for r in rows + [head]) for k in range(len(head))]
    print(f"corpus {corpus.name} ({corpus_mb:.1f} MB), vocab {args.vocab_size}, {args.workers} workers, load avg {R['load_average_1min']}")
    for r in [head] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    print(json.dumps(R))
    return 0


if __name__ == "__main__":
    sys.exit(main())
