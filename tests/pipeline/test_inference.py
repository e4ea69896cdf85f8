"""Translator edge cases on a tiny model package (random weights; what is tested is the plumbing)."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    import torch

    from data.tokenizer import TokenizerConfig, train_tokenizer
    from model.config import ModelConfig
    from model.transformer import Transformer
    from pipeline.package import save as save_model_package

    d = tmp_path_factory.mktemp("pkg")
    (d / "corpus.txt").write_text("hello world\nhallo welt\n" * 20, encoding="utf-8")
    tok = train_tokenizer(TokenizerConfig(vocab_size=264, num_workers=1), [str(d / "corpus.txt")])
    tok.save(d / "tok")
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                      d_ff=32, max_seq_len=16, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)
    torch.manual_seed(0)
    return save_model_package(d / "package", Transformer(cfg), cfg, {"max_len": 6, "beam_size": 1}, d / "tok")


def test_empty_sentences_translate_to_empty_ones_in_place(package):
    from pipeline.inference import Translator

    out = Translator(package).translate(["", "hello world", "   ", "hallo"])
    assert len(out) == 4 and out[0] == "" and out[2] == ""


def test_a_cut_input_is_reported(package, caplog):
    from pipeline.inference import Translator

    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        Translator(package).translate(["hello world " * 20, "hello"])
    (record,) = [r for r in caplog.records if r.name == "pipeline.inference"]
    assert "1 sentence(s) longer than the model's 15 source tokens were cut" in record.getMessage()
    assert "sentence 1:" in record.getMessage()


@pytest.mark.parametrize("texts", [[], [""], ["  ", "\t"]])
def test_nothing_to_translate_is_refused(texts):
    from data.errors import UserError
    from pipeline.inference import check_sentences

    with pytest.raises(UserError, match="nothing to translate"):
        check_sentences(texts)
    check_sentences(["", "a"])  # one real sentence is enough; the empty one stays empty


def test_a_package_s_source_length_bound_cuts_each_translation_where_it_says(package):
    """eval.max_len_a / max_len_b travel in generation.json (or as overrides) to the decoder: greedy
    output bounded by ⌊a·S + b⌋ is the unbounded output cut there, sentence by sentence."""
    import math

    from pipeline.inference import Translator

    free = Translator(package, max_len=12)
    bounded = Translator(package, max_len=12, max_len_a=0.5, max_len_b=1)
    ids = free.encode_sources(["hello world hello world", "hallo", "hello welt"])
    limits = [min(12, math.floor(0.5 * len(x) + 1)) for x in ids]
    out_free, out_bounded = free.generate_batch(ids, free.generation), bounded.generate_batch(ids, bounded.generation)
    assert out_bounded == [h[:n] for h, n in zip(out_free, limits)]
    assert any(len(h) > n for h, n in zip(out_free, limits))  # the bound did cut something here
    assert free.decoding(max_len_a=0.5, max_len_b=1) == bounded.generation
