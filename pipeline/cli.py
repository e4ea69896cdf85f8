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
import json
import os
import sys

from data.errors import UserError
from pipeline.config import ConfigError, PipelineConfig, describe, load_config
from pipeline.tracking import TrackingUnreachable


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """`[CONFIG] [key=value ...]`: the first item without '=' names the config."""
    config, overrides = None, []
    for i, item in enumerate(items):
        if "=" not in item and i == 0:
            config = item
        elif "=" not in item:
            raise ConfigError(f"'{item}' is not an override of the form key.sub=value (the config is given first)")
        else:
            overrides.append(item)
    return config, overrides


def _load(args) -> PipelineConfig:
    config, overrides = _split_config_args(args.items)
    return load_config(config, overrides)


def cmd_run(args) -> int:
    cfg = _load(args)  # validated before Ray or MLflow start
    from pipeline.interrupts import RunInterrupted
    from pipeline.runner import run_pipeline

    try:
        out = run_pipeline(cfg, from_step=args.from_step, until_step=args.until_step, address=args.address,
                           log_to_file=not args.verbose)
    except RunInterrupted as e:
        import shlex

        from data.io import redact_text

        during = f" during step {e.step}" if e.step else ""
        kept = "finished steps are kept" + (", training continues from its last checkpoint" if e.step == "train" else "")
        resume = redact_text(shlex.join(["tpipe", *sys.argv[1:]]))
        print(f"tpipe: run interrupted ({e.signal_name}){during}; {kept}: resume with `{resume}`", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(out["summary"], ensure_ascii=False, default=str))
    return 0


def cmd_sweep(args) -> int:
    cfg = _load(args)  # the base config and the whole space are checked before Ray or MLflow start
    from pipeline.sweep_space import load_space

    load_space(args.space, cfg)
    from pipeline.sweep import run_sweep

    out = run_sweep(cfg, args.space, trials=args.trials, address=args.address)
    print(f"best config: {out['best_config']}  (tpipe run {out['best_config']})")
    return 0


def cmd_config(args) -> int:
    cfg = _load(args)
    if args.keys:  # the values of this config (defaults, the named config and the overrides applied)
        for key, value, help_ in describe(cfg):
            print(f"{key:36s} {value:>14s}  {help_}")
        return 0
    print(cfg.to_yaml(), end="")
    return 0


def cmd_status(args) -> int:
    from pipeline.home import Home, describe_holder

    home = Home.resolve()
    runs_dir = home.runs
    runs = sorted(runs_dir.glob("*/state.json"), key=lambda p: p.stat().st_mtime) if runs_dir.exists() else []
    if not runs:
        raise UserError(f"no pipeline runs under {runs_dir}")
    if args.run:
        picked = [p for p in runs if p.parent.name.startswith(args.run)]
        if not picked:
            raise UserError(f"no run named {args.run}*; runs: {', '.join(p.parent.name for p in runs)}")
        state_file = picked[-1]
    else:
        state_file = runs[-1]
    state = json.loads(state_file.read_text(encoding="utf-8"))
    active = home.active_run()
    print(f"run {state_file.parent.name}  ({state_file.parent})")
    print(f"{'step':12s} {'state':11s} {'seconds':>8s}  output")
    for name, st in state["steps"].items():
        secs = f"{st['seconds']:.1f}" if "seconds" in st else "-"
        # 'running' with no live run in this home: its process was killed before it could say so
        shown = "killed" if st["state"] == "running" and active is None else st["state"]
        print(f"{name:12s} {shown:11s} {secs:>8s}  {st.get('out_dir', '')}")
    if active is not None:
        print(f"a run is working in this home: {describe_holder(active)}")
    return 0


def _setup_tracking() -> str:
    """Point MLflow (tracking and registry) at the configured store; returns its URI."""
    from pipeline.home import Home
    from pipeline.tracking import credentials_to_env, setup_mlflow

    uri = credentials_to_env(Home.resolve().tracking_uri())  # MLflow prints run URLs: never with a password
    setup_mlflow(uri)
    return uri


