"""Known-answer tests of the merge loop and of rank-based merging, worked out by hand."""

from __future__ import annotations

import random

from data.tokenizer import TokenizerConfig, train_tokenizer
from data.tokenizer.bpe import _apply_merges_heap, apply_merges, count_pairs, learn_merges, trace_merges
from data.tokenizer.pretokenize import byte_order, bytes_to_unicode, cut_long


def test_count_pairs_docstring_example():
    assert count_pairs([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}


def test_learn_merges_by_hand():
    # words: abc x5, ab x2 -> (a,b)=7 wins; then (ab,c)=5.
    tokens = ["a", "b", "c"]
    words = [[0, 1, 2], [0, 1]]
    merges = learn_merges(words, [5, 2], tokens, 10, 1)
    assert merges == [(0, 1), (3, 2)]
    assert tokens == ["a", "b", "c", "ab", "abc"]
    assert words == [[4], [3]]


def test_overlapping_pair_counts_like_hf():
    # "aaaa": (a,a) occurs 3 times; merging left to right gives [aa, aa], then (aa, aa).
    tokens = ["a"]
    merges = learn_merges([[0, 0, 0, 0]], [1], tokens, 10, 1)
    assert merges == [(0, 0), (1, 1)]
    assert tokens == ["a", "aa", "aaaa"]


def test_tie_break_smallest_pair_ids():
    tokens = ["a", "b", "c", "d"]
    merges = learn_merges([[2, 3], [0, 1]], [3, 3], tokens, 5, 1)
    assert merges == [(0, 1)]  # equal counts: (0, 1) < (2, 3)


def test_existing_result_reuses_id():
    # a + bc and ab + c both make "abc": the second merge adds no token (Hugging Face does the same).
    tokens = ["a", "b", "c", "ab", "bc"]
    words = [[0, 4], [3, 2]]
    merges = learn_merges(words, [1, 1], tokens, 10, 1)
    assert merges == [(0, 4), (3, 2)]
    assert tokens == ["a", "b", "c", "ab", "bc", "abc"]
    assert words == [[5], [5]]


def test_min_frequency_stops():
    tokens = ["a", "b", "c"]
    assert learn_merges([[0, 1], [1, 2]], [2, 1], tokens, 10, 2) == [(0, 1)]


def hug_corpus(tmp_path):
    # The classic example: hug x10, pug x5, pun x12, bun x4, hugs x5.
    lines = ["hug"] * 10 + ["pug"] * 5 + ["pun"] * 12 + ["bun"] * 4 + ["hugs"] * 5
    p = tmp_path / "hug.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_train_known_answer_and_early_stop(tmp_path, caplog):
    p = hug_corpus(tmp_path)
    cfg = TokenizerConfig(vocab_size=400, num_workers=1)
    with caplog.at_level("WARNING", logger="tpipe.tokenizer"):
        tok = train_tokenizer(cfg, [str(p)])
    # ug 20; un 16; h+ug 15; p+un 12; then p+ug 5 ties hug+s 5 and 'p' (a byte) has the smaller id; b+un 4.
    assert tok.merges == [("u", "g"), ("u", "n"), ("h", "ug"), ("p", "un"), ("p", "ug"), ("hug", "s"), ("b", "un")]
    assert tok.vocab_size == 4 + 256 + 7
    assert tok.train_stats["stopped_early"] and tok.train_stats["merges_found"] == 7
    assert "stopped early: found 7 merges" in caplog.text
    assert tok.encode("hugs pun") == [tok.token_to_id("hugs"), tok.token_to_id("Ġ"), tok.token_to_id("pun")]


def test_tie_break_uses_gpt2_byte_order_not_byte_values(tmp_path):
    # " x" and "ax" three times each: byte 0x20 < 'a', but GPT-2/HF give ' ' (as 'Ġ', U+0120) a later id.
    p = tmp_path / "tie.txt"
    p.write_text(" x\nax\n" * 3, encoding="utf-8")
    tok = train_tokenizer(TokenizerConfig(vocab_size=261, num_workers=1), [str(p)])
    assert tok.merges == [("a", "x")]
    order = byte_order()
    assert order[:3] == [33, 34, 35] and order[-1] == 173
    assert bytes_to_unicode()[0x20] == "Ġ"


def test_apply_merges_example_and_heap_agree():
    ranks, results = {(1, 2): 0, (9, 3): 1}, {(1, 2): 9, (9, 3): 10}
    assert apply_merges([1, 2, 3, 1, 2], ranks, results) == [10, 9]
    rng = random.Random(0)
    # random merge tables over 4 symbols; long sequences take the heap path, short ones the simple one
    for _ in range(50):
        tokens = ["a", "b", "c", "d"]
        words = [[rng.randrange(4) for _ in range(rng.randint(2, 12))] for _ in range(30)]
        merges = learn_merges([list(w) for w in words], [1] * 30, tokens, 40, 1)
        ranks = {p: r for r, p in reversed(list(enumerate(merges)))}
        results = {p: tokens.index(tokens[p[0]] + tokens[p[1]]) for p in merges}
        seq = [rng.randrange(4) for _ in range(200)]
        fast = _apply_merges_heap(list(seq), ranks, results)
        slow, _ = trace_merges(list(seq), ranks, results)
        assert fast == slow
        assert apply_merges(list(seq[:40]), ranks, results) == trace_merges(list(seq[:40]), ranks, results)[0]


def test_cut_long():
    assert cut_long("abcdefg", 3) == ["abc", "def", "g"]
    assert cut_long("abc", 0) == ["abc"]
