"""The bad-input battery: every input mistake a user can make is one line on stderr naming the file
or key, a non-zero exit and no traceback; mistakes that can be seen before Ray starts are refused in
seconds without starting it.

`tpipe` runs in this process (pipeline.cli.main), with stderr captured at the file-descriptor level,
so that anything Ray or a library prints would count as an extra line. Run with `-s` to see the table
of kind, message, exit code and seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_testlib import fresh_ray, tpipe_home

from data.gettext import Entry, write_mo

TABLE: list[tuple[str, str, int, float]] = []
FILES = ["run", "smoke", "data.source=files", "data.src_lang=en", "data.tgt_lang=de"]


def _tsv(path: Path, n: int = 40, extra: str = "") -> Path:
    path.write_text("".join(f"hello number {i}\thallo Nummer {i}\n" for i in range(n)) + extra, encoding="utf-8")
    return path


def _files(*paths: Path, key: str = "data.paths") -> str:
    return f"{key}=[{', '.join(str(p) for p in paths)}]"


def _parquet(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


# Each case: tmp -> (argv, strings the one line must contain). All of these are decided before Ray starts.
def c_missing(t):
    return [*FILES, _files(t / "nope.tsv")], ["data.paths", "nope.tsv"]


def c_glob_matches_nothing(t):
    return [*FILES, _files(t / "*.nothing.tsv")], ["data.paths", "*.nothing.tsv"]


def c_directory(t):
    (t / "corpus").mkdir()
    return [*FILES, _files(t / "corpus")], ["data.paths", "is a directory"]


def c_empty_file(t):
    (t / "e.tsv").write_bytes(b"")
    return [*FILES, _files(t / "e.tsv")], ["e.tsv", "empty"]


def c_binary_file(t):
    (t / "b.tsv").write_bytes(bytes(range(256)) * 64)
    return [*FILES, _files(t / "b.tsv")], ["b.tsv", "binary"]


def c_utf16(t):
    (t / "u.tsv").write_bytes("hello\thallo\n".encode("utf-16"))
    return [*FILES, _files(t / "u.tsv")], ["u.tsv", "UTF-16"]


def c_gzip_without_suffix(t):
    (t / "z.tsv").write_bytes(gzip.compress(b"hello\thallo\n" * 10))
    return [*FILES, _files(t / "z.tsv")], ["z.tsv", "gzip"]


def c_truncated_gz(t):
    data = gzip.compress(b"".join(f"hello {i}\thallo {i}\n".encode() for i in range(200)))
    (t / "cut.tsv.gz").write_bytes(data[: len(data) // 2])
    return [*FILES, _files(t / "cut.tsv.gz")], ["cut.tsv.gz", "truncated"]


def c_unknown_suffix(t):
    _tsv(t / "c.csv")
    return [*FILES, _files(t / "c.csv")], ["c.csv", "data.format"]


def c_tsv_one_column(t):
    (t / "one.tsv").write_text("just one field\n" * 5)
    return [*FILES, _files(t / "one.tsv")], ["one.tsv line 1", "data.tsv_columns"]


def c_tsv_stray_tab(t):
    _tsv(t / "tab.tsv", 3, extra="a\tb\tc\n")
    return [*FILES, _files(t / "tab.tsv")], ["tab.tsv line 4", "stray tab"]


def c_jsonl_broken(t):
    (t / "b.jsonl").write_text('{"en": "a", "de": "b"}\n{"en": "c", "de": \n')
    return [*FILES, _files(t / "b.jsonl")], ["b.jsonl line 2", "not valid JSON"]


def c_jsonl_missing_key(t):
    (t / "k.jsonl").write_text('{"en": "a", "fr": "b"}\n')
    return [*FILES, _files(t / "k.jsonl")], ["k.jsonl line 1", "'de'"]


def c_jsonl_number(t):
    (t / "n.jsonl").write_text('{"en": "a", "de": 5}\n')
    return [*FILES, _files(t / "n.jsonl")], ["n.jsonl line 1", "int"]


def c_jsonl_array(t):
    (t / "a.jsonl").write_text('["a", "b"]\n')
    return [*FILES, _files(t / "a.jsonl")], ["a.jsonl line 1", "JSON object"]


def c_text_named_parquet(t):
    _tsv(t / "fake.parquet")
    return [*FILES, _files(t / "fake.parquet")], ["fake.parquet", "not a Parquet file"]


def c_parquet_missing_column(t):
    _parquet(t / "m.parquet", en=["a"], fr=["b"])
    return [*FILES, _files(t / "m.parquet")], ["m.parquet", "no column 'de'"]


def c_parquet_integer_column(t):
    _parquet(t / "i.parquet", en=["a", "b"], de=[1, 2])
    return [*FILES, _files(t / "i.parquet")], ["i.parquet", "'de' is int64"]


def c_moses_lengths(t):
    (t / "m.en").write_text("a\nb\nc\n")
    (t / "m.de").write_text("x\ny\n")
    return [*FILES, _files(t / "m"), "data.format=moses"], ["m.en has 3 lines", "m.de has 2 lines"]


def c_moses_no_partner(t):
    (t / "lone.en").write_text("a\nb\n")
    return [*FILES, _files(t / "lone.en")], ["lone.en", "no partner"]


def c_po_malformed(t):
    (t / "x.po").write_text('msgid "a"\nmsgstr "b"\n\nmsgid "c"\n')
    return [*FILES, _files(t / "x.po")], ["x.po line 4", "msgid without msgstr"]


def c_po_unknown_charset(t):
    (t / "cs.po").write_text('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=nosuch\\n"\n\nmsgid "a"\nmsgstr "b"\n')
    return [*FILES, _files(t / "cs.po")], ["cs.po", "charset 'nosuch'"]


def c_mo_not_a_catalog(t):
    (t / "x.mo").write_bytes(b"\x00\x01\x02\x03" * 10)
    return [*FILES, _files(t / "x.mo")], ["x.mo", "not a .mo file"]


def c_mo_truncated(t):
    (t / "t.mo").write_bytes(write_mo([Entry("hello", ["hallo"]), Entry("world", ["Welt"])])[:40])
    return [*FILES, _files(t / "t.mo")], ["t.mo"]


def c_valid_paths_equal_paths(t):
    p = _tsv(t / "c.tsv")
    return [*FILES, _files(p), _files(p, key="data.valid_paths")], ["data.paths", "data.valid_paths", "c.tsv"]


def c_test_paths_overlap_by_glob(t):
    p = _tsv(t / "c.tsv")
    return [*FILES, _files(p), _files(t / "*.tsv", key="data.test_paths")], ["data.test_paths", "c.tsv"]


def c_lr_nan(t):
    return ["run", "smoke", "train.lr=.nan"], ["train.lr", "finite"]


def c_lr_inf(t):
    return ["run", "smoke", "train.lr=.inf"], ["train.lr", "finite"]


def c_unknown_key(t):
    return ["run", "smoke", "data.pathz=[a.tsv]"], ["data.pathz"]


def c_files_without_paths(t):
    return ["run", "smoke", "data.source=files"], ["data.paths"]


def c_bad_format_choice(t):
    return ["run", "smoke", "data.format=csv"], ["data.format"]


def c_bad_tsv_header_choice(t):
    return ["run", "smoke", "data.tsv_header=maybe"], ["data.tsv_header"]


def c_translate_empty(t):
    return ["translate", "models:/nosuch@champion", ""], ["nothing to translate"]


def c_evaluate_no_such_split(t):
    return ["evaluate", "models:/nosuch/1", "--split", "nosuch"], ["--split", "nosuch", "train, valid, test"]


CASES = [(name[2:], fn) for name, fn in list(globals().items()) if name.startswith("c_")]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    import pipeline.cli
    import pipeline.runner  # noqa: F401 - imported once here, so that each case times its check, not imports

    with tpipe_home(tmp_path_factory.mktemp("tpipe-home")) as home:
        yield home


def run_cli(argv: list[str], capfd) -> tuple[int, list[str], float]:
    from pipeline.cli import main

    capfd.readouterr()
    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    return rc, [line for line in err.splitlines() if line.strip()], seconds


@pytest.mark.parametrize("kind,case", CASES, ids=[k for k, _ in CASES])
def test_checked_before_ray(kind, case, home, tmp_path, capfd, monkeypatch):
    import pipeline.ray_connect

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for an input that can be checked before it")

    monkeypatch.setattr(pipeline.ray_connect, "connect_ray", no_ray)
    argv, needles = case(tmp_path)
    rc, lines, seconds = run_cli(argv, capfd)
    TABLE.append((kind, lines[0] if lines else "", rc, seconds))
    assert rc != 0 and len(lines) == 1, lines
    assert lines[0].startswith("tpipe: ") and all(n in lines[0] for n in needles), (lines[0], needles)
    assert seconds < 5, f"{kind} took {seconds:.1f}s"


def test_refused_in_seconds_as_a_command(tmp_path):
    """The same as a user sees it: a fresh `tpipe` process, imports included, refuses a missing file
    in well under 5 seconds, in one line, and starts neither MLflow nor Ray (no store is created)."""
    import subprocess
    import sys

    env = {**os.environ, "TPIPE_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *FILES, _files(tmp_path / "nope.tsv")],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2], timeout=60)
    seconds = time.perf_counter() - t0
    TABLE.append(("missing (fresh process)", proc.stderr.strip(), proc.returncode, seconds))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope.tsv" in proc.stderr, proc.stderr
    assert not (tmp_path / "home" / "mlflow.db").exists()
    assert seconds < 5, seconds


# ---- found by the Ray tasks that read the data, or only after encoding: one Ray for all ----------------


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    import logging

    import mlflow  # noqa: F401 - configures its loggers on import; set the level after that

    # MLflow's own INFO lines on stderr ("Creating initial MLflow database tables", "Skip logging GPU
    # metrics") are tpipe's noise problem of issue 15, not a second line of these errors.
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.WARNING)
    with tpipe_home(tmp_path_factory.mktemp("ray-home")) as home, fresh_ray(num_cpus=2, dashboard_host="127.0.0.1"):
        _varied(home / "varied.tsv")  # shared by two tests: its data steps run once
        yield home
    mlflow_logger.setLevel(level)


def _deep(t: Path, name: str, bad_line: str, n: int = 3000) -> Path:
    """A file whose first HEAD_BYTES are fine and whose line n + 1 is not."""
    p = t / name
    good = "".join(json.dumps({"en": f"hello {i}", "de": f"hallo {i}"}) + "\n" for i in range(n))
    p.write_text(good + bad_line + "\n", encoding="utf-8")
    return p


def r_broken_json_deep_in_file(t):
    return [*FILES, _files(_deep(t, "deep.jsonl", '{"en": "x", "de": '))], ["deep.jsonl line 3001", "JSON"]


def r_truncated_gz_after_its_head(t):
    raw = b"".join(f"sentence number {i} of many\tSatz Nummer {i} von vielen {i * 7919 % 1000}\n".encode()
                   for i in range(40000))
    data = gzip.compress(raw)
    (t / "long.tsv.gz").write_bytes(data[: int(len(data) * 0.9)])
    return [*FILES, _files(t / "long.tsv.gz")], ["long.tsv.gz", "truncated"]


def r_every_record_rejected(t):
    (t / "long.tsv").write_text("".join(f"{'x' * 50} {i}\t{'y' * 50} {i}\n" for i in range(30)))
    return [*FILES, _files(t / "long.tsv"), "data.max_chars=20"], ["long.tsv", "too_long 30"]


def r_three_pairs(t):
    (t / "three.tsv").write_text("one\teins\ntwo\tzwei\nthree\tdrei\n")
    return [*FILES, _files(t / "three.tsv")], ["valid split", "train.num_workers=2"]


def _varied(path: Path, n: int = 200) -> Path:
    """Pairs of made-up words: BPE cannot shrink them to a few tokens as it does 'hello number 12'."""
    import random

    rng = random.Random(0)
    word = lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))  # noqa: E731
    path.write_text("".join(f"{' '.join(word() for _ in range(5))}\t{' '.join(word() for _ in range(5))}\n"
                            for _ in range(n)))
    return path


LONG_PAIRS = ["data.valid_fraction=0.2"]


def r_max_tokens_below_longest_pair(t):
    p = Path(os.environ["TPIPE_HOME"]) / "varied.tsv"
    return [*FILES, _files(p), *LONG_PAIRS, "train.max_tokens=16"], ["train.max_tokens", "needs"]


RAY_CASES = [(name[2:], fn) for name, fn in list(globals().items()) if name.startswith("r_")]


@pytest.mark.slow
def test_found_while_running(ray_home, tmp_path, capfd):
    """Errors that need the data read in full or encoded: one line each, the step fails once."""
    failures = []
    for kind, case in RAY_CASES:
        d = tmp_path / kind
        d.mkdir()
        argv, needles = case(d)
        rc, lines, seconds = run_cli(argv, capfd)
        TABLE.append((kind, lines[0] if lines else "", rc, seconds))
        ok = rc != 0 and len(lines) == 1 and lines[0].startswith("tpipe: ") and all(n in lines[0] for n in needles)
        if not ok:
            failures.append((kind, rc, lines, needles))
            print(f"\n{kind}: rc {rc}, stderr lines:", *lines, sep="\n  ")
    assert not failures, [f[0] for f in failures]


@pytest.mark.slow
def test_user_error_in_the_workers_fails_once(ray_home, tmp_path):
    """The same error raised inside train_func (the driver's check bypassed) ends the run after one
    attempt as a TrainingInputError; Ray Train would retry a raised one max_failures times."""
    import dataclasses

    from data.tokenizer import load_tokenizer
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from data.shards import token_files
    from pipeline.train import TrainingInputError, run_training

    cfg = load_config("smoke", [*FILES[2:], _files(ray_home / "varied.tsv"), *LONG_PAIRS, "train.max_tokens=16"])
    results = run_pipeline(cfg, until_step="encode", quiet=True)["results"]
    tok = load_tokenizer(results["tokenizer"].out_dir)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=tok.vocab_size))
    t0 = time.perf_counter()
    with pytest.raises(TrainingInputError, match=r"needs \d+ tokens .* max_tokens is 16"):
        run_training(
            cfg, tokenizer_dir=results["tokenizer"].out_dir,
            train_shards=token_files(results["encode"].out_dir, "train"),
            valid_shards=token_files(results["encode"].out_dir, "valid"),
            bleu_sample=[], tracking_uri="unused", mlflow_run_id="unused", storage_path=str(tmp_path / "ray"),
            name="user-error", out_dir=tmp_path / "out",
        )
    TABLE.append(("user error inside train_func", "TrainingInputError (one attempt)", 2, time.perf_counter() - t0))


def teardown_module(module):
    if TABLE:
        print("\n| kind | message | exit | seconds |\n|---|---|---|---|")
        for kind, message, rc, seconds in TABLE:
            print(f"| {kind} | `{message}` | {rc} | {seconds:.2f} |")
