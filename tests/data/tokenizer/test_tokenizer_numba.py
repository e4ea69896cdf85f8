"""The compiled merge loop gives exactly the merges of the Python reference loop."""

from __future__ import annotations

import pytest

from data.tokenizer import TokenizerConfig, train_tokenizer
from data.tokenizer.bpe import learn_merges, merge_backend

pytest.importorskip("numba", reason="numba is not installed; the Python merge loop is used")


def both(words, counts, tokens, vocab_size, min_frequency):
    t_py, t_nb = list(tokens), list(tokens)
    m_py = learn_merges([list(w) for w in words], counts, t_py, vocab_size, min_frequency, backend="python")
    m_nb = learn_merges([list(w) for w in words], counts, t_nb, vocab_size, min_frequency, backend="numba")
    return m_py, m_nb, t_py, t_nb


@pytest.mark.parametrize(
    "words,counts,tokens,vocab_size",
    [
        ([[0, 1, 2], [0, 1]], [5, 2], [b"a", b"b", b"c"], 10),  # by hand: (a,b) then (ab,c)
        ([[0, 0, 0, 0]], [1], [b"a"], 10),  # overlapping pairs
        ([[2, 3], [0, 1]], [3, 3], [b"a", b"b", b"c", b"d"], 5),  # tie-break
        ([[0, 4], [3, 2]], [1, 1], [b"a", b"b", b"c", b"ab", b"bc"], 10),  # a result that already exists
        ([[1, 2], [2, 3]], [2, 1], ["<s>", "a", "b", "c"], 10),  # str symbols (char_bpe)
    ],
)
def test_known_answers_identical(words, counts, tokens, vocab_size):
    m_py, m_nb, t_py, t_nb = both(words, counts, tokens, vocab_size, 1)
    assert m_py == m_nb and t_py == t_nb


@pytest.mark.parametrize("kind", ["byte_bpe", "char_bpe"])
def test_trained_tokenizers_identical(corpus_file, kind):
    base = dict(kind=kind, vocab_size=2500, num_workers=1, min_frequency=2)
    py = train_tokenizer(TokenizerConfig(merge_backend="python", **base), [str(corpus_file)])
    nb = train_tokenizer(TokenizerConfig(merge_backend="numba", **base), [str(corpus_file)])
    assert nb.train_stats["merge_backend"] == "numba" and py.train_stats["merge_backend"] == "python"
    assert py.merges == nb.merges and py.tokens == nb.tokens and py.fingerprint == nb.fingerprint


def test_auto_choice():
    assert merge_backend("auto", 10) == "python"
    assert merge_backend("auto", 10**6) == "numba"
    with pytest.raises(ValueError, match="merge_backend must be"):
        merge_backend("fast", 10)


def test_compiled_encoding_identical(small_tok, make_text):
    from data.tokenizer.tokenizer import BPETokenizer

    text = make_text(100_000, seed=21) + " " + "x" * 900 + " " + "中" * 600
    py = BPETokenizer(small_tok.kind, small_tok.tokens, small_tok.merges, small_tok.special_tokens,
                      small_tok.pattern, small_tok.max_pretoken_chars)
    py.merge_backend = "python"
    nb = BPETokenizer(small_tok.kind, small_tok.tokens, small_tok.merges, small_tok.special_tokens,
                      small_tok.pattern, small_tok.max_pretoken_chars)
    nb.merge_backend = "numba"
    assert nb.encode(text) == py.encode(text)
    assert nb._table is not None and nb._table is not False and py._table is False
