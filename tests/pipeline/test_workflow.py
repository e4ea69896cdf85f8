"""The workflow layer: fingerprinted outputs, atomic completion, reuse, and continuing after a failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.workflow import MARKER, PipelineRun, Step, StepContext


def make_steps(calls: list[str], fail_at: str | None = None):
    def writer(name):
        def fn(ctx: StepContext):
            calls.append(name)
            if name == fail_at:
                (ctx.out_dir / "partial.txt").write_text("half")
                raise RuntimeError(f"injected failure in {name}")
            upstream = {k: (v.out_dir / "value.txt").read_text() for k, v in ctx.inputs.items()}
            (ctx.out_dir / "value.txt").write_text(f"{name}({','.join(sorted(upstream.values()))})")
            return {"name": name}

        return fn

    return [
        Step("a", writer("a"), ("data",)),
        Step("b", writer("b"), ("tokenizer",), ("a",)),
        Step("c", writer("c"), ("train",), ("b",)),
    ]


def new_run(tmp_path: Path, steps, overrides=()):
    cfg = load_config("smoke", list(overrides))
    return PipelineRun(cfg, steps, tmp_path / "artifacts", tmp_path / "run", version="testcode")


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "run").mkdir()
    return tmp_path


def test_second_run_reuses_everything(run_dir):
    calls: list[str] = []
    first = new_run(run_dir, make_steps(calls)).run()
    assert calls == ["a", "b", "c"]
    assert (first["c"].out_dir / "value.txt").read_text() == "c(b(a()))"
    assert all((r.out_dir / MARKER).exists() for r in first.values())
    second = new_run(run_dir, make_steps(calls)).run()
    assert calls == ["a", "b", "c"]  # nothing ran again
    assert all(r.cached for r in second.values())
    assert {n: r.key for n, r in first.items()} == {n: r.key for n, r in second.items()}
    state = json.loads((run_dir / "run" / "state.json").read_text())
    assert {n: s["state"] for n, s in state["steps"].items()} == {"a": "cached", "b": "cached", "c": "cached"}


def test_config_change_reruns_only_downstream(run_dir):
    calls: list[str] = []
    new_run(run_dir, make_steps(calls)).run()
    calls.clear()
    new_run(run_dir, make_steps(calls), ["tokenizer.vocab_size=400"]).run()
    assert calls == ["b", "c"]  # 'a' does not read the tokenizer section


def test_code_change_invalidates(run_dir):
    calls: list[str] = []
    new_run(run_dir, make_steps(calls)).run()
    run = new_run(run_dir, make_steps(calls))
    run.version = "othercode"
    run.run()
    assert calls == ["a", "b", "c", "a", "b", "c"]


def test_failed_step_leaves_no_output_and_rerun_continues(run_dir):
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="injected failure in b"):
        new_run(run_dir, make_steps(calls, fail_at="b")).run()
    assert calls == ["a", "b"]
    b_dir = run_dir / "artifacts" / "b"
    assert not [p for p in b_dir.iterdir() if not p.name.endswith(".state")]  # no half-written output
    state = json.loads((run_dir / "run" / "state.json").read_text())
    assert state["steps"]["b"]["state"] == "failed"
    calls.clear()
    results = new_run(run_dir, make_steps(calls)).run()
    assert calls == ["b", "c"]  # 'a' is not redone
    assert results["a"].cached and not results["b"].cached


def test_from_and_until(run_dir):
    calls: list[str] = []
    new_run(run_dir, make_steps(calls)).run(until_step="b")
    assert calls == ["a", "b"]
    calls.clear()
    new_run(run_dir, make_steps(calls)).run(from_step="b")
    assert calls == ["b", "c"]  # b forced, c had never run
    with pytest.raises(ValueError, match="unknown step 'x' for --from; steps are: a, b, c"):
        new_run(run_dir, make_steps(calls)).run(from_step="x")


def test_unverified_output_is_redone(run_dir):
    calls: list[str] = []
    steps = make_steps(calls)
    new_run(run_dir, steps).run()
    steps[2].verify = lambda out_dir, summary: False
    calls.clear()
    new_run(run_dir, steps).run()
    assert calls == ["c"]


def test_a_changed_cached_output_is_redone(run_dir):
    """A file of a finished output truncated or rewritten afterwards: the step runs again instead of
    handing the damaged output on (its marker records each file's size and hash)."""
    calls: list[str] = []
    first = new_run(run_dir, make_steps(calls)).run()
    value = first["b"].out_dir / "value.txt"
    value.write_text("b(")  # truncated
    calls.clear()
    second = new_run(run_dir, make_steps(calls)).run()
    assert calls == ["b"] and not second["b"].cached and second["c"].cached
    assert value.read_text() == "b(a())"
    value.write_text("x(a())")  # same size, other bytes: found by the hash, since the mtime moved
    calls.clear()
    new_run(run_dir, make_steps(calls)).run()
    assert calls == ["b"]
    calls.clear()
    new_run(run_dir, make_steps(calls)).run()
    assert calls == []  # an intact output is reused


def test_killed_attempts_temporary_folders_are_removed(run_dir):
    import subprocess
    import sys

    calls: list[str] = []
    new_run(run_dir, make_steps(calls)).run()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    step_dir = run_dir / "artifacts" / "b"
    killed = step_dir / f".0123456789abcdef.tmp-{dead.stdout.strip()}-deadbeef"  # a process that is gone
    legacy = step_dir / ".0123456789abcdef.tmp-cafe0123"  # named before attempts carried their pid
    alive = step_dir / f".0123456789abcdef.tmp-{os.getppid()}-feedf00d"  # a process that still runs
    for d in (killed, legacy, alive):
        d.mkdir()
        (d / "partial.bin").write_bytes(b"x" * 100)
    new_run(run_dir, make_steps(calls)).run()
    assert not killed.exists() and not legacy.exists()
    assert alive.exists()


def test_a_step_finished_first_by_another_run_sharing_the_root_is_taken_not_a_crash(tmp_path):
    """Two runs with different homes and one artifact_root (two users, or two benches) make the
    same output at once: the one that finishes second keeps the first one's, whole, and goes on."""
    for d in ("run", "other-run"):
        (tmp_path / d).mkdir()
    calls: list[str] = []
    steps = make_steps(calls)
    first_a = steps[0].fn

    def a_while_another_run_finishes_it(ctx: StepContext):
        # the other run (its own home, the same root) finishes step a while this one is still at it
        other = PipelineRun(load_config("smoke"), [Step("a", first_a, ("data",))], tmp_path / "artifacts",
                            tmp_path / "other-run", version="testcode")
        other.run()
        return first_a(ctx)

    steps[0] = Step("a", a_while_another_run_finishes_it, ("data",))
    out = PipelineRun(load_config("smoke"), steps, tmp_path / "artifacts", tmp_path / "run", version="testcode").run()
    assert calls == ["a", "a", "b", "c"]
    assert (out["c"].out_dir / "value.txt").read_text() == "c(b(a()))"
    siblings = sorted(p.name for p in out["a"].out_dir.parent.iterdir())
    assert siblings == [out["a"].key], siblings  # no temporary folder left behind
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["steps"]["a"]["state"] == "done"
