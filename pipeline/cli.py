"""The `tpipe` command line.

    tpipe run [CONFIG] [key.sub=value ...]     corpus -> tokenizer -> model -> registry -> evaluation
    tpipe sweep [CONFIG] --space SPACE.yaml    hyperparameter search on Ray Tune; best trial registered
    tpipe config [CONFIG] [overrides] [--keys] print the resolved config (or every key with its help)
    tpipe status [RUN]                         steps of a pipeline run with state, duration, output
    tpipe evaluate MODEL_URI                   score a registered model on a split or a file
    tpipe submit [CONFIG] [overrides]          the pipeline as a Ray job on a cluster
    tpipe jobs list|status|logs|stop           submitted jobs
    tpipe translate MODEL_URI TEXT...          translate a few sentences
    tpipe translate MODEL_URI --input F --output G   a whole corpus, on Ray Data
    tpipe ui                                   the MLflow UI for the configured store, on 127.0.0.1
    tpipe tokenizer ...                        train / encode / decode / explain tokenizers

Heavy imports (torch, ray, mlflow) happen inside the commands, so `tpipe --help` and config
errors are instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from data.errors import UserError
from pipeline import model_commands
from pipeline.tracking import TrackingUnreachable

ITEMS_HELP = "an optional config (a name in conf/ such as 'default' or 'smoke', or a .yaml path) then key.sub=value overrides"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-pipeline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _command(name: str):
    """pipeline.commands.NAME, imported when that command runs: its config machinery (yaml, the
    pipeline's dataclasses) is no part of `tpipe translate`'s cold start."""

    def run(args) -> int:
        from pipeline import commands

        return getattr(commands, name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tpipe",
        description="Raw text corpora to a trained, evaluated and registered encoder-decoder Transformer, on Ray and MLflow.",
        epilog="State lives under $TPIPE_HOME (default ./.tpipe); MLFLOW_TRACKING_URI overrides the MLflow store.",
    )
    p.add_argument("--version", action="version", version=f"tpipe {_version()}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of a failure instead of one line")
    p.add_argument("--verbose", action="store_true",
                   help="also show the libraries' own output (Ray, MLflow, Lightning) on the terminal; by default "
                        "tpipe run writes it to tpipe.log in the run folder")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pipeline_commands(sub)
    _add_model_commands(sub)
    _add_cluster_commands(sub)
    try:
        from data.tokenizer.cli import register as register_tokenizer
    except ImportError:
        register_tokenizer = None
    if register_tokenizer is not None:
        register_tokenizer(sub)
    return p


def _add_pipeline_commands(sub) -> None:
    """run, sweep, config, status."""
    r = sub.add_parser("run", help="run the pipeline: prepare, tokenizer, encode, train, register, evaluate",
                       description="Run (or continue) the pipeline. Finished steps are reused; an interrupted run continues where it stopped.")
    r.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help=ITEMS_HELP)
    r.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--from", dest="from_step", default=None, help="re-run from this step (earlier steps are reused)")
    r.add_argument("--until", dest="until_step", default=None, help="stop after this step")
    r.add_argument("--json", action="store_true", help="print the run summary as JSON at the end")
    r.set_defaults(func=_command("cmd_run"))

    sw = sub.add_parser("sweep", help="search hyperparameters on Ray Tune; register and evaluate the best trial",
                        description="Trials of the pipeline's train step on Ray Tune (ASHA on validation loss), over a "
                                    "search space of config keys. Data steps run once; a re-run continues the sweep.")
    sw.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help=ITEMS_HELP)
    sw.add_argument("--space", required=True, metavar="SPACE.yaml",
                    help="config keys to search: 'train.lr: {loguniform: [1e-4, 1e-2]}', choice, uniform, grid")
    sw.add_argument("--trials", type=int, default=4, help="trials drawn per grid point (default 4)")
    sw.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    sw.set_defaults(func=_command("cmd_sweep"))

    c = sub.add_parser("config", help="print the resolved config, or every key with --keys")
    c.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help=ITEMS_HELP)
    c.add_argument("--keys", action="store_true", help="list every config key, its value in this config and what it means")
    c.set_defaults(func=_command("cmd_config"))

    s = sub.add_parser("status", help="steps of a pipeline run (the latest by default)")
    s.add_argument("run", nargs="?", help="run folder name (or a prefix) under $TPIPE_HOME/runs")
    s.set_defaults(func=_command("cmd_status"))


def _add_model_commands(sub) -> None:
    """evaluate, translate, ui."""
    e = sub.add_parser("evaluate", help="score a registered model (BLEU, chrF, TER, exact match) and log an evaluation run")
    e.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--data", help="TSV file: source<TAB>reference per line")
    g.add_argument("--split", default="test", help="a split of the data the model was trained on (default test)")
    e.add_argument("--beam", type=int, default=None, help="beam size (default: the model's configured decoding)")
    e.add_argument("--max-sentences", type=int, default=0, help="evaluate at most this many (0: all)")
    e.add_argument("--ray-above", type=int, default=5000, metavar="N",
                   help="translate on Ray Data, every CPU, when the set has at least N sentences (0: never; default 5000)")
    e.add_argument("--tgt-lang", default=None,
                   help="target language, picks sacreBLEU's tokenizer (default: the language the model translates into)")
    e.add_argument("--compare", default=None, help="another model URI scored side by side, e.g. models:/NAME@champion")
    e.add_argument("--promote", default=None, metavar="ALIAS",
                   help="move ALIAS to this version if it scores better than ALIAS's holder on the same sentences")
    e.add_argument("--metric", default="bleu", choices=["bleu", "chrf", "exact_match"], help="metric for --promote")
    e.add_argument("--json", action="store_true", help="also print the scores as JSON")
    e.set_defaults(func=model_commands.cmd_evaluate)
    t = sub.add_parser("translate", help="translate sentences with a registered model")
    t.add_argument("model_uri", help="e.g. models:/tpipe-demo@champion")
    t.add_argument("text", nargs="*", help="sentences (default: lines of stdin)")
    t.add_argument("--input", default=None, metavar="PATH_OR_URI",
                   help="a whole corpus: text (one sentence a line), TSV (first field) or Parquet (--column)")
    t.add_argument("--output", default=None, metavar="PATH_OR_URI",
                   help="where the translations go: .parquet (source, translation) or text, one a line")
    t.add_argument("--column", default=None, help="Parquet input: the column to translate (default text, else src)")
    t.add_argument("--actors", type=int, default=None, help="decoding actors (default: one per CPU of the cluster)")
    t.add_argument("--beam", type=int, default=None, help="beam size (default: the model's decoding settings)")
    t.add_argument("--max-len", type=int, default=None, help="longest translation in tokens (default: the model's)")
    t.add_argument("--batch-size", type=int, default=None, help="sentences per decoding batch (default: the model's)")
    t.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    t.set_defaults(func=model_commands.cmd_translate)

    u = sub.add_parser("ui", help="open the MLflow UI for the configured store on 127.0.0.1")
    u.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    u.set_defaults(func=_command("cmd_ui"))


def _add_cluster_commands(sub) -> None:
    """submit, jobs."""
    sb = sub.add_parser("submit", help="submit the pipeline to a Ray cluster as a job",
                        description="Submit `tpipe run [CONFIG] [overrides]` as a Ray job. MLFLOW_TRACKING_URI must be a "
                                    "tracking server the cluster can reach. Credentials never travel with the job (Ray logs a "
                                    "job's environment): the cluster holds its own MLflow login; see docs/cluster.md.")
    sb.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help=ITEMS_HELP)
    sb.add_argument("--address", default=None, help="the cluster's job API, e.g. http://127.0.0.1:8265 (default $RAY_ADDRESS)")
    sb.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeded")
    sb.add_argument("--tracking-uri", default=None,
                    help="the MLflow server as the cluster reaches it, e.g. http://mlflow:5000 when this shell "
                         "reaches it through a port-forward (default: $MLFLOW_TRACKING_URI)")
    sb.set_defaults(func=_command("cmd_submit"))

    j = sub.add_parser("jobs", help="list, inspect, read or stop submitted jobs")
    j.add_argument("action", choices=["list", "status", "logs", "stop"], help="list jobs, or the status, logs or stop of one")
    j.add_argument("job_id", nargs="?", help="submission id (not for list)")
    j.add_argument("--address", default=None, help="the cluster's job API (default $RAY_ADDRESS)")
    j.set_defaults(func=_command("cmd_jobs"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:  # MLflow's INFO lines (table creation, "Created version") are not tpipe's output
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        # A failure the user caused: one line naming what is wrong; the traceback only with --debug.
        if args.debug:
            raise
        from pipeline.config_schema import ConfigError  # imports yaml: only when something failed

        print(f"tpipe: {'config error: ' if isinstance(e, ConfigError) else ''}{e}", file=sys.stderr)
        return 3 if isinstance(e, TrackingUnreachable) else e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("tpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
