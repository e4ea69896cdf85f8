"""Model benchmark on CPU, in one run:

1. forward+backward tokens/s of `model.transformer.Transformer` against `torch.nn.Transformer` with identical
   dimensions (post-norm, ReLU, LayerNorm, sinusoidal positions, tied embedding/lm_head on both sides);
2. incremental (KV-cached) decoding against recomputing the prefix, 128 target tokens;
3. beam-5 search sentences/s.

Prints a table, then one JSON object as the last line.

    .venv/bin/python bench/model.py                     # tiny preset, ~30 s on one busy core
    .venv/bin/python bench/model.py --preset base --reps 3
    python3 bench/model.py gpu --presets base,big       # on a GPU (what bench/gpu.sh runs): bf16 training
                                                        # tokens/s, MFU, which attention kernel ran

Timings interleave the two contenders (A B A B ...) and report medians, so that load from other
processes on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import ModelConfig  # noqa: E402
from model.generation import CachedSteps, RecomputedSteps, beam_search  # noqa: E402
from model.layers import sinusoid_table  # noqa: E402
from model.transformer import Transformer  # noqa: E402

PAD, BOS, EOS = 0, 1, 2


class ReferenceTransformer(nn.Module):
    """torch.nn.Transformer with the same embedding, positions and tied output projection as ours."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.register_buffer("pe", sinusoid_table(cfg.max_seq_len, cfg.d_model), persistent=False)
        self.core = nn.Transformer(
            d_model=cfg.d_model,
            nhead=cfg.n_heads,
            num_encoder_layers=cfg.n_encoder_layers,
            num_decoder_layers=cfg.n_decoder_layers,
            dim_feedforward=cfg.d_ff,
            dropout=cfg.dropout,
            activation="relu",
            batch_first=True,
            norm_first=cfg.norm_position == "pre",
        )
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.cfg.d_model)
        S, T = src.size(1), tgt.size(1)
        x = self.embed(src) * scale + self.pe[:S]
        y = self.embed(tgt) * scale + self.pe[:T]
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt.device).triu(1)  # True = masked, nn.Transformer style
        out = self.core(
            x,
            y,
            tgt_mask=causal,
            src_key_padding_mask=src == PAD,
            memory_key_padding_mask=src == PAD,
            tgt_is_causal=True,
        )
        return self.lm_head(out)


