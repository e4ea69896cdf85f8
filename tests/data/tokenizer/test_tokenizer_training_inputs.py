"""Training inputs: Parquet with splits, empty and tiny corpora, invalid UTF-8, very long lines."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.tokenizer import TokenizerConfig, TrainingError, train_tokenizer
from data.tokenizer.counting import Reader, count_pretokens, plan_chunks
from data.tokenizer.pretokenize import GPT2_PATTERN


def cfg(**kw):
    return TokenizerConfig(**{"vocab_size": 300, "num_workers": 1, **kw})


def test_count_docstring_example(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("low lower\nlow\n", encoding="utf-8")
    counts, stats, _ = count_pretokens([str(p)], GPT2_PATTERN, (), 256, Reader(), 1)
    assert counts == {b"low": 2, b" lower": 1}
    assert stats.texts == 2


def test_chunks_cut_on_line_boundaries(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("".join(f"line {i} ünï\n" for i in range(1000)), encoding="utf-8")
    chunks = plan_chunks([str(p)], 7)
    assert len(chunks) == 7 and chunks[0].start == 0 and chunks[-1].end == p.stat().st_size
    data = p.read_bytes()
    for c in chunks[1:]:
        assert data[c.start - 1 : c.start] == b"\n"
    one, _, _ = count_pretokens([str(p)], GPT2_PATTERN, (), 256, Reader(), 1)
    seven, _, n = count_pretokens([str(p)], GPT2_PATTERN, (), 256, Reader(), 7)
    assert one == seven and n == 7


def test_parquet_columns_and_split(tmp_path):
    p = tmp_path / "d.parquet"
    table = pa.table(
        {"src": ["hello world", "held out", "hello again"], "tgt": ["hallo welt", "xx", "hallo"], "split": ["train", "valid", "train"]}
    )
    pq.write_table(table, p)
    counts, stats, _ = count_pretokens([str(p)], GPT2_PATTERN, (), 256, Reader(("src", "tgt"), "train"), 1)
    assert b" out" not in counts and counts[b"hello"] == 2 and counts[b"hallo"] == 2 and stats.texts == 4
    counts, _, _ = count_pretokens([str(p)], GPT2_PATTERN, (), 256, Reader(("src",), None), 1)
    assert counts[b" out"] == 1 and b"hallo" not in counts
    with pytest.raises(ValueError, match=r"d\.parquet: no column 'text'"):
        count_pretokens([str(p)], GPT2_PATTERN, (), 256, Reader(("text",), None), 1)


def test_empty_corpus_is_refused(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("", encoding="utf-8")
    with pytest.raises(TrainingError, match="hold no text"):
        train_tokenizer(cfg(), [str(p)])
    with pytest.raises(ValueError, match="no input files"):
        train_tokenizer(cfg(), [])
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        train_tokenizer(cfg(), [str(tmp_path / "missing.txt")])


def test_vocab_smaller_than_bytes_is_refused(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("abc\n", encoding="utf-8")
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<2de>"]
    with pytest.raises(ValueError, match="vocab_size 260 is smaller than 5 special tokens \\+ 256 bytes = 261"):
        train_tokenizer(TokenizerConfig(vocab_size=260, num_workers=1, special_tokens=specials), [str(p)])


def test_invalid_utf8_counted_not_fatal(tmp_path, caplog):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good line\nbad \xff\xfe line\nalso \xc3 bad\nfine again\n")
    with caplog.at_level("WARNING", logger="tpipe.tokenizer"):
        tok = train_tokenizer(cfg(vocab_size=280), [str(p)])
    assert tok.train_stats["invalid_utf8_lines"] == 2
    assert "2 lines of the tokenizer inputs are not valid UTF-8" in caplog.text
    raw = b"bad \xff\xfe line"
    assert tok.decode_bytes(tok.encode(raw.decode("utf-8", "surrogateescape"))) == raw


def test_special_tokens_in_corpus_are_not_learned(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("<s>hello</s>\n" * 20, encoding="utf-8")
    tok = train_tokenizer(cfg(vocab_size=300), [str(p)])
    assert all("<" not in a + b for a, b in tok.merges)


def test_long_line_without_spaces_trains_linearly(tmp_path):
    # 300k CJK characters on one line: one regex pre-token, cut into pieces of 256 characters.
    p = tmp_path / "long.txt"
    p.write_text("机器翻译数据训练模型语言东京" * 25_000 + "\n", encoding="utf-8")
    t0 = time.perf_counter()
    tok = train_tokenizer(cfg(vocab_size=600), [str(p)])
    elapsed = time.perf_counter() - t0
    assert tok.train_stats["long_pretokens_cut"] == 1
    assert tok.train_stats["unique_pretokens"] <= 14  # the cycle of 13 characters repeats with period 13*256
    assert elapsed < 30, f"training on one long line took {elapsed:.1f}s"
