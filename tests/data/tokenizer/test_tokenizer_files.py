"""Saving and loading: the files, atomicity, and loud errors for truncated or hand-edited files."""

from __future__ import annotations

import json

import pytest

from data.tokenizer import TokenizerFileError, load_tokenizer
from data.tokenizer.tokenizer import META_FILE


def test_save_load_round_trip(small_tok, tmp_path):
    small_tok.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", META_FILE,
                     "vocab.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert (tmp_path / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    meta = json.loads((tmp_path / META_FILE).read_text(encoding="utf-8"))
    assert meta["kind"] == "byte_bpe" and meta["fingerprint"] == small_tok.fingerprint
    assert meta["format_version"] == 1 and meta["special_tokens"][:3] == ["<pad>", "<s>", "</s>"]
    tok = load_tokenizer(tmp_path)
    assert tok.fingerprint == small_tok.fingerprint and tok.vocab_size == small_tok.vocab_size
    text = "über 中文 🙂 the end"
    assert tok.encode(text) == small_tok.encode(text)


def test_fingerprint_changes_with_specials_pattern_and_merges(small_tok):
    from data.tokenizer.bpe_tokenizer import bpe_fingerprint

    fp = small_tok.fingerprint
    args = (small_tok.kind, small_tok.merges, small_tok.special_tokens, small_tok.pattern, small_tok.max_pretoken_chars)
    assert bpe_fingerprint(*args) == fp
    assert bpe_fingerprint(args[0], args[1][:-1], *args[2:]) != fp
    assert bpe_fingerprint(args[0], args[1], args[2] + ["<x>"], *args[3:]) != fp
    assert bpe_fingerprint(*args[:3], args[3] + "|x", args[4]) != fp


def saved(small_tok, tmp_path):
    small_tok.save(tmp_path)
    return tmp_path


def test_truncated_vocab_names_file_and_line(small_tok, tmp_path):
    d = saved(small_tok, tmp_path)
    text = (d / "vocab.json").read_text(encoding="utf-8")
    (d / "vocab.json").write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"vocab\.json line \d+ column \d+: not valid JSON"):
        load_tokenizer(d)


def test_bad_merges_line_names_file_and_line(small_tok, tmp_path):
    d = saved(small_tok, tmp_path)
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[10] = "onlyonetoken"
    (d / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"merges\.txt line 11: expected two tokens"):
        load_tokenizer(d)


def test_unknown_token_in_merges(small_tok, tmp_path):
    d = saved(small_tok, tmp_path)
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[5] = "zzzq xyw"
    (d / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"merges\.txt line 6: 'zzzq' is not in vocab\.json"):
        load_tokenizer(d)


def test_swapped_merges_fail_fingerprint(small_tok, tmp_path):
    d = saved(small_tok, tmp_path)
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    (d / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="fingerprint .* was edited after saving"):
        load_tokenizer(d)


def test_truncated_merges_fail(small_tok, tmp_path):
    d = saved(small_tok, tmp_path)
    lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
    (d / "merges.txt").write_text("\n".join(lines[: len(lines) // 2]), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"merges\.txt|vocab\.json"):
        load_tokenizer(d)


def test_hand_edited_vocab_ids(small_tok, tmp_path):
    d = saved(small_tok, tmp_path)
    vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
    a, b = small_tok.tokens[300], small_tok.tokens[301]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"vocab\.json line \d+: id 300 is .* merges\.txt makes it"):
        load_tokenizer(d)


def test_duplicate_id_in_vocab(small_tok, tmp_path):
    d = saved(small_tok, tmp_path)
    text = (d / "vocab.json").read_text(encoding="utf-8")
    text = text.replace('"!": 4,', '"!": 5,', 1)
    (d / "vocab.json").write_text(text, encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"vocab\.json line 7: id 5 is given to both"):
        load_tokenizer(d)


def test_truncated_meta_and_wrong_version(small_tok, tmp_path):
    d = saved(small_tok, tmp_path)
    meta = (d / META_FILE).read_text(encoding="utf-8")
    (d / META_FILE).write_text(meta[:40], encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=META_FILE + r" line \d+ column \d+"):
        load_tokenizer(d)
    m = json.loads(meta)
    m["format_version"] = 99
    (d / META_FILE).write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="format_version 99"):
        load_tokenizer(d)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(TokenizerFileError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerFileError, match="neither"):
        load_tokenizer(tmp_path)
