"""Decoding: KV-cached = recomputed, beam 1 = greedy, EOS and max_len handling, sampling filters."""

from __future__ import annotations

import pytest
import torch
from model_testlib import BOS, EOS, PAD, V, copy_reverse_batch, small_cfg, train_steps

from model.generation import (
    beam_search,
    filter_logits,
    generate,
    greedy_search,
    length_limits,
    length_penalty_gnmt,
    sample,
)
from model.transformer import Transformer

POSITIONALS = ["sinusoidal", "rope", "learned"]


def _model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(small_cfg(**overrides)).eval()


_PARTLY_TRAINED: dict[str, Transformer] = {}


def _partly_trained(positional: str) -> Transformer:
    """A model trained 50 steps on the copy task: its hypotheses end (EOS) at varied lengths, unlike a
    random model's, so decoding's EOS bookkeeping and beam reordering are really exercised."""
    if positional not in _PARTLY_TRAINED:
        m = _model(positional=positional)
        for _ in train_steps(m, "copy", 50, 3e-3, 16, torch.Generator().manual_seed(0), n_symbols=20, max_len=8):
            pass
        _PARTLY_TRAINED[positional] = m
    return _PARTLY_TRAINED[positional]


def _src(seed: int = 0) -> torch.Tensor:
    src, _, _ = copy_reverse_batch(5, "copy", torch.Generator().manual_seed(seed), n_symbols=20, max_len=8)
    return src


def _eos_biased(m: Transformer, bias: float) -> Transformer:
    """Add `bias` to every EOS logit: +100 makes EOS certain, -100 impossible."""
    m.lm_head = torch.nn.Sequential(m.lm_head, _AddToEos(bias))
    return m


class _AddToEos(torch.nn.Module):
    def __init__(self, bias: float):
        super().__init__()
        self.bias = bias

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits + self.bias * torch.nn.functional.one_hot(torch.tensor(EOS), logits.size(-1))


class _MarkovModel(torch.nn.Module):
    """A stand-in decoder whose next-token distribution depends only on the last token, from a table:
    it gives beam search a known answer. Only the recomputing decode path is provided."""

    A, B_, C = 3, 4, 5
    NEXT = {  # last token -> {next token: probability}
        BOS: {A: 0.5, B_: 0.4, C: 0.1},
        A: {C: 0.4, B_: 0.35, EOS: 0.25},
        B_: {EOS: 0.9, C: 0.1},
        C: {EOS: 1.0},
    }

    def __init__(self):
        super().__init__()
        self.cfg = small_cfg(vocab_size=6)
        table = torch.full((6, 6), 1e-9)
        for prev, nxt in self.NEXT.items():
            for tok, p in nxt.items():
                table[prev, tok] = p
        self.register_buffer("log_table", table.log())

    def make_src_mask(self, src):
        return (src != PAD)[:, None, None, :]

    def encode(self, src, src_mask):
        return torch.zeros(src.size(0), src.size(1), 1)

    def decode(self, tgt, memory, src_mask, tgt_mask=None, cache=None):
        assert cache is None, "the Markov stand-in only supports use_cache=False"
        return torch.nn.functional.one_hot(tgt, 6).float()  # (B, T, 6): the hidden state is the token

    def lm_head(self, hidden):
        return hidden @ self.log_table  # log P(next | last)


def test_beam_search_known_answer_beats_greedy():
    m, src = _MarkovModel(), torch.tensor([[3, 4], [5, PAD]])
    A, B_, C = m.A, m.B_, m.C
    # Greedy follows A (0.5) then C (0.4): P = 0.2. Beam 2 keeps B (0.4) alive: B EOS has P = 0.36.
    assert greedy_search(m, src, max_len=5, use_cache=False) == [[A, C]] * 2
    assert beam_search(m, src, beam_size=2, max_len=5, length_penalty=0.0, use_cache=False) == [[B_]] * 2
    # A strong length penalty prefers the longer [A, C]: log 0.2 / (8/6)^5 > log 0.36 / (7/6)^5.
    assert beam_search(m, src, beam_size=2, max_len=5, length_penalty=5.0, use_cache=False) == [[A, C]] * 2
    # max_len 1 ends every hypothesis after one token: the best single token is A.
    assert beam_search(m, src, beam_size=2, max_len=1, length_penalty=0.0, use_cache=False) == [[A]] * 2


