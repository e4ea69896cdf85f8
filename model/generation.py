"""Decoding: greedy, batched beam search, and sampling, all KV-cached (or recomputing, for checks).

    generate(model, src, max_len=64)                              # greedy
    generate(model, src, max_len=64, beam_size=5, length_penalty=1.0)
    generate(model, src, max_len=64, do_sample=True, temperature=0.8, top_k=50, top_p=0.95, generator=g)

Each returns one list of token ids per source sentence: what follows BOS, up to and excluding EOS, at
most `max_len` tokens (EOS counts towards max_len). `src` is (B, S), right-padded with cfg.pad_id.

`max_len_a`, `max_len_b` bound each sentence by its own source as well (fairseq's --max-len-a/-b,
Marian's --max-length-factor): at most min(max_len, ⌊a·S_i + b⌋) tokens, S_i the i-th source's tokens
(EOS included). An undertrained model that never says EOS repeats itself up to max_len; the bound cuts
those lines where a translation of that source could plausibly end (a = 0: max_len only).

Notation: B sentences, K beams, N = B·K decoder rows, t decoded length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.transformer import Transformer


class CachedSteps:
    """Next-token logits one position at a time: encode once, cache K/V, feed only the newest token."""

    def __init__(self, model: Transformer, memory: Tensor, src_mask: Tensor, max_len: int):
        self.model, self.memory, self.src_mask = model, memory, src_mask
        self.cache = model.new_cache(max_len)

    def __call__(self, prefix: Tensor) -> Tensor:
        # prefix (N, t) -> logits (N, V) of position t; the cache already holds positions < t - 1
        hidden = self.model.decode(prefix[:, self.cache.length :], self.memory, self.src_mask, cache=self.cache)
        return self.model.lm_head(hidden[:, -1])

    def reorder(self, index: Tensor) -> None:
        # Beams only ever continue beams of their own sentence: memory rows and cross K/V stay put.
        self.cache.reorder(index, cross=False)


class RecomputedSteps:
    """The same logits by running the decoder over the whole prefix each step (the reference)."""

    def __init__(self, model: Transformer, memory: Tensor, src_mask: Tensor, max_len: int):
        self.model, self.memory, self.src_mask = model, memory, src_mask

    def __call__(self, prefix: Tensor) -> Tensor:
        return self.model.lm_head(self.model.decode(prefix, self.memory, self.src_mask)[:, -1])

    def reorder(self, index: Tensor) -> None:
        pass  # nothing is kept between steps


def _start(model: Transformer, src: Tensor, max_len: int, rows_per_source: int, use_cache: bool):
    if max_len < 1:
        raise ValueError(f"max_len={max_len}; need at least 1")
    if src.dim() != 2:
        raise ValueError(f"src must be (B, S) token ids; got shape {tuple(src.shape)}")
    src_mask = model.make_src_mask(src)  # (B, 1, 1, S)
    memory = model.encode(src, src_mask)  # (B, S, d_model)
    if rows_per_source > 1:
        memory = memory.repeat_interleave(rows_per_source, dim=0)  # (B·K, S, d_model)
        src_mask = src_mask.repeat_interleave(rows_per_source, dim=0)  # (B·K, 1, 1, S)
    steps_cls = CachedSteps if use_cache else RecomputedSteps
    return steps_cls(model, memory, src_mask, max_len)


def length_limits(src: Tensor, pad_id: int, max_len: int, max_len_a: float = 0.0, max_len_b: int = 0) -> Tensor:
    """(B, S) sources -> (B,) the most tokens each translation may have: min(max_len, ⌊a·S_i + b⌋), ≥ 1.

    >>> length_limits(torch.tensor([[5, 6, 2], [5, 2, 0]]), 0, 64, 1.5, 1).tolist()
    [5, 4]
    """
    if max_len_a < 0:
        raise ValueError(f"max_len_a={max_len_a}; must be >= 0 (0: no bound from the source)")
    full = torch.full((src.size(0),), max_len, dtype=torch.long, device=src.device)
    if max_len_a == 0:
        return full
    src_len = (src != pad_id).sum(dim=1).double()  # (B,)
    own = (max_len_a * src_len + max_len_b).floor().long()  # (B,)
    return torch.minimum(full, own).clamp(min=1)


def _strip(row: list[int], eos_id: int) -> list[int]:
    """[5, 7, EOS, PAD, PAD] -> [5, 7]"""
    return row[: row.index(eos_id)] if eos_id in row else row


# --------------------------------------------------------------------------------------------
# Greedy and sampling: one row per sentence, the next token chosen by a rule


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Scale by 1/temperature, keep the top_k largest, then the smallest set whose probability ≥ top_p.

    (N, V) -> (N, V) with removed entries at -inf. top_k=0 and top_p=1.0 keep everything.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; must be > 0 (use greedy decoding for the argmax)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}; must be in (0, 1]")
    if top_k < 0:
        raise ValueError(f"top_k={top_k}; must be >= 0 (0 keeps all)")
    logits = logits.float() / temperature
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely one always stays.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _one_row_per_sentence(model, src, max_len, choose, use_cache, trace, max_len_a=0.0, max_len_b=0) -> Tensor:
    """Decode with `choose(logits (B, V)) -> (B,)`; returns (B, n ≤ max_len) tokens, PAD after EOS.

    With max_len_a > 0, row i ends with EOS once it holds `length_limits(...)[i]` tokens."""
    cfg = model.cfg
    B = src.size(0)
    limits = length_limits(src, cfg.pad_id, max_len, max_len_a, max_len_b) if max_len_a else None
    steps = _start(model, src, max_len, 1, use_cache)
    prefix = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    for t in range(max_len):
        logits = steps(prefix)  # (B, V)
        if trace is not None:
            trace.append(logits)
        token = choose(logits)  # (B,)
        if limits is not None:
            token = token.masked_fill(limits == t, cfg.eos_id)  # row i holds limits[i] tokens: it ends here
        token = token.masked_fill(finished, cfg.pad_id)
        finished |= token == cfg.eos_id
        prefix = torch.cat([prefix, token[:, None]], dim=1)  # (B, t + 1)
        if bool(finished.all()):
            break
    return prefix[:, 1:]


@torch.no_grad()
def greedy_search(
    model: Transformer,
    src: Tensor,
    max_len: int = 64,
    use_cache: bool = True,
    trace=None,
    max_len_a: float = 0.0,
    max_len_b: int = 0,
):
    """Most likely next token at every step. `trace`, a list, collects each step's (B, V) logits."""
    tokens = _one_row_per_sentence(
        model, src, max_len, lambda logits: logits.argmax(dim=-1), use_cache, trace, max_len_a, max_len_b
    )
    return [_strip(row, model.cfg.eos_id) for row in tokens.tolist()]


