"""The heap merge loop and its numba copy give exactly the merges of the textbook loop (bpe.textbook_merges)."""

from __future__ import annotations

from collections import Counter

import pytest

from data.tokenizer.bpe import learn_merges, textbook_merges

CORPORA = {
    "ties": "ab cd ab cd ef gh ef gh",  # every pair seen equally often: the smallest pair ids first
    "overlap": "aaaa aaa aa a aaaaa bbbb",  # (a, a) overlaps itself
    "repeat": "low lower lowest newer newest wider widest low low",  # Sennrich et al.'s example
    "non_ascii": "héllo wörld café naïve façade señor ünïcödé héllo café",
    "cjk": "中文 中国 国家 中国人 日本語 日本 本日 中国 中文 😀 😀😀",
}


def byte_words(text: str) -> tuple[list[list[int]], list[int], list[bytes]]:
    """Each space-separated word's UTF-8 bytes as ids 0..255, counted: 'ab ab' -> [[97, 98]], [2], 256 tokens."""
    counts = Counter(w.encode("utf-8") for w in text.split())
    return [list(w) for w in counts], list(counts.values()), [bytes([b]) for b in range(256)]


def char_words(text: str) -> tuple[list[list[int]], list[int], list[str]]:
    """Each word's characters as ids over the sorted alphabet (str symbols, as char_bpe has them)."""
    counts = Counter(text.split())
    alphabet = sorted({c for w in counts for c in w})
    ids = {c: i for i, c in enumerate(alphabet)}
    return [[ids[c] for c in w] for w in counts], list(counts.values()), alphabet


def run(loop, words, counts, tokens, vocab_size, **kw):
    tokens = list(tokens)
    merges = loop([list(w) for w in words], list(counts), tokens, vocab_size, 1, **kw)
    return merges, tokens


@pytest.mark.parametrize("name", sorted(CORPORA))
@pytest.mark.parametrize("symbols", [byte_words, char_words])
def test_heap_loop_matches_textbook(name, symbols):
    words, counts, tokens = symbols(CORPORA[name])
    vocab_size = len(tokens) + 40
    expected = run(textbook_merges, words, counts, tokens, vocab_size)
    assert expected[0], "the corpus gives no merge: nothing compared"
    assert run(learn_merges, words, counts, tokens, vocab_size, backend="python") == expected


@pytest.mark.parametrize("name", sorted(CORPORA))
@pytest.mark.parametrize("symbols", [byte_words, char_words])
def test_numba_loop_matches_textbook(name, symbols):
    pytest.importorskip("numba", reason="numba is not installed; the Python merge loop is used")
    words, counts, tokens = symbols(CORPORA[name])
    vocab_size = len(tokens) + 40
    expected = run(textbook_merges, words, counts, tokens, vocab_size)
    assert run(learn_merges, words, counts, tokens, vocab_size, backend="numba") == expected


def test_numba_byte_arrays_match_textbook():
    """The byte_bpe training path hands numba flat arrays (byte_words_to_arrays), not lists."""
    pytest.importorskip("numba", reason="numba is not installed; the Python merge loop is used")
    from data.tokenizer._bpe_numba import byte_words_to_arrays, learn_merges_arrays

    text = " ".join(CORPORA.values())
    counts = Counter(w.encode("utf-8") for w in text.split())
    keys = sorted(counts)
    tokens = [bytes([b]) for b in range(256)]
    syms, lens = byte_words_to_arrays(keys, {b: b for b in range(256)})
    got = list(tokens)
    merges = learn_merges_arrays(syms, lens, [counts[k] for k in keys], got, 356, 1)
    expected = run(textbook_merges, [list(k) for k in keys], [counts[k] for k in keys], tokens, 356)
    assert (merges, got) == expected


def test_textbook_docstring_example():
    tokens = [b"a", b"b", b"c"]
    assert textbook_merges([[0, 1, 2], [0, 1]], [5, 2], tokens, 10) == [(0, 1), (3, 2)]
    assert tokens == [b"a", b"b", b"c", b"ab", b"abc"]