@pytest.mark.parametrize("positional", POSITIONALS)
def test_kv_cached_greedy_equals_recomputation(positional):
    m = _partly_trained(positional)
    src = _src()
    cached, full = [], []
    out_c = greedy_search(m, src, max_len=20, use_cache=True, trace=cached)
    out_f = greedy_search(m, src, max_len=20, use_cache=False, trace=full)
    assert out_c == out_f
    assert len({len(h) for h in out_c}) > 1, "hypotheses should end at varied lengths"
    assert len(cached) == len(full) > 1
    for a, b in zip(cached, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positional", POSITIONALS)
def test_kv_cached_beam_equals_recomputation(positional):
    m = _partly_trained(positional)
    src = _src(1)
    cached, full = [], []
    out_c = beam_search(m, src, beam_size=4, max_len=16, length_penalty=0.6, use_cache=True, trace=cached)
    out_f = beam_search(m, src, beam_size=4, max_len=16, length_penalty=0.6, use_cache=False, trace=full)
    assert out_c == out_f
    assert len({len(h) for h in out_c}) > 1, "hypotheses should end at varied lengths"
    assert len(cached) == len(full) > 1
    for a, b in zip(cached, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_beam_size_one_equals_greedy(seed):
    m = _partly_trained(["sinusoidal", "rope", "learned", "rope"][seed])
    src = _src(seed)
    assert beam_search(m, src, beam_size=1, max_len=12, length_penalty=1.0) == greedy_search(m, src, max_len=12)
    assert generate(m, src, max_len=12, beam_size=1) == greedy_search(m, src, max_len=12)


def test_batched_beam_equals_one_sentence_at_a_time():
    m = _partly_trained("rope")
    src = _src(2)
    batched = beam_search(m, src, beam_size=3, max_len=12)
    for i in range(src.size(0)):
        row = src[i : i + 1, : int((src[i] != PAD).sum())]
        assert beam_search(m, row, beam_size=3, max_len=12) == [batched[i]]


def test_eos_ends_a_sentence_and_max_len_bounds_it():
    always_eos = _eos_biased(_model(), 100.0)
    src = _src()
    assert greedy_search(always_eos, src, max_len=5) == [[]] * len(src)
    assert beam_search(always_eos, src, beam_size=3, max_len=5) == [[]] * len(src)
    never_eos = _eos_biased(_model(), -100.0)
    for out in (greedy_search(never_eos, src, max_len=7), beam_search(never_eos, src, beam_size=2, max_len=7)):
        assert all(len(h) == 7 and EOS not in h for h in out)
    assert all(len(h) == 1 for h in greedy_search(never_eos, src, max_len=1))


def test_length_penalty_is_gnmt():
    assert length_penalty_gnmt(1, 1.0) == pytest.approx(1.0)
    assert length_penalty_gnmt(7, 0.6) == pytest.approx((12 / 6) ** 0.6)
    assert length_penalty_gnmt(40, 0.0) == 1.0


def test_length_penalty_favours_longer_hypotheses():
    m = _partly_trained("sinusoidal")
    src = _src(3)
    short = beam_search(m, src, beam_size=4, max_len=16, length_penalty=0.0)
    long = beam_search(m, src, beam_size=4, max_len=16, length_penalty=2.0)
    assert sum(map(len, long)) >= sum(map(len, short))


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda out: (out > float("-inf")).nonzero()[:, 1].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.5)) == [0]  # the first token alone reaches 0.5
    assert kept(filter_logits(logits, top_p=0.8)) == [0, 1, 2]  # 0.5 + 0.2 < 0.8 ≤ 0.85
    assert kept(filter_logits(logits, top_p=1.0)) == [0, 1, 2, 3, 4]
    assert kept(filter_logits(logits, top_k=4, top_p=0.9)) == [0, 1, 2, 3]
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2.0)
    for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1)):
        with pytest.raises(ValueError):
            filter_logits(logits, **bad)


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    m = _partly_trained("learned")
    src = _src()
    a = sample(m, src, 10, temperature=1.3, generator=torch.Generator().manual_seed(7))
    b = sample(m, src, 10, temperature=1.3, generator=torch.Generator().manual_seed(7))
    c = sample(m, src, 10, temperature=1.3, generator=torch.Generator().manual_seed(8))
    assert a == b and a != c
    assert sample(m, src, 10, top_k=1) == greedy_search(m, src, 10)
    assert generate(m, src, 10, do_sample=True, top_p=1e-6) == greedy_search(m, src, 10)


