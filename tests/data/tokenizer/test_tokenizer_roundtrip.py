"""Round trips over nasty strings, special-token handling, batch encoding and `explain`."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.tokenizer import TokenizerConfig, train_tokenizer

NASTY = [
    "",
    " ",
    "\n",
    "   \t\t\n\n  x  ",
    "hello world",
    "🙂🚀👩‍💻🇩🇪",
    "中文字符机器翻译",
    "e\u0301a\u0308n\u0303",  # combining marks
    "\x00\x01\x1f\x7f\u200b\ufeff",
    "don't stop",
    "a" * 5000,
    "中" * 3000,
    "<s> not special unless allowed </s>",
    "\U0010ffff\U0001f600",
]

# Arbitrary Unicode plus a bias toward the hard classes: emoji, CJK, combining marks, controls, whitespace.
hard_chars = st.sampled_from(list("🙂🚀中文字한국\u0301\u0308\u0303\x00\x01\t\n\r \u00a0\u3000\u2028"))
pieces = st.one_of(
    st.text(alphabet=st.one_of(st.characters(blacklist_categories=("Cs",)), hard_chars), max_size=40),
    st.sampled_from(["👩‍💻", "🇩🇪", "   ", "\n\n", "'s", "'ll"]),
)
texts = st.lists(pieces, max_size=8).map("".join)


@pytest.mark.parametrize("text", NASTY, ids=lambda t: repr(t[:12]))
def test_round_trip_nasty(small_tok, text):
    ids = small_tok.encode(text)
    assert small_tok.decode(ids) == text
    assert all(i >= 4 for i in ids)  # no special ids from plain text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts)
def test_round_trip_property(small_tok, text):
    assert small_tok.decode(small_tok.encode(text)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=100))
def test_any_bytes_round_trip(small_tok, data):
    # Invalid UTF-8 read with surrogateescape is encoded as its own bytes and decoded back exactly.
    text = data.decode("utf-8", "surrogateescape")
    assert small_tok.decode_bytes(small_tok.encode(text)) == data


def test_special_ids_and_allowed(small_tok):
    assert (small_tok.pad_id, small_tok.bos_id, small_tok.eos_id) == (0, 1, 2)
    text = "x<s>y</s>"
    plain = small_tok.encode(text)
    assert 1 not in plain and 2 not in plain
    allowed = small_tok.encode(text, allowed_special={"<s>", "</s>"})
    assert allowed.count(1) == 1 and allowed[-1] == 2
    assert small_tok.encode(text, allowed_special="all") == allowed
    assert small_tok.decode(allowed) == "xy"
    assert small_tok.decode(allowed, skip_special=False) == text
    with pytest.raises(ValueError, match="not special tokens"):
        small_tok.encode(text, allowed_special={"<nope>"})


def test_decode_refuses_unknown_id(small_tok):
    with pytest.raises(ValueError, match="outside this tokenizer's vocabulary"):
        small_tok.decode([5, small_tok.vocab_size])
    with pytest.raises(ValueError, match="-1"):
        small_tok.decode([-1])


def test_decode_invalid_utf8_replaced(small_tok):
    # The first byte of '中' alone is not UTF-8: decode gives U+FFFD, decode_bytes the byte itself.
    lead = small_tok.token_to_id("ä")  # GPT-2's character for byte 0xe4
    assert small_tok.decode_bytes([lead]) == b"\xe4"
    assert small_tok.decode([lead]) == "\ufffd"


def test_encode_batch_matches_encode(small_tok):
    texts = ["a b c", "中文", "", "🙂 x"]
    assert small_tok.encode_batch(texts) == [small_tok.encode(t) for t in texts]


def test_long_pretoken_is_cut_and_linear(small_tok):
    # 60k CJK characters without a space is one regex pre-token; it is cut every 256 characters.
    text = "机器翻译数据训练模型语言" * 5000
    ids = small_tok.encode(text)
    assert small_tok.decode(ids) == text
    assert small_tok.max_pretoken_chars == 256


def test_explain_shows_bytes_and_ranks(small_tok):
    out = small_tok.explain("the über")
    assert "pre-token ' über': 6 bytes 20 c3 bc 62 65 72" in out
    assert "merge rank" in out and "ids:" in out


def test_char_bpe_kind(corpus_file):
    tok = train_tokenizer(TokenizerConfig(kind="char_bpe", vocab_size=3000, num_workers=1), [str(corpus_file)])
    assert tok.kind == "char_bpe"
    assert any(a.endswith("</w>") or b.endswith("</w>") for a, b in tok.merges)
    text = "the new model  is\ttrained"
    assert tok.decode(tok.encode(text)) == "the new model is trained"  # whitespace becomes one space
    unk = tok.token_to_id("<unk>")
    assert unk in tok.encode("ⓩ")