def cmd_translate(args) -> int:
    if args.input or args.output:
        return _translate_corpus(args)

    from pipeline.registry import ModelNotFound, resolve_model_uri

    if ":/" not in args.model_uri and not os.path.isdir(args.model_uri):  # before MLflow is imported
        raise ModelNotFound(f"{args.model_uri}: no such model folder (or give models:/NAME@ALIAS)")

    from pipeline.translate import check_sentences

    texts = args.text or [line.rstrip("\n") for line in sys.stdin]
    check_sentences(texts)  # before the model loads
    _setup_tracking()
    import warnings

    import mlflow

    if args.model_uri.startswith("models:/"):
        resolve_model_uri(args.model_uri)  # one line naming the URI, not MLflow's traceback
    # suppress_warnings: no comparison of the model's pinned requirements with every installed
    # distribution (a scan of site-packages, ~10% of a cold translate), no advice lines on stderr.
    with warnings.catch_warnings():  # models registered before pyfunc_model.py filtered MLflow's advice
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        model = mlflow.pyfunc.load_model(args.model_uri, suppress_warnings=True)
    for src, hyp in zip(texts, model.predict(texts)):
        print(f"{src}\t{hyp}")
    return 0


def _translate_corpus(args) -> int:
    """`tpipe translate MODEL_URI --input PATH_OR_URI --output PATH_OR_URI`: a whole corpus on Ray Data."""
    if not (args.input and args.output) or args.text:
        raise UserError("translate a corpus with both --input and --output (and no sentences on the command line)")
    from pipeline.batch_translate import (
        TranslateError, check_output, plan_translation, read_corpus, translate_plan, write_translations,
    )
    from pipeline.ray_connect import connect_ray

    # Everything a user can get wrong is checked before Ray starts: output, input, model URI.
    check_output(args.output)
    corpus = read_corpus(args.input, args.column)
    if not corpus.lines:
        raise TranslateError(f"input {args.input} has no lines to translate")
    uri = _setup_tracking()
    plan = plan_translation(args.model_uri, corpus.lines, uri, _decoding_overrides(args))
    started = connect_ray(args.address, None)
    try:
        translations, stats = translate_plan(plan, tracking_uri=uri, actors=args.actors,
                                             progress=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        if started:
            import ray

            ray.shutdown()
    meta = plan.metadata() | {"input": args.input, "invalid_utf8_lines": corpus.invalid_utf8_lines} | {
        k: stats[k] for k in ("actors", "sentences_per_second", "tokens_per_second", "padding_fraction")}
    write_translations(args.output, corpus.lines, translations, meta)
    print(f"{len(translations)} lines -> {args.output}  ({plan.version_uri}; {stats['sentences_per_second']} "
          f"sentences/s, {stats['tokens_per_second']} tokens/s, {stats['actors']} actors)")
    return 0


def _decoding_overrides(args) -> dict:
    return {"beam_size": args.beam, "max_len": args.max_len, "batch_size": args.batch_size}


def _read_tsv(path: str) -> list[tuple[str, str]]:
    from data.io import DataError

    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                raise DataError(f"{path} line {n}: expected 'source<TAB>reference', got {len(parts)} field(s)")
            pairs.append((parts[-2], parts[-1]))
    return pairs


def cmd_evaluate(args) -> int:
    if args.data and not os.path.isfile(args.data):  # before MLflow is imported
        from data.io import DataError

        raise DataError(f"--data {args.data}: no such file")
    from pipeline.evaluate import (
        check_split, data_identity, evaluate_pyfunc, model_tgt_lang, record_evaluation, resolve_version,
        split_pairs_of_version,
    )

    if not args.data:
        check_split(args.split)  # before the store is opened
    tracking_uri = _setup_tracking()
    from pipeline.registry import alias_version, promote_if_better

    name, version = resolve_version(args.model_uri)
    if args.compare:
        resolve_version(args.compare)  # a wrong --compare is refused before any scoring
    if args.data:
        pairs, data, split = _read_tsv(args.data), os.path.abspath(args.data), None
    else:
        pairs, data, split = split_pairs_of_version(name, version, args.split), f"split:{args.split}", args.split
    if args.max_sentences and len(pairs) > args.max_sentences:
        pairs, data = pairs[: args.max_sentences], f"{data}[:{args.max_sentences}]"
        split = None if split is None else f"{split}[:{args.max_sentences}]"
    identity = data_identity(pairs, data, split)
    tgt_lang = args.tgt_lang or model_tgt_lang(name, version)
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    params = {"beam_size": args.beam} if args.beam else None
    uris = [f"models:/{name}/{version}"] + ([args.compare] if args.compare else [])
    compared = resolve_version(args.compare) if args.compare else None
    large = len(sources) >= args.ray_above > 0
    ray_started = False

    def score(uri: str) -> dict:
        nonlocal ray_started
        translate = None
        if large:  # on Ray Data, every CPU of the cluster: pipeline/batch_translate.py
            from pipeline.batch_translate import plan_translation, translate_plan
            from pipeline.ray_connect import connect_ray

            plan = plan_translation(uri, sources, tracking_uri, params)
            ray_started |= connect_ray(None, None)
            translate = lambda _s, plan=plan: translate_plan(  # noqa: E731
                plan, tracking_uri=tracking_uri, progress=lambda line: print(line, file=sys.stderr, flush=True))[0]
        return evaluate_pyfunc(uri, sources, refs, tgt_lang, params=params, data=identity, translate=translate)

    try:
        results = [score(uri) for uri in uris]
        # The test split with the model's own decoding is the version's headline score (eval.bleu, ...).
        run_id = record_evaluation(name, version, results[0], canonical=split == "test" and params is None)
        header = f"{'metric':22s}" + "".join(f"{u:>34s}" for u in uris)
        print(header)
        for k in ("bleu", "chrf", "ter", "exact_match", "length_ratio", "loss", "perplexity", "sentences_per_second"):
            print(f"{k:22s}" + "".join(f"{r.get(k, '-'):>34}" for r in results))
        print(f"sentences: {len(pairs)} ({data}, sha256 {identity['sha256'][:12]}); evaluation run {run_id}")
        print(f"sacreBLEU {results[0]['signature']['bleu']}")
        print(f"chrF      {results[0]['signature']['chrf']}")
        print(f"TER       {results[0]['signature']['ter']}")
        if args.promote:
            # Promotion compares this version with the alias's holder on these same sentences: the
            # --compare result when it is the holder, else the holder is scored here.
            holder = alias_version(name, args.promote)
            held = None
            if holder is not None and holder != version:
                held = results[1] if compared == (name, holder) else score(f"models:/{name}/{holder}")
            moved, message = promote_if_better(name, version, args.metric, results[0], held, alias=args.promote)
            print(f"promotion: {message}")
        if args.json:
            print(json.dumps([{k: v for k, v in r.items() if k != "samples"} for r in results], ensure_ascii=False))
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    return 0


def cmd_submit(args) -> int:
    _load(args)  # refuse a bad config here, not minutes later on the cluster
    from pipeline.submit import SubmitError, follow, submit

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("tpipe: give --address http://HEAD:8265 (or set RAY_ADDRESS)")
    try:
        job_id = submit(address, args.items, tracking_uri=args.tracking_uri)
    except SubmitError as e:
        print(f"tpipe: {e}", file=sys.stderr)
        return 2
    print(job_id, flush=True)
    if args.follow:
        status = follow(address, job_id)
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0


def cmd_jobs(args) -> int:
    from pipeline.submit import client

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("tpipe: give --address http://HEAD:8265 (or set RAY_ADDRESS)")
    c = client(address)
    if args.action == "list":
        for job in c.list_jobs():
            print(f"{job.submission_id or job.job_id}\t{job.status}\t{job.entrypoint}")
    elif not args.job_id:
        raise SystemExit(f"tpipe: jobs {args.action} needs a submission id")
    elif args.action == "status":
        print(c.get_job_status(args.job_id))
    elif args.action == "logs":
        print(c.get_job_logs(args.job_id), end="")
    elif args.action == "stop":
        print("stopped" if c.stop_job(args.job_id) else "already finished")
    return 0


def cmd_ui(args) -> int:
    import socket

    from data.io import redact_uri
    from pipeline.home import Home

    home = Home.resolve()
    uri = home.tracking_uri()
    if not uri.startswith("sqlite:"):
        print(f"the tracking store is a server: open {redact_uri(uri)}")
        return 0
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", args.port))
        except OSError:
            raise UserError(f"port {args.port} on 127.0.0.1 is in use; give a free one with --port") from None
    cmd = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
        "--default-artifact-root", str(home.mlflow_artifacts), "--host", "127.0.0.1", "--port", str(args.port),
    ]
    print(" ".join(cmd), flush=True)
    return run_process_group(cmd)


