"""data/io.py: the one atomic write, and what counts as a remote path."""

from __future__ import annotations

import json
import os

import pytest

from data.io import atomic_path, is_remote, write_atomic, write_json_atomic


def test_write_atomic_text_and_bytes_leave_no_temporary_file(tmp_path):
    write_atomic(tmp_path / "sub" / "a.txt", "héllo\n")
    write_atomic(tmp_path / "sub" / "b.bin", b"\x00\xff")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(os.listdir(tmp_path / "sub")) == ["a.txt", "b.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text(encoding="utf-8")) == {"old": True}
    assert os.listdir(tmp_path) == ["state.json"]


def test_write_json_atomic_is_indented_utf8_with_a_final_newline(tmp_path):
    write_json_atomic(tmp_path / "x.json", {"b": "é", "a": 1}, sort_keys=True)
    assert (tmp_path / "x.json").read_text(encoding="utf-8") == '{\n  "a": 1,\n  "b": "é"\n}\n'


@pytest.mark.parametrize("path, remote", [
    ("s3://bucket/key", True), ("gs://b/k?x=1", True), ("/data/x.tsv", False), ("x.tsv", False),
    ("file:///data/x", False), ("C://data/x", False),
])
def test_is_remote(path, remote):
    assert is_remote(path) is remote
