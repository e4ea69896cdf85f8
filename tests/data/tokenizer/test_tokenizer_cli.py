"""`tpipe tokenizer train|encode|decode|explain` through a parser built the way pipeline/cli.py builds it."""

from __future__ import annotations

import argparse
import io
import sys

import pytest

from data.tokenizer.cli import register


def run(argv, monkeypatch, stdin: bytes = b""):
    parser = argparse.ArgumentParser(prog="tpipe")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out = io.BytesIO()
    fake_out = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    monkeypatch.setattr(sys, "stdout", fake_out)
    code = args.func(args)
    fake_out.flush()
    return code, out.getvalue()


def test_train_encode_decode_explain(tmp_path, monkeypatch, corpus_file, capsys):
    out_dir = tmp_path / "tok"
    code, text = run(["tokenizer", "train", "--input", str(corpus_file), "--vocab-size", "500", "--out", str(out_dir)], monkeypatch)
    assert code == 0 and b"trained byte_bpe tokenizer: vocab_size 500" in text
    assert (out_dir / "merges.txt").exists()

    lines = "hello wörld\n中文 🙂\n\n<s>x\n".encode("utf-8") + b"bad \xff byte\n"
    src = tmp_path / "in.txt"
    src.write_bytes(lines)
    code, ids = run(["tokenizer", "encode", "--tokenizer", str(out_dir), "--input", str(src)], monkeypatch)
    assert code == 0 and ids.count(b"\n") == 5
    assert ids.split(b"\n")[2] == b""  # the empty line stays an empty line of ids
    code, back = run(["tokenizer", "decode", "--tokenizer", str(out_dir)], monkeypatch, stdin=ids)
    assert code == 0 and back == lines  # exact, invalid byte included

    code, allowed = run(["tokenizer", "encode", "--tokenizer", str(out_dir), "--allow-special"], monkeypatch, stdin=b"<s>x\n")
    assert allowed.split()[0] == b"1"

    code, expl = run(["tokenizer", "explain", "--tokenizer", str(out_dir), "the über"], monkeypatch)
    assert code == 0 and b"pre-token ' \xc3\xbcber': 6 bytes 20 c3 bc 62 65 72" in expl and b"merge rank" in expl


def test_errors_are_exit_codes_with_messages(tmp_path, monkeypatch, capsys):
    code, _ = run(["tokenizer", "encode", "--tokenizer", str(tmp_path / "none")], monkeypatch)
    assert code == 2 and "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _ = run(["tokenizer", "train", "--input", str(empty), "--vocab-size", "300", "--out", str(tmp_path / "t")], monkeypatch)
    assert code == 2 and "hold no text" in capsys.readouterr().err


def test_decode_bad_line_names_line(tmp_path, monkeypatch, capsys, small_tok):
    small_tok.save(tmp_path)
    code, _ = run(["tokenizer", "decode", "--tokenizer", str(tmp_path)], monkeypatch, stdin=b"5 6\n7 x\n")
    assert code == 2 and "stdin line 2" in capsys.readouterr().err
    code, _ = run(["tokenizer", "decode", "--tokenizer", str(tmp_path)], monkeypatch, stdin=b"999999\n")
    assert code == 2 and "stdin line 1: token id 999999" in capsys.readouterr().err


def test_train_requires_arguments():
    parser = argparse.ArgumentParser(prog="tpipe")
    register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["tokenizer", "train", "--input", "x"])