def run_process_group(cmd: list[str]) -> int:
    """Run `cmd` in a process group of its own and stop the whole group when this process stops.

    `mlflow ui` starts server workers; a signal to tpipe alone would leave them running. SIGINT,
    SIGTERM and SIGHUP are forwarded to the group as SIGTERM (SIGKILL after 10 s), and the group is
    cleared however the command ends.
    """
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, start_new_session=True)
    stopped_by: list[int] = []

    def forward(signum, frame):
        stopped_by.append(signum)
        _signal_group(proc.pid, signal.SIGTERM)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    deadline = None
    try:
        while (code := proc.poll()) is None:
            if stopped_by and deadline is None:
                deadline = time.monotonic() + 10
            if deadline is not None and time.monotonic() > deadline:
                _signal_group(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
    finally:
        _signal_group(proc.pid, signal.SIGTERM)  # workers left behind by a server that exited
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 128 + stopped_by[0] if stopped_by else code


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-pipeline")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


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

    items_help = "an optional config (a name in conf/ such as 'default' or 'smoke', or a .yaml path) then key.sub=value overrides"
    r = sub.add_parser("run", help="run the pipeline: prepare, tokenizer, encode, train, register, evaluate",
                       description="Run (or continue) the pipeline. Finished steps are reused; an interrupted run continues where it stopped.")
    r.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help=items_help)
    r.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--from", dest="from_step", default=None, help="re-run from this step (earlier steps are reused)")
    r.add_argument("--until", dest="until_step", default=None, help="stop after this step")
    r.add_argument("--json", action="store_true", help="print the run summary as JSON at the end")
    r.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="search hyperparameters on Ray Tune; register and evaluate the best trial",
                        description="Trials of the pipeline's train step on Ray Tune (ASHA on validation loss), over a "
                                    "search space of config keys. Data steps run once; a re-run continues the sweep.")
    sw.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help=items_help)
    sw.add_argument("--space", required=True, metavar="SPACE.yaml",
                    help="config keys to search: 'train.lr: {loguniform: [1e-4, 1e-2]}', choice, uniform, grid")
    sw.add_argument("--trials", type=int, default=4, help="trials drawn per grid point (default 4)")
    sw.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    sw.set_defaults(func=cmd_sweep)

    c = sub.add_parser("config", help="print the resolved config, or every key with --keys")
    c.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help=items_help)
    c.add_argument("--keys", action="store_true", help="list every config key, its value in this config and what it means")
    c.set_defaults(func=cmd_config)

    s = sub.add_parser("status", help="steps of a pipeline run (the latest by default)")
    s.add_argument("run", nargs="?", help="run folder name (or a prefix) under $TPIPE_HOME/runs")
    s.set_defaults(func=cmd_status)

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
    e.set_defaults(func=cmd_evaluate)

    sb = sub.add_parser("submit", help="submit the pipeline to a Ray cluster as a job",
                        description="Submit `tpipe run [CONFIG] [overrides]` as a Ray job. MLFLOW_TRACKING_URI must be a "
                                    "tracking server the cluster can reach. Credentials never travel with the job (Ray logs a "
                                    "job's environment): the cluster holds its own MLflow login; see docs/cluster.md.")
    sb.add_argument("items", nargs="*", metavar="[CONFIG] [key=value]", help=items_help)
    sb.add_argument("--address", default=None, help="the cluster's job API, e.g. http://127.0.0.1:8265 (default $RAY_ADDRESS)")
    sb.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeded")
    sb.add_argument("--tracking-uri", default=None,
                    help="the MLflow server as the cluster reaches it, e.g. http://mlflow:5000 when this shell "
                         "reaches it through a port-forward (default: $MLFLOW_TRACKING_URI)")
    sb.set_defaults(func=cmd_submit)

    j = sub.add_parser("jobs", help="list, inspect, read or stop submitted jobs")
    j.add_argument("action", choices=["list", "status", "logs", "stop"], help="list jobs, or the status, logs or stop of one")
    j.add_argument("job_id", nargs="?", help="submission id (not for list)")
    j.add_argument("--address", default=None, help="the cluster's job API (default $RAY_ADDRESS)")
    j.set_defaults(func=cmd_jobs)

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
    t.set_defaults(func=cmd_translate)

    u = sub.add_parser("ui", help="open the MLflow UI for the configured store on 127.0.0.1")
    u.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    u.set_defaults(func=cmd_ui)

    try:
        from data.tokenizer.cli import register as register_tokenizer
    except ImportError:
        register_tokenizer = None
    if register_tokenizer is not None:
        register_tokenizer(sub)
    return p


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
        print(f"tpipe: {'config error: ' if isinstance(e, ConfigError) else ''}{e}", file=sys.stderr)
        return 3 if isinstance(e, TrackingUnreachable) else e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("tpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
