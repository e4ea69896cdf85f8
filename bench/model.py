"""Model benchmark on CPU, in one run:

1. forward+backward tokens/s of `model.transformer.Transformer` against `torch.nn.Transformer` with identical
   dimensions (post-norm, ReLU, LayerNorm, sinusoidal positions, tied embedding/lm_head on both sides);
2. incremental (KV-cached) decoding against recomputing the prefix, 128 target tokens;
3. beam-5 search sentences/s.

Prints a table, then one JSON object as the last line.

    .venv/bin/python bench/model.py                     # tiny preset, ~1-2 min on 2 busy cores
    .venv/bin/python bench/model.py --preset base --reps 3

Timings interleave the two contenders (A B A B ...) and report medians, so that load from other
processes on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import math
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


if __name__ == "__main__":
    main()
