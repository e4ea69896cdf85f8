"""`tpipe translate --input/--output`: whole corpora on Ray Data (pipeline/batch_translate.py).

Reading, writing and the refusals run without Ray; the corpus tests run on a real local Ray with a
model registered in a real MLflow (sqlite) store, and compare against Translator line by line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_testlib import fresh_ray, register_tiny_model, tpipe_home

from pipeline.batch_translate import (
    INJECT_KILL_ENV, TranslateError, check_output, read_corpus, write_translations,
)
from pipeline.inference import length_batches


def _lines(n: int, seed: int = 3) -> list[str]:
    from data.builtin import generate_pairs

    return [src for src, _ in generate_pairs(n, seed)]


# ---- reading and writing, no Ray ------------------------------------------------------------


def test_length_batches_are_sorted_stable_and_cover_every_line():
    lengths = [5, 2, 9, 2, 5, 1, 9]
    batches = length_batches(lengths, 3)
    assert batches == [[5, 1, 3], [0, 4, 2], [6]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_text_input_keeps_every_line_and_counts_bad_utf8(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes(b"one\r\n\ntwo \xff three\nlast without newline")
    corpus = read_corpus(str(p))
    assert corpus.lines == ["one", "", "two \ufffd three", "last without newline"]
    assert corpus.invalid_utf8_lines == 1
    p.write_bytes(b"a\n\n")  # a trailing empty line is a line
    assert read_corpus(str(p)).lines == ["a", ""]


def test_tsv_takes_the_first_field_and_parquet_a_named_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in.tsv").write_text("src one\tref one\nsrc two\tref two\n", encoding="utf-8")
    assert read_corpus(str(tmp_path / "in.tsv")).lines == ["src one", "src two"]
    pq.write_table(pa.table({"id": [1, 2], "src": ["a", None], "note": ["x", "y"]}), tmp_path / "in.parquet")
    assert read_corpus(str(tmp_path / "in.parquet")).lines == ["a", ""]  # `src` when there is no `text`
    assert read_corpus(str(tmp_path / "in.parquet"), column="note").lines == ["x", "y"]
    with pytest.raises(TranslateError, match=r"in\.parquet: no column body .*columns: id, src, note"):
        read_corpus(str(tmp_path / "in.parquet"), column="body")
    with pytest.raises(TranslateError, match="missing.txt does not exist"):
        read_corpus(str(tmp_path / "missing.txt"))


def test_outputs_are_atomic_with_metadata(tmp_path):
    import pyarrow.parquet as pq

    meta = {"model_version": 3, "generation": {"beam_size": 1}}
    write_translations(str(tmp_path / "out.parquet"), ["a", "b"], ["x", "y\nz"], meta)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("translation").to_pylist() == ["x", "y\nz"]
    assert json.loads(table.schema.metadata[b"tpipe"]) == meta
    write_translations(str(tmp_path / "out.txt"), ["a", "b"], ["x", "y\nz"], meta)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "x\ny z\n"  # one line per input line
    side = json.loads((tmp_path / "out.txt.meta.json").read_text(encoding="utf-8"))
    assert side["model_version"] == 3 and side["line_breaks_replaced"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "out.txt", "out.txt.meta.json"]  # no temp left
    with pytest.raises(TranslateError, match="is a directory"):
        check_output(str(tmp_path))
    with pytest.raises(TranslateError, match="does not exist"):
        check_output(str(tmp_path / "no" / "out.txt"))


def test_cli_refuses_bad_input_and_model_in_one_line_before_ray(tmp_path, monkeypatch, capsys):
    import ray

    from pipeline.cli import main

    monkeypatch.setenv("TPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "in.txt").write_text("one\n", encoding="utf-8")
    ok_in, ok_out = str(tmp_path / "in.txt"), str(tmp_path / "o.txt")
    cases = [
        (["models:/m/1", "--input", str(tmp_path / "none.txt"), "--output", ok_out], "none.txt does not exist"),
        (["models:/m/1", "--input", ok_in, "--output", str(tmp_path / "x" / "o.txt")], "does not exist"),
        (["models:/nope/1", "--input", ok_in, "--output", ok_out], "models:/nope/1: not in the registry"),
        (["nope", "--input", ok_in, "--output", ok_out], "'nope' is not a registered model URI"),
    ]
    was_up = ray.is_initialized()
    for argv, message in cases:
        assert main(["translate", *argv]) == 2
        err = [line for line in capsys.readouterr().err.strip().splitlines()
               if "mlflow.store.db.utils" not in line]  # MLflow's notes on creating a new store
        assert len(err) == 1 and err[0].startswith("tpipe: ") and message in err[0], err
    assert ray.is_initialized() == was_up  # refused before Ray was asked for
    assert not (tmp_path / "o.txt").exists()


# ---- on Ray -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny registered model in its own home, and a local Ray with 2 CPUs."""
    import mlflow

    from pipeline.home import Home
    from pipeline.tracking import setup_mlflow

    root = tmp_path_factory.mktemp("batch-translate")
    with tpipe_home(root / "home") as home, fresh_ray(num_cpus=2, include_dashboard=False):
        uri = Home.resolve().tracking_uri()
        setup_mlflow(uri, "tpipe", Home.resolve())
        mlflow.set_experiment("tpipe")
        model_uri = register_tiny_model(root, "tpipe-bt", _lines(2000, seed=1))
        yield {"home": home, "tracking_uri": uri, "model_uri": model_uri, "package": root / "package"}


