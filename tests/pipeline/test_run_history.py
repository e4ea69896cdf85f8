"""`tpipe run`'s checks that happen before anything starts (no Ray, no MLflow store)."""

from __future__ import annotations

import pytest

STEPS = "prepare, tokenizer, encode, train, register, evaluate"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--from", "trian"], f"tpipe: unknown step 'trian' for --from; steps are: {STEPS}"),
        (["--until", "evaluation"], f"tpipe: unknown step 'evaluation' for --until; steps are: {STEPS}"),
        (["--from", "train", "--until", "encode"], "tpipe: --from train comes after --until encode; nothing would run"),
    ],
)
def test_a_refused_step_is_one_line_and_touches_nothing(flags, message, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("TPIPE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "smoke", *flags]) == 2
    assert capsys.readouterr().err == message + "\n"
    assert not home.exists()  # no store, no run folder: nothing of an earlier run can change
