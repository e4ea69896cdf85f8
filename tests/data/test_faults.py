"""data/faults.py: the fault-injection settings tests use, read in one place; nothing without them."""

from __future__ import annotations

from data import faults


def test_nothing_is_injected_unless_a_variable_is_set(monkeypatch):
    for name in (faults.TASK_KILL, faults.TASK_KILL_DIR, faults.WORKER_KILL, faults.TRANSLATE_ACTOR_KILL):
        monkeypatch.delenv(name, raising=False)
    assert faults.worker_kill("/runs/train-1") is None and faults.translate_actor_kill() is None
    faults.maybe_kill("encode")  # returns: this process is still here


def test_settings_are_parsed(monkeypatch):
    monkeypatch.setenv(faults.WORKER_KILL, "1:20")
    monkeypatch.setenv(faults.TRANSLATE_ACTOR_KILL, "150:/tmp/m:x")
    assert faults.worker_kill("/runs/train-1") == [1, 20, "/runs/train-1/.injected-kill"]
    assert faults.translate_actor_kill() == [150, "/tmp/m:x"]