def _translate_in_one_thread(package: Path, lines: list[str], **overrides) -> list[str]:
    """Translator's output, with one torch thread as each actor has (and no thread spinning on a busy
    machine)."""
    import torch

    from pipeline.inference import Translator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Translator(package).translate(lines, **overrides)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_20000_lines_equal_translator_in_order_despite_a_killed_actor(registered, tmp_path, monkeypatch):
    """Two actors decode 20,000 lines; the one handed plan batch 150 SIGKILLs itself half-way.
    Ray Data restarts it and reruns its batches: the output is Translator's, line for line, in order."""
    from pipeline.batch_translate import plan_translation, translate_plan

    lines = _lines(20000)
    lines[7] = ""  # an empty line keeps its place too
    expected = _translate_in_one_thread(registered["package"], lines)
    plan = plan_translation(registered["model_uri"], lines, registered["tracking_uri"])
    assert plan.padding_fraction < 0.10
    marker = tmp_path / "killed"
    monkeypatch.setenv(INJECT_KILL_ENV, f"150:{marker}")
    got, stats = translate_plan(plan, tracking_uri=registered["tracking_uri"], actors=2)
    assert marker.exists(), "the injected actor failure did not fire"
    assert len(got) == len(lines) and got == expected
    assert stats["actors"] == 2 and stats["output_tokens"] > 0


@pytest.mark.slow
def test_cli_translates_a_file_to_parquet_with_the_version_in_its_metadata(registered, tmp_path, capsys):
    import pyarrow.parquet as pq

    from pipeline.cli import main

    lines = _lines(300, seed=9)
    (tmp_path / "in.txt").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    name = registered["model_uri"].split("/")[1]
    # In this process: the CLI joins the module's Ray instead of starting its own.
    rc = main(["translate", f"models:/{name}@candidate", "--input", str(tmp_path / "in.txt"),
               "--output", str(tmp_path / "out.parquet"), "--actors", "1", "--max-len", "6"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "sentences/s" in err and "tokens/s" in err  # progress with throughput
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("source").to_pylist() == lines
    assert table.column("translation").to_pylist() == _translate_in_one_thread(registered["package"], lines, max_len=6)
    meta = json.loads(table.schema.metadata[b"tpipe"])
    assert meta["model_version"] == 1 and meta["model_uri"] == f"models:/{name}@candidate"
    assert meta["generation"]["max_len"] == 6 and meta["lines"] == 300


@pytest.mark.slow
@pytest.mark.heavy
def test_evaluate_on_a_large_set_takes_the_ray_data_path_with_the_same_scores(registered, tmp_path, capsys, request):
    from pipeline.cli import main

    lines = _lines(400, seed=11)
    (tmp_path / "set.tsv").write_text("".join(f"{s}\t{s}\n" for s in lines), encoding="utf-8")
    name = registered["model_uri"].split("/")[1]
    import torch

    scores = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this process's decoding (the second pass) as an actor's, one thread
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    for ray_above in ("100", "0"):  # 400 sentences: on Ray Data, then in this process
        assert main(["evaluate", f"models:/{name}/1", "--data", str(tmp_path / "set.tsv"), "--ray-above", ray_above,
                     "--tgt-lang", "en", "--json"]) == 0
        out = capsys.readouterr()
        scores.append({k: v for k, v in json.loads(out.out.strip().splitlines()[-1])[0].items()
                       if k in ("bleu", "chrf", "ter", "exact_match", "length_ratio", "loss")})
        assert ("translated 400/400 lines" in out.err) == (ray_above == "100")
    assert scores[0] == scores[1]
