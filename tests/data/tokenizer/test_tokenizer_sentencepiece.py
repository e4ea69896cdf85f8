"""The sentencepiece backend behind the same interface: training, round trips, specials, files, sampling."""

from __future__ import annotations

import pytest

from data.tokenizer import TokenizerConfig, TokenizerFileError, load_tokenizer, train_tokenizer
from data.tokenizer.counting import Reader
from data.tokenizer.sp import draw_sample

pytest.importorskip("sentencepiece", reason="sentencepiece is not installed")

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<2de>"]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_tok(request, corpus_file):
    cfg = TokenizerConfig(kind="sentencepiece", sp_model_type=request.param, vocab_size=800, num_workers=1, special_tokens=SPECIALS)
    return train_tokenizer(cfg, [str(corpus_file)])


@pytest.mark.parametrize(
    "text", ["", "hello world", "  two  spaces ", "中文🙂 x\t\ny", "e\u0301", "ⓩ unseen ꙮ", "\x00\x01", "a" * 3000]
)
def test_round_trip(sp_tok, text):
    assert sp_tok.decode(sp_tok.encode(text)) == text


def test_ids_and_specials(sp_tok):
    assert (sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 1, 2)
    assert sp_tok.token_to_id("<unk>") == 3 and sp_tok.token_to_id("<2de>") == 4
    assert 4 not in sp_tok.encode("<2de> hallo")
    ids = sp_tok.encode("<2de> hallo", allowed_special={"<2de>"})
    assert ids[0] == 4
    assert sp_tok.decode(ids) == " hallo"
    assert sp_tok.decode(ids, skip_special=False) == "<2de> hallo"
    assert sp_tok.vocab_size == 800
    assert sp_tok.encode_batch(["a b", "中文"]) == [sp_tok.encode("a b"), sp_tok.encode("中文")]


def test_save_load_and_edited_model(sp_tok, tmp_path):
    sp_tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sentencepiece.model", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
        "tpipe_tokenizer.json", "vocab.json"]
    tok = load_tokenizer(tmp_path)
    assert tok.kind == "sentencepiece" and tok.fingerprint == sp_tok.fingerprint
    assert tok.encode("hello 中文") == sp_tok.encode("hello 中文")
    assert "pieces" in tok.explain("hello")
    model = tmp_path / "sentencepiece.model"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(TokenizerFileError, match="sentencepiece.model"):
        load_tokenizer(tmp_path)


def test_small_corpus_gives_smaller_vocab(tmp_path, caplog):
    p = tmp_path / "tiny.txt"
    p.write_text("hello world\n" * 5, encoding="utf-8")
    with caplog.at_level("WARNING", logger="tpipe.tokenizer"):
        tok = train_tokenizer(TokenizerConfig(kind="sentencepiece", vocab_size=2000, num_workers=1), [str(p)])
    assert tok.vocab_size < 2000 and tok.train_stats["stopped_early"]
    assert "sentencepiece stopped early" in caplog.text


def test_sample_is_bottom_k_independent_of_tasks(tmp_path, make_text):
    p = tmp_path / "c.txt"
    p.write_text(make_text(50_000, seed=5), encoding="utf-8")
    one, _ = draw_sample([str(p)], Reader(), 300, 1)
    five, _ = draw_sample([str(p)], Reader(), 300, 5)
    assert one == five and len(one) == 300


def test_sample_with_ray(ray2, tmp_path, make_text):
    p = tmp_path / "c.txt"
    p.write_text(make_text(50_000, seed=5), encoding="utf-8")
    local, _ = draw_sample([str(p)], Reader(), 300, 1)  # Ray is up: this also runs as a task
    four, stats = draw_sample([str(p)], Reader(), 300, 4)
    assert local == four and stats.texts > 300