def test_sampling_follows_the_distribution():
    # With a single decoding step, the empirical first-token frequencies match softmax(logits / τ).
    m = _model()
    src = torch.tensor([[5, 6, 7]]).expand(4000, 3)
    tau = 1.5
    g = torch.Generator().manual_seed(0)
    first = torch.tensor([h[0] if h else EOS for h in sample(m, src, 1, temperature=tau, generator=g)])
    with torch.no_grad():
        p = (m(src[:1], torch.tensor([[BOS]]))[0, 0] / tau).softmax(-1)
    freq = torch.bincount(first, minlength=V).float() / len(first)
    assert (freq - p).abs().max() < 0.03


def test_generate_validates_and_restores_mode():
    m = _model()
    m.train()
    generate(m, _src(), max_len=3, beam_size=2)
    assert m.training
    with pytest.raises(ValueError, match="do_sample=True with beam_size=3"):
        generate(m, _src(), do_sample=True, beam_size=3)
    with pytest.raises(ValueError, match="2·beam_size ≤ vocab_size"):
        generate(m, _src(), beam_size=12)
    with pytest.raises(ValueError, match="max_seq_len=64"):
        generate(m, _src(), max_len=100)


# ---- a length bound from each source (max_len_a, max_len_b) ----------------------------------


def test_length_limits_follow_each_source():
    src = torch.tensor([[5, 6, 7, EOS], [5, EOS, PAD, PAD]])  # 4 and 2 source tokens, EOS counted
    assert length_limits(src, PAD, 64).tolist() == [64, 64]  # a = 0: max_len only
    assert length_limits(src, PAD, 64, 1.5, 2).tolist() == [8, 5]
    assert length_limits(src, PAD, 6, 1.5, 2).tolist() == [6, 5]  # max_len still bounds
    assert length_limits(src, PAD, 64, 0.1, -5).tolist() == [1, 1]  # at least one token
    with pytest.raises(ValueError, match="max_len_a=-1"):
        length_limits(src, PAD, 64, -1.0, 0)


def test_greedy_with_a_source_bound_is_the_unbounded_output_cut_there():
    """Greedy's choice at a step does not depend on later steps, so the bound must only cut."""
    never_eos = _eos_biased(_partly_trained("sinusoidal"), -100.0)
    src = _src(3)
    limits = length_limits(src, PAD, 20, 1.0, 1).tolist()
    assert len(set(limits)) > 1  # the sources differ in length, so the rows end at different steps
    free = greedy_search(never_eos, src, max_len=20)
    bounded = greedy_search(never_eos, src, max_len=20, max_len_a=1.0, max_len_b=1)
    assert bounded == [h[:n] for h, n in zip(free, limits)]
    assert [len(h) for h in bounded] == limits
    m = _partly_trained("rope")  # a model that does say EOS: a short output is left as it was
    free, bounded = greedy_search(m, src, max_len=20), greedy_search(m, src, max_len=20, max_len_a=1.0, max_len_b=1)
    assert bounded == [h[:n] for h, n in zip(free, limits)]
    assert generate(m, src, max_len=20, max_len_a=1.0, max_len_b=1) == bounded


@pytest.mark.parametrize("positional", ["sinusoidal", "rope"])
def test_batched_beam_with_a_source_bound_equals_each_sentence_with_its_own_max_len(positional):
    m = _partly_trained(positional)
    src = _src(4)
    limits = length_limits(src, PAD, 12, 0.8, 0).tolist()
    assert len(set(limits)) > 1
    batched = beam_search(m, src, beam_size=3, max_len=12, max_len_a=0.8)
    for i in range(src.size(0)):
        row = src[i : i + 1, : int((src[i] != PAD).sum())]
        assert [batched[i]] == beam_search(m, row, beam_size=3, max_len=limits[i])
        assert len(batched[i]) <= limits[i]
    assert generate(m, src, max_len=12, beam_size=3, max_len_a=0.8) == batched