def batch(B: int, S: int, T: int, V: int, g: torch.Generator):
    """Right-padded random batch: lengths uniform in [L/2, L]. Returns src, tgt_in, labels, real tokens."""
    src = torch.randint(3, V, (B, S), generator=g)
    tgt = torch.randint(3, V, (B, T + 1), generator=g)
    for i in range(B):
        src[i, int(torch.randint(S // 2, S + 1, (1,), generator=g)) :] = PAD
        tgt[i, int(torch.randint(T // 2, T + 1, (1,), generator=g)) + 1 :] = PAD
    tgt[:, 0] = BOS
    n_tokens = int((src != PAD).sum() + (tgt[:, 1:] != PAD).sum())
    return src, tgt[:, :-1], tgt[:, 1:], n_tokens


def train_step(model: nn.Module, src, tgt_in, labels) -> None:
    logits = model(src, tgt_in)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD)
    loss.backward()
    for p in model.parameters():
        p.grad = None


def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, calling them in turn (A B A B ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", help="conf/model preset for the dimensions")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=32, help="sentences per training batch")
    ap.add_argument("--src-len", type=int, default=48)
    ap.add_argument("--tgt-len", type=int, default=48)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--decode-batches", default="8,32", help="comma-separated sentence counts")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--beam-sentences", type=int, default=16)
    ap.add_argument("--beam-max-len", type=int, default=32)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: on a shared machine OpenMP spinning hurts)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    # Post-norm, ReLU, LayerNorm, sinusoidal: what torch.nn.Transformer computes; dropout off for both.
    cfg = ModelConfig.from_name(
        args.preset,
        vocab_size=args.vocab,
        dropout=0.0,
        norm="layernorm",
        norm_position="post",
        ffn="relu",
        positional="sinusoidal",
        tie_embeddings=True,
        max_seq_len=max(256, args.decode_tokens + 1),
    )
    ours, ref = Transformer(cfg), ReferenceTransformer(cfg)
    n_ours, n_ref = ours.num_parameters(), sum(p.numel() for p in ref.parameters())
    rows: list[tuple[str, str, str]] = []
    result: dict = {
        "device": "cpu",
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "preset": args.preset,
        "params": {"ours": n_ours, "torch_nn_transformer": n_ref},
    }

    # 1. forward + backward
    src, tgt_in, labels, n_tok = batch(args.batch, args.src_len, args.tgt_len, args.vocab, g)
    ours.train(), ref.train()
    t = interleaved(
        {"ours": lambda: train_step(ours, src, tgt_in, labels), "ref": lambda: train_step(ref, src, tgt_in, labels)},
        args.reps,
    )
    tps_ours, tps_ref = n_tok / t["ours"], n_tok / t["ref"]
    result["train"] = {
        "batch": [args.batch, args.src_len, args.tgt_len],
        "real_tokens": n_tok,
        "tokens_per_s_ours": round(tps_ours),
        "tokens_per_s_torch_nn_transformer": round(tps_ref),
        "speedup": round(tps_ours / tps_ref, 3),
    }
    rows += [
        ("fwd+bwd tokens/s, tpipe Transformer", f"{tps_ours:,.0f}", f"{n_ours / 1e6:.2f} M params"),
        ("fwd+bwd tokens/s, torch.nn.Transformer", f"{tps_ref:,.0f}", f"{n_ref / 1e6:.2f} M params"),
        ("  ratio (target >= 1.0)", f"{tps_ours / tps_ref:.2f}x", f"{n_tok} real tokens/batch"),
    ]

    # 2. incremental decoding vs recomputation, decode_tokens steps (EOS ignored: every step runs)
    ours.eval()

    @torch.no_grad()
    def decode(steps_cls, dsrc) -> None:
        src_mask = ours.make_src_mask(dsrc)
        memory = ours.encode(dsrc, src_mask)
        steps = steps_cls(ours, memory, src_mask, args.decode_tokens)
        prefix = torch.full((dsrc.size(0), 1), BOS, dtype=torch.long)
        for _ in range(args.decode_tokens):
            prefix = torch.cat([prefix, steps(prefix).argmax(-1, keepdim=True)], dim=1)

    result["decode"] = []
    for n_sent in (int(b) for b in args.decode_batches.split(",")):
        dsrc = batch(n_sent, args.src_len, 1, args.vocab, g)[0]
        t = interleaved(
            {"cached": lambda: decode(CachedSteps, dsrc), "recomputed": lambda: decode(RecomputedSteps, dsrc)},
            max(1, args.reps // 2),
            warmup=0,
        )
        n_dec = n_sent * args.decode_tokens
        result["decode"].append(
            {
                "batch": n_sent,
                "target_tokens": args.decode_tokens,
                "tokens_per_s_cached": round(n_dec / t["cached"]),
                "tokens_per_s_recomputed": round(n_dec / t["recomputed"]),
                "speedup": round(t["recomputed"] / t["cached"], 2),
            }
        )
        rows += [
            (f"decode tokens/s, KV cache, {args.decode_tokens} tok", f"{n_dec / t['cached']:,.0f}", f"batch {n_sent}"),
            (f"decode tokens/s, recompute, {args.decode_tokens} tok", f"{n_dec / t['recomputed']:,.0f}", f"batch {n_sent}"),
            ("  speedup (target >= 5)", f"{t['recomputed'] / t['cached']:.1f}x", f"batch {n_sent}"),
        ]

    # 3. beam-5: random weights rarely say EOS, so hypotheses run to beam_max_len (the worst case).
    bsrc = batch(args.beam_sentences, args.src_len, 1, args.vocab, g)[0]
    t = interleaved({"beam": lambda: beam_search(ours, bsrc, beam_size=5, max_len=args.beam_max_len)}, max(1, args.reps // 2), warmup=0)
    sps = args.beam_sentences / t["beam"]
    result["beam5"] = {"sentences": args.beam_sentences, "max_len": args.beam_max_len, "sentences_per_s": round(sps, 2)}
    rows.append((f"beam-5 sentences/s (max_len {args.beam_max_len})", f"{sps:,.1f}", f"{args.beam_sentences} sentences/batch"))

    w = max(len(r[0]) for r in rows)
    print(f"tpipe model bench: preset {args.preset} (d_model {cfg.d_model}, {cfg.n_encoder_layers}+{cfg.n_decoder_layers} layers, "
          f"d_ff {cfg.d_ff}, V {cfg.vocab_size}), torch {torch.__version__}, {args.threads} threads, CPU")
    print(f"{'measure':<{w}}  {'value':>12}  note")
    for name, value, note in rows:
        print(f"{name:<{w}}  {value:>12}  {note}")
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------
# GPU: bf16 training throughput and model FLOPs utilisation


# Dense bf16 tensor-core peaks by datasheet (FLOP/s), matched against torch.cuda.get_device_name().
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12)]


def train_flops_per_step(cfg: ModelConfig, B: int, S: int, T: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 × forward, 2 FLOPs per multiply-add).

    Counts every matmul: projections, FFN, lm_head, and attention scores/values (the causal decoder
    self-attention at half, the work it needs). Embedding lookups, norms and softmax are not counted.
    """
    d, V, f = cfg.d_model, cfg.vocab_size, cfg.d_ff * (3 if cfg.ffn == "swiglu" else 2)
    enc_per_src = cfg.n_encoder_layers * (4 * d * d + f * d + 2 * S * d)  # q,k,v,o + FFN + QKᵀ, AV
    cross_kv_per_src = cfg.n_decoder_layers * 2 * d * d  # cross-attention K, V of memory
    dec_per_tgt = cfg.n_decoder_layers * (4 * d * d + 2 * d * d + f * d + T * d + 2 * S * d) + d * V
    macs = B * (S * (enc_per_src + cross_kv_per_src) + T * dec_per_tgt)
    return 6.0 * macs


def _attention_kernels(prof) -> tuple[dict[str, int], dict[str, int]]:
    """The SDPA kernels a profile saw: counts by family, and the raw kernel names (for the record)."""
    families = {"cudnn": 0, "flash": 0, "mem_efficient": 0}
    names: dict[str, int] = {}
    for evt in prof.key_averages():
        name = evt.key.lower()
        if not any(w in name for w in ("flash", "fmha", "attention", "sdpa", "attn")):
            continue
        names[evt.key[:120]] = evt.count
        if "cudnn" in name:  # cuDNN's SDPA kernels also say "flash" in their names: test it first
            families["cudnn"] += evt.count
        elif "flash" in name:
            families["flash"] += evt.count
        elif "fmha" in name or "efficient" in name or "cutlass" in name:
            families["mem_efficient"] += evt.count
    return families, names


def _kernel_time_table(prof, n: int) -> dict:
    """Where one step's GPU time went: the n costliest kernels, and the share of matmul (GEMM) kernels."""
    evts = [(e.key, getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0), e.count) for e in prof.key_averages()]
    evts = [e for e in evts if e[1] > 0]
    total = sum(t for _, t, _ in evts) or 1.0
    is_gemm = lambda k: any(w in k.lower() for w in ("gemm", "nvjet", "xmma", "cutlass")) and "sdpa" not in k.lower()  # noqa: E731
    top = sorted(evts, key=lambda e: -e[1])[:n]
    return {
        "total_ms": total / 1e3,
        "gemm_share": sum(t for k, t, _ in evts if is_gemm(k)) / total,
        "top": [{"kernel": k[:110], "ms": round(t / 1e3, 3), "share": round(t / total, 4), "calls": c} for k, t, c in top],
    }


def gpu_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench/model.py gpu")
    ap.add_argument("--presets", default="base,big")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=256, help="sentences per step (256 x (128 + 128): about the paper's 25k + 25k tokens)")
    ap.add_argument("--src-len", type=int, default=128)
    ap.add_argument("--tgt-len", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", default="big", help="presets to also time under torch.compile ('' for none)")
    ap.add_argument("--budget-s", type=float, default=400.0, help="skip what would start after this")
    ap.add_argument("--profile-top", type=int, default=0, help="also record the N costliest GPU kernels of a step")
    ap.add_argument(
        "--precision",
        default="bf16-mixed",
        choices=["bf16-mixed", "bf16-true"],
        help="bf16-mixed: fp32 weights under autocast (what the pipeline trains with); bf16-true: bf16 weights",
    )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if not torch.cuda.is_available():
        raise SystemExit("bench/model.py gpu: torch sees no CUDA device (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak = next((p for key, p in PEAK_BF16 if key in name), None)
    torch.backends.cuda.matmul.allow_tf32 = True
    result: dict = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "peak_bf16_flops": peak}
    checks: dict[str, str] = {}
    rows: list[tuple] = []

    # The card's matmul ceiling as measured now (MFU is quoted against the datasheet peak; this is context).
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        a @ b
    e1.record()
    torch.cuda.synchronize()
    result["matmul_8192_bf16_flops"] = 10 * 2 * 8192**3 / (e0.elapsed_time(e1) / 1e3)
    del a, b

    # Self-checks on the GPU: bf16 ≈ fp32, KV-cached decoding = recomputation. A crash here is
    # recorded as a failed check; the throughput runs still happen.
    try:
        _gpu_checks(dev, checks)
    except Exception as e:  # noqa: BLE001
        checks["self_checks"] = f"FAIL: {type(e).__name__}: {e}"[:300]

    compile_presets = {p for p in args.compile.split(",") if p}
    runs = [(p, False) for p in args.presets.split(",")] + [(p, True) for p in args.presets.split(",") if p in compile_presets]
    result["runs"] = []
    for preset, compiled in runs:
        label = f"{preset}{' compiled' if compiled else ''}"
        if time.perf_counter() - t_start > args.budget_s:
            result["runs"].append({"preset": preset, "compiled": compiled, "skipped": "time budget"})
            rows.append((label, "skipped (time budget)"))
            continue
        B = args.batch
        while True:
            try:
                run = _gpu_train(preset, compiled, B, args, dev, peak)
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if B <= 8:
                    run = {"preset": preset, "compiled": compiled, "error": "out of memory at batch 8"}
                    break
                B //= 2
            except Exception as e:  # noqa: BLE001 - a failed variant must not hide the others' numbers
                run = {"preset": preset, "compiled": compiled, "error": f"{type(e).__name__}: {e}"[:500]}
                break
        torch.cuda.empty_cache()
        result["runs"].append(run)
        if "error" in run:
            rows.append((label, f"ERROR {run['error'][:90]}"))
        else:
            mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "n/a"
            rows.append(
                (
                    label,
                    f"{run['tokens_per_s']:>10,.0f} tok/s  {run['model_tflops']:6.1f} TFLOP/s  MFU {mfu:>6}  "
                    f"{run['params'] / 1e6:6.1f} M params  batch {run['batch']}x({run['src_len']}+{run['tgt_len']})  "
                    f"attn {run['attention_kernels']}  loss {run['loss_first']:.2f}->{run['loss_last']:.2f}"
                    + (f"  compile {run['compile_s']:.0f}s" if compiled else "")
                )
            )
    result["checks"] = checks
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(f"tpipe GPU bench: {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), {args.precision}, AdamW fused")
    print(f"measured 8192^3 bf16 matmul: {result['matmul_8192_bf16_flops'] / 1e12:.0f} TFLOP/s; MFU below is against "
          f"the datasheet peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    for k, v in checks.items():
        print(f"check {k}: {v}")
    for label, text in rows:
        print(f"{label:<14} {text}")
    for run in result["runs"]:
        if run.get("profile_top"):
            pt = run["profile_top"]
            print(f"-- {run['preset']}{' compiled' if run['compiled'] else ''}: GPU time of one profiled step "
                  f"{pt['total_ms']:.1f} ms, GEMM kernels {pt['gemm_share']:.0%}")
            for k in pt["top"]:
                print(f"   {k['ms']:8.2f} ms {k['share']:6.1%} x{k['calls']:<4} {k['kernel']}")
    out = json.dumps(result)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_bench.json").write_text(out + "\n")
    print(out)
    if any("FAIL" in v for v in checks.values()) or any("error" in r for r in result["runs"]):
        raise SystemExit(1)


def _gpu_checks(dev: torch.device, checks: dict[str, str]) -> None:
    # True fp32 matmuls for the references: TF32 alone would differ between cached and full decoding.
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _gpu_checks_fp32(dev, checks)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _gpu_checks_fp32(dev: torch.device, checks: dict[str, str]) -> None:
    torch.manual_seed(0)
    small = ModelConfig.from_name("tiny", vocab_size=1000, dropout=0.0)
    m = Transformer(small).to(dev).eval()
    src = torch.randint(3, 1000, (8, 20), device=dev)
    src[0, 12:] = PAD
    tgt = torch.randint(3, 1000, (8, 16), device=dev)
    with torch.no_grad():
        ref32 = m(src, tgt).double()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out16 = m(src, tgt).double()
    rel = float((out16 - ref32).norm() / ref32.norm())
    checks["bf16_vs_fp32_rel_err"] = f"{rel:.2e} ({'ok' if rel < 3e-2 else 'FAIL'})"
    trace_c, trace_f = [], []
    from model.generation import greedy_search

    out_c = greedy_search(m, src, max_len=24, use_cache=True, trace=trace_c)
    out_f = greedy_search(m, src, max_len=24, use_cache=False, trace=trace_f)
    diff = max(float((x - y).abs().max()) for x, y in zip(trace_c, trace_f))
    same = out_c == out_f and diff < 1e-3
    checks["kv_cache_equals_recompute_cuda"] = f"max |Δlogit| {diff:.1e} ({'ok' if same else 'FAIL'})"


def _gpu_train(preset: str, compiled: bool, B: int, args, dev, peak) -> dict:
    S, T = args.src_len, args.tgt_len
    cfg = ModelConfig.from_name(preset, vocab_size=args.vocab, max_seq_len=max(S, T))
    torch.manual_seed(0)
    model = Transformer(cfg).to(dev).train()
    if args.precision == "bf16-true":
        model.to(torch.bfloat16)  # residual stream, norms and optimizer state in bf16 too
    params = model.num_parameters()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), fused=True)
    fwd = torch.compile(model) if compiled else model
    g = torch.Generator(device=dev).manual_seed(0)
    # Full-length sequences: every token is real, so tokens/s counts no padding.
    src = torch.randint(3, cfg.vocab_size, (B, S), device=dev, generator=g)
    tgt = torch.randint(3, cfg.vocab_size, (B, T + 1), device=dev, generator=g)
    tgt[:, 0] = BOS
    tgt_in, labels = tgt[:, :-1], tgt[:, 1:]

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"):
            logits = fwd(src, tgt_in)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=PAD)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    losses = [step()]
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        losses.append(step())
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    e0.record()
    for _ in range(args.steps):
        losses.append(step())
    e1.record()
    torch.cuda.synchronize()
    sec = e0.elapsed_time(e1) / 1e3 / args.steps
    loss_values = [float(x) for x in losses]
    if not all(math.isfinite(x) for x in loss_values):
        raise RuntimeError(f"non-finite loss in {preset}: {loss_values}")
    kernels, kernel_names, profile_top = "unknown", {}, None
    # Profile one more step (compiled runs too) to see which attention kernels ran.
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        fam, kernel_names = _attention_kernels(prof)
        kernels = ",".join(f"{k}:{v}" for k, v in fam.items() if v) or "math (no fused kernel seen)"
        if args.profile_top:
            profile_top = _kernel_time_table(prof, args.profile_top)
    except Exception as e:  # noqa: BLE001 - the profiler is a nicety; the timing stands without it
        kernels = f"profiler failed: {type(e).__name__}"
    flops = train_flops_per_step(cfg, B, S, T)
    run = {
        "preset": preset,
        "compiled": compiled,
        "precision": args.precision,
        "params": params,
        "batch": B,
        "src_len": S,
        "tgt_len": T,
        "step_s": sec,
        "tokens_per_s": B * (S + T) / sec,
        "target_tokens_per_s": B * T / sec,
        "model_tflops": flops / sec / 1e12,
        "mfu": flops / sec / peak if peak else None,
        "attention_kernels": kernels,
        "attention_kernel_names": kernel_names,
        "profile_top": profile_top,
        "loss_first": loss_values[0],
        "loss_last": loss_values[-1],
        "compile_s": compile_s,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    torch.cuda.reset_peak_memory_stats()
    return run


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "gpu":
        gpu_main(sys.argv[2:])
    else:
        main()
