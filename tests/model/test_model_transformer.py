"""The assembled Transformer: shapes, causality, padding, tied weights, names, inspection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_testlib import ALL_OPTIONS, PAD, V, option_id, small_cfg, tokens

from model.config import ModelConfig
from model.transformer import Transformer

B, S, T = 3, 7, 5


def _model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(small_cfg(**overrides)).eval()


@pytest.mark.parametrize("options", ALL_OPTIONS, ids=option_id)
def test_shapes_for_every_option(options):
    m = _model(**options)
    g = torch.Generator().manual_seed(0)
    src, tgt = tokens(g, B, S), tokens(g, B, T)
    d = m.cfg.d_model
    assert m.embed(src).shape == (B, S, d)  # embedding S × d
    src_mask = m.make_src_mask(src)
    memory = m.encode(src, src_mask)
    assert memory.shape == (B, S, d)  # hidden S × d
    hidden = m.decode(tgt, memory, src_mask)
    assert hidden.shape == (B, T, d)
    logits = m(src, tgt)
    assert logits.shape == (B, T, V)  # logits T × V
    torch.testing.assert_close(logits, m.lm_head(hidden))
    assert torch.isfinite(logits).all()


CORE_OPTIONS = [
    dict(positional=pe, norm_position=p, ffn=f)
    for pe, p, f in [("sinusoidal", "pre", "relu"), ("rope", "post", "swiglu"), ("learned", "pre", "gelu")]
]


@pytest.mark.parametrize("options", CORE_OPTIONS, ids=option_id)
def test_causal_mask_future_targets_do_not_change_the_past(options):
    m = _model(**options)
    g = torch.Generator().manual_seed(1)
    src, tgt = tokens(g, B, S), tokens(g, B, T + 3)
    base = m(src, tgt)
    for i in range(tgt.size(1) - 1):
        changed = tgt.clone()
        changed[:, i + 1 :] = tokens(g, B, tgt.size(1) - i - 1)
        out = m(src, changed)
        torch.testing.assert_close(out[:, : i + 1], base[:, : i + 1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[:, i + 1 :], base[:, i + 1 :])  # the future does matter


@pytest.mark.parametrize("options", CORE_OPTIONS, ids=option_id)
def test_appending_padding_leaves_outputs_unchanged(options):
    m = _model(**options)
    g = torch.Generator().manual_seed(2)
    src, tgt = tokens(g, B, S), tokens(g, B, T)
    base = m(src, tgt)
    src_mask = m.make_src_mask(src)
    base_memory = m.encode(src, src_mask)
    for extra in (1, 4):
        src_p = torch.cat([src, torch.full((B, extra), PAD)], dim=1)
        tgt_p = torch.cat([tgt, torch.full((B, extra), PAD)], dim=1)
        out = m(src_p, tgt_p)
        torch.testing.assert_close(out[:, :T], base, rtol=1e-5, atol=1e-5)
        memory = m.encode(src_p, m.make_src_mask(src_p))
        torch.testing.assert_close(memory[:, :S], base_memory, rtol=1e-5, atol=1e-5)


def test_ragged_batch_equals_one_by_one():
    m = _model()
    g = torch.Generator().manual_seed(3)
    srcs = [tokens(g, 1, n) for n in (2, 6, 4)]
    tgts = [tokens(g, 1, n) for n in (3, 1, 5)]
    src = torch.full((3, 6), PAD)
    tgt = torch.full((3, 5), PAD)
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        src[i, : s.size(1)], tgt[i, : t.size(1)] = s[0], t[0]
    batched = m(src, tgt)
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        torch.testing.assert_close(batched[i, : t.size(1)], m(s, t)[0], rtol=1e-5, atol=1e-5)


def test_explicit_tgt_mask_equals_implicit_causal():
    m = _model()
    g = torch.Generator().manual_seed(4)
    src, tgt = tokens(g, B, S), tokens(g, B, T)
    tgt[0, 3:] = PAD
    src_mask = m.make_src_mask(src)
    memory = m.encode(src, src_mask)
    implicit = m.decode(tgt, memory, src_mask)
    explicit = m.decode(tgt, memory, src_mask, m.make_tgt_mask(tgt))
    real = tgt != PAD
    torch.testing.assert_close(implicit[real], explicit[real], rtol=1e-5, atol=1e-5)


def test_tied_weights_share_storage_and_survive_safetensors(tmp_path):
    from safetensors.torch import load_model, save_model

    m = _model(tie_embeddings=True)
    assert m.lm_head.weight is m.embed_tokens.weight
    assert m.lm_head.weight.data_ptr() == m.embed_tokens.weight.data_ptr()
    untied = _model(tie_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()
    assert m.num_parameters() == untied.num_parameters() - V * m.cfg.d_model

    path = tmp_path / "model.safetensors"
    save_model(m, str(path))
    fresh = _model(seed=1, tie_embeddings=True)
    load_model(fresh, str(path))
    assert fresh.lm_head.weight.data_ptr() == fresh.embed_tokens.weight.data_ptr()
    src, tgt = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 5]])
    torch.testing.assert_close(fresh(src, tgt), m(src, tgt))


def test_parameter_names_are_the_checkpoint_keys():
    names = set(dict(_model(ffn="swiglu", positional="learned", tie_embeddings=False).named_parameters()))
    for expected in [
        "embed_tokens.weight",
        "pos_embed.weight",
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.self_attn.k_proj.weight",
        "encoder.layers.0.self_attn.v_proj.weight",
        "encoder.layers.0.self_attn.o_proj.weight",
        "encoder.layers.0.self_attn_norm.weight",
        "encoder.layers.0.ffn.gate_proj.weight",
        "encoder.layers.0.ffn.up_proj.weight",
        "encoder.layers.0.ffn.down_proj.weight",
        "encoder.layers.0.ffn_norm.weight",
        "encoder.norm.weight",
        "decoder.layers.1.self_attn.q_proj.weight",
        "decoder.layers.1.cross_attn.k_proj.weight",
        "decoder.layers.1.cross_attn_norm.weight",
        "decoder.norm.weight",
        "lm_head.weight",
    ]:
        assert expected in names, expected
    # Derived tables are not checkpoint keys.
    assert not any("pe" == k.split(".")[-1] for k in _model().state_dict())


def test_post_norm_has_no_final_norm_parameters():
    names = set(dict(_model(norm_position="post").named_parameters()))
    assert "encoder.norm.weight" not in names and "decoder.layers.0.ffn_norm.weight" in names


def test_missing_vocab_and_bad_special_ids_are_refused():
    with pytest.raises(ValueError, match="model.vocab_size=0; set it from the trained tokenizer"):
        Transformer(ModelConfig())
    with pytest.raises(ValueError, match="model.eos_id=30 is outside the vocabulary of 23"):
        Transformer(small_cfg(eos_id=30))


def test_too_long_input_is_refused_by_name():
    m = _model(max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        m(torch.full((1, 9), 5), torch.full((1, 2), 5))


def test_inspect_gives_per_layer_weights_of_one_example():
    m = _model(n_encoder_layers=2, n_decoder_layers=3)
    m.train()
    src = torch.tensor([5, 6, 7, 8, PAD, PAD])
    tgt = torch.tensor([1, 9, 10])
    ins = m.inspect(src, tgt)
    assert m.training  # inspect ran in eval mode and restored the mode it found
    H = m.cfg.n_heads
    assert ins.src == [5, 6, 7, 8] and ins.tgt == [1, 9, 10]
    assert [w.shape for w in ins.encoder_self] == [(H, 4, 4)] * 2
    assert [w.shape for w in ins.decoder_self] == [(H, 3, 3)] * 3
    assert [w.shape for w in ins.cross] == [(H, 3, 4)] * 3
    assert [h.shape for h in ins.encoder_hidden] == [(4, m.cfg.d_model)] * 2
    assert [h.shape for h in ins.decoder_hidden] == [(3, m.cfg.d_model)] * 3
    for w in ins.encoder_self + ins.decoder_self + ins.cross:
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    for w in ins.decoder_self:
        assert (w.triu(diagonal=1) == 0).all()  # causal
    torch.testing.assert_close(ins.logits, m.eval()(src[:4][None], tgt[None])[0], rtol=1e-5, atol=1e-5)
    # Recording is switched off again: later forwards take the fused path and keep nothing.
    assert all(layer.self_attn.weights is None for layer in m.encoder.layers)


def test_dropout_is_active_in_training_only():
    m = _model(dropout=0.5)
    src, tgt = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 5, 6]])
    torch.testing.assert_close(m(src, tgt), m(src, tgt))
    m.train()
    assert not torch.allclose(m(src, tgt), m(src, tgt))


_HYPO_MODEL: dict[str, Transformer] = {}


def _hypo_model(positional: str) -> Transformer:
    if positional not in _HYPO_MODEL:
        _HYPO_MODEL[positional] = _model(positional=positional)
    return _HYPO_MODEL[positional]


@settings(max_examples=20, deadline=None)
@given(
    positional=st.sampled_from(["sinusoidal", "rope", "learned"]),
    lengths=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 7)), min_size=1, max_size=4),
    extra=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    seed=st.integers(0, 2**16),
)
def test_ragged_padded_batches_equal_each_sentence_alone(positional, lengths, extra, seed):
    """Any mix of lengths, plus any extra padding columns: each row's logits are those it gets alone."""
    m = _hypo_model(positional)
    g = torch.Generator().manual_seed(seed)
    S, T = max(s for s, _ in lengths) + extra[0], max(t for _, t in lengths) + extra[1]
    src, tgt = torch.full((len(lengths), S), PAD), torch.full((len(lengths), T), PAD)
    rows = []
    for i, (s, t) in enumerate(lengths):
        rs, rt = tokens(g, 1, s), tokens(g, 1, t)
        src[i, :s], tgt[i, :t] = rs[0], rt[0]
        rows.append((rs, rt))
    batched = m(src, tgt)
    for i, (rs, rt) in enumerate(rows):
        torch.testing.assert_close(batched[i, : rt.size(1)], m(rs, rt)[0], rtol=1e-5, atol=1e-5)
