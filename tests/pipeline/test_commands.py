"""pipeline/commands.py helpers, on a real MLflow store."""

from __future__ import annotations

from pipeline.commands import ui_pages


def test_ui_pages_link_each_experiments_runs_table_newest_first(tmp_path):
    import mlflow

    db = tmp_path / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    ids = {}
    for name in ("tpipe", "no-runs-here", "sweeps"):
        ids[name] = mlflow.create_experiment(name, artifact_location=(tmp_path / name).as_uri())
        if name != "no-runs-here":
            with mlflow.start_run(experiment_id=ids[name]):
                pass
    base = "http://127.0.0.1:5123"
    assert ui_pages(db, base) == [
        f"open {base}",
        f"  runs of sweeps     {base}/#/experiments/{ids['sweeps']}/runs",
        f"  runs of tpipe      {base}/#/experiments/{ids['tpipe']}/runs",
        f"  registered models  {base}/#/models",
    ]


def test_ui_pages_of_a_home_where_nothing_ran_creates_no_store(tmp_path):
    db = tmp_path / "mlflow.db"
    assert ui_pages(db, "http://127.0.0.1:5000") == [
        "open http://127.0.0.1:5000", "  (no runs yet: `tpipe run smoke` makes some)"]
    assert not db.exists()