@torch.no_grad()
def sample(
    model: Transformer,
    src: Tensor,
    max_len: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    max_len_a: float = 0.0,
    max_len_b: int = 0,
) -> list[list[int]]:
    """Ancestral sampling from the filtered distribution (see `filter_logits`)."""
    filter_logits(torch.zeros(1, 2), temperature, top_k, top_p)  # refuse bad settings before encoding

    def choose(logits: Tensor) -> Tensor:
        probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    tokens = _one_row_per_sentence(model, src, max_len, choose, use_cache, None, max_len_a, max_len_b)
    return [_strip(row, model.cfg.eos_id) for row in tokens.tolist()]


# --------------------------------------------------------------------------------------------
# Beam search


def length_penalty_gnmt(length: int, alpha: float) -> float:
    """lp(Y) = ((5 + |Y|) / 6)^α (Wu et al. 2016); scores are log P(Y) / lp(Y). α = 0: no normalisation."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: Tensor,
    beam_size: int = 4,
    max_len: int = 64,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    trace=None,
    max_len_a: float = 0.0,
    max_len_b: int = 0,
) -> list[list[int]]:
    """Batched beam search: B sentences × K beams decode as N = B·K rows in one batch.

    Each step scores all K·V continuations of each sentence and looks at the best 2K. An EOS among the
    best K ends a hypothesis (kept with score log P / lp); the best K non-EOS candidates continue (there
    are always K of them among 2K). A sentence is done when it holds K ended hypotheses; at its length
    limit (max_len, or `length_limits`) every live beam of it ends. The best normalised hypothesis is
    returned. `trace` collects (N, V) logits.
    """
    cfg = model.cfg
    K, V = beam_size, cfg.vocab_size
    if K < 1:
        raise ValueError(f"beam_size={K}; must be >= 1")
    if 2 * K > V:
        raise ValueError(f"beam_size={K} needs 2·beam_size ≤ vocab_size={V} candidates per step")
    B, device = src.size(0), src.device
    steps = _start(model, src, max_len, K, use_cache)
    prefix = torch.full((B * K, 1), cfg.bos_id, dtype=torch.long, device=device)  # (N, 1)
    scores = torch.zeros(B, K, device=device)  # log P of each live beam
    scores[:, 1:] = float("-inf")  # all beams start identical: only beam 0 may expand at first
    ended: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    row_base = torch.arange(B, device=device)[:, None] * K  # (B, 1) first row of each sentence
    limits = length_limits(src, cfg.pad_id, max_len, max_len_a, max_len_b).tolist()

    for t in range(max_len):
        logits = steps(prefix)  # (N, V)
        if trace is not None:
            trace.append(logits)
        logprobs = F.log_softmax(logits.float(), dim=-1).view(B, K, V)
        cand = (scores[:, :, None] + logprobs).view(B, K * V)  # (B, K·V)
        length = t + 1  # tokens in a hypothesis that ends now, EOS included
        lp = length_penalty_gnmt(length, length_penalty)
        last = t == max_len - 1
        top_scores, top_idx = cand.topk(K if last else 2 * K, dim=1)  # (B, 2K), best first
        beam, token = top_idx // V, top_idx % V  # (B, 2K)
        at_limit = [b for b in range(B) if not done[b] and limits[b] == length]
        if at_limit:
            # A sentence at its length limit: its best K continuations end here, with or without EOS.
            rows = (row_base + beam).tolist()
            for b in at_limit:
                for j in range(K):
                    hyp = prefix[rows[b][j], 1:].tolist()
                    if int(token[b, j]) != cfg.eos_id:
                        hyp.append(int(token[b, j]))
                    ended[b].append((float(top_scores[b, j]) / lp, hyp))
                done[b] = True
        if last or all(done):
            break

        is_eos = token == cfg.eos_id  # (B, 2K)
        for b, j in is_eos[:, :K].nonzero().tolist():
            if not done[b]:
                ended[b].append((float(top_scores[b, j]) / lp, prefix[int(row_base[b, 0] + beam[b, j]), 1:].tolist()))
        for b in range(B):
            done[b] = done[b] or len(ended[b]) >= K
        if all(done):
            break

        # The K best non-EOS candidates continue: rank EOS candidates after all others, stably.
        pos = torch.arange(2 * K, device=device).expand(B, 2 * K)
        keep = torch.where(is_eos, pos + 2 * K, pos).argsort(dim=1)[:, :K]  # (B, K)
        parent = (row_base + beam.gather(1, keep)).view(-1)  # (N,) row each new beam continues
        scores = top_scores.gather(1, keep)  # (B, K)
        prefix = torch.cat([prefix.index_select(0, parent), token.gather(1, keep).view(-1, 1)], dim=1)  # (N, t+2)
        steps.reorder(parent)

    return [max(hyps, key=lambda h: h[0])[1] for hyps in ended]


# --------------------------------------------------------------------------------------------


def generate(
    model: Transformer,
    src: Tensor,
    max_len: int = 64,
    beam_size: int = 1,
    length_penalty: float = 1.0,
    *,
    max_len_a: float = 0.0,
    max_len_b: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Decode `src` (B, S): greedy (beam_size=1), beam search (beam_size>1), or sampling (do_sample).

    max_len_a, max_len_b: each sentence also stops at ⌊a·S_i + b⌋ tokens (`length_limits`; a = 0: off).

    Runs in eval mode without gradients and restores the model's mode afterwards.
    """
    if do_sample and beam_size != 1:
        raise ValueError(f"do_sample=True with beam_size={beam_size}: sampling draws one sequence per source")
    was_training = model.training
    model.eval()
    try:
        if do_sample:
            return sample(model, src, max_len, temperature, top_k, top_p, generator, use_cache, max_len_a, max_len_b)
        if beam_size == 1:
            return greedy_search(model, src, max_len, use_cache, max_len_a=max_len_a, max_len_b=max_len_b)
        return beam_search(model, src, beam_size, max_len, length_penalty, use_cache,
                           max_len_a=max_len_a, max_len_b=max_len_b)
    finally:
        model.train(was_training)
