"""Shared helpers for the model tests: small configs, every option combination, seeded inputs."""

from __future__ import annotations

import itertools

import torch

from model.config import ModelConfig

PAD, BOS, EOS = 0, 1, 2
V = 23  # small vocabulary: 3 specials + 20 symbols


def small_cfg(**overrides) -> ModelConfig:
    """The tiny preset, narrowed further so that property tests over every option stay fast."""
    base = dict(vocab_size=V, d_model=32, n_heads=4, d_ff=64, dropout=0.0, max_seq_len=64)
    base.update(overrides)
    return ModelConfig.from_name("tiny", **base)


ALL_OPTIONS = [
    dict(norm=n, norm_position=p, positional=pe, ffn=f, tie_embeddings=t)
    for n, p, pe, f, t in itertools.product(
        ["layernorm", "rmsnorm"], ["pre", "post"], ["sinusoidal", "rope", "learned"], ["relu", "gelu", "swiglu"], [True, False]
    )
]


def option_id(o: dict) -> str:
    return "-".join(str(v) if not isinstance(v, bool) else ("tied" if v else "untied") for v in o.values())


def tokens(g: torch.Generator, B: int, L: int) -> torch.Tensor:
    """(B, L) random non-special token ids."""
    return torch.randint(3, V, (B, L), generator=g)


def copy_reverse_batch(n: int, task: str, g: torch.Generator, n_symbols: int = 8, max_len: int = 6):
    """A batch of the copy or reverse task: src = x EOS, tgt_in = BOS y, tgt_out = y EOS (right-padded).

    Symbols are ids 3..3+n_symbols-1, lengths uniform in 1..max_len. Returns (src, tgt_in, tgt_out),
    each (n, max_len + 1).
    """
    if task not in ("copy", "reverse"):
        raise ValueError(f"task={task!r}; allowed: copy, reverse")
    L = torch.randint(1, max_len + 1, (n, 1), generator=g)  # (n, 1)
    x = torch.randint(3, 3 + n_symbols, (n, max_len), generator=g)  # (n, max_len)
    pos = torch.arange(max_len)[None]  # (1, max_len)
    y = x.gather(1, (L - 1 - pos).clamp(min=0)) if task == "reverse" else x
    x, y = x.masked_fill(pos >= L, PAD), y.masked_fill(pos >= L, PAD)
    zero = torch.zeros(n, 1, dtype=torch.long)
    src = torch.cat([x, zero], 1).scatter(1, L, EOS)
    tgt_out = torch.cat([y, zero], 1).scatter(1, L, EOS)
    tgt_in = torch.cat([torch.full((n, 1), BOS), y], 1)
    return src, tgt_in, tgt_out


def train_steps(model, task: str, steps: int, lr: float, batch_size: int, g: torch.Generator, clip: float = 1.0, warmup: int = 0, **batch_kw):
    """A plain AdamW loop with linear warmup then linear decay to 0; yields (step, loss) every step."""
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = warmup or max(steps // 10, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, max(0.0, 1 - s / steps)))
    model.train()
    for step in range(1, steps + 1):
        src, tgt_in, tgt_out = copy_reverse_batch(batch_size, task, g, **batch_kw)
        logits = model(src, tgt_in)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        yield step, loss.item()
    model.eval()
