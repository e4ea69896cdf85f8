"""The commands of `tpipe` that use a registered model: translate (sentences or a corpus) and evaluate.

MLflow is imported inside the commands, after the arguments are checked.
"""

from __future__ import annotations

import json
import os
import sys

from data.errors import UserError


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

    from pipeline.registry import ModelNotFound

    if ":/" not in args.model_uri and not os.path.isdir(args.model_uri):  # before MLflow is imported
        raise ModelNotFound(f"{args.model_uri}: no such model folder (or give models:/NAME@ALIAS)")

    from pipeline.inference import check_sentences

    texts = args.text or [line.rstrip("\n") for line in sys.stdin]
    check_sentences(texts)  # before the model loads
    _decode_on_one_thread()
    for src, hyp in zip(texts, _load_translator(args.model_uri).predict(texts)):
        print(f"{src}\t{hyp}")
    _exit_without_collecting()
    return 0


def _exit_without_collecting() -> None:
    """At interpreter exit, leave what is loaded now to the OS instead of the garbage collector.

    Python's shutdown runs full collections over every object while it tears the modules down:
    with torch's ~170k objects that is 0.7 of the ~0.9 s `python -c "import torch"` spends
    exiting (2 busy cores; perf: gc_collect_main). Frozen objects are skipped by those passes;
    they are freed with the process, and nothing in them needs a finalizer run at exit.
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


def _decode_on_one_thread() -> None:
    """Decode on one intra-op thread, unless OMP_NUM_THREADS asks for another number.

    A decoding step is a few small matrix products; torch's default of one thread per core costs
    more in handing each of them out and waiting for the other threads than it saves, and on a
    busy machine a descheduled thread stalls every step. Shared 2-core machine, tiny model, load
    average 5 / 14: one sentence 0.03 / 0.36 s on 1 thread vs 0.2 / 2.7 s on 2, 64 sentences
    0.4 / 1.3 s vs 3 / 31 s (bench/translate.py --threads). Many go faster as the Ray Data path does it:
    more one-thread decoders (pipeline/batch_translate.py), not more threads in one.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


def _load_translator(model_uri: str):
    """What translates for `tpipe translate`: the pyfunc MLflow loads, or, for a version in this
    home's own sqlite store, the same Translator on the package folder found without MLflow."""
    from pipeline.home import Home
    from pipeline.registry import local_package

    if model_uri.startswith("models:/") and not os.environ.get("MLFLOW_TRACKING_URI"):
        package = local_package(Home.resolve().tracking_uri(), model_uri)
        if package is not None:
            from pipeline.inference import Translator

            return _Predictor(Translator(package))
    _setup_tracking()
    import warnings

    import mlflow

    from pipeline.registry import resolve_model_uri

    if model_uri.startswith("models:/"):
        resolve_model_uri(model_uri)  # one line naming the URI, not MLflow's traceback
    # suppress_warnings: no comparison of the model's pinned requirements with every installed
    # distribution (a scan of site-packages, ~10% of a cold translate), no advice lines on stderr.
    with warnings.catch_warnings():  # models registered before pyfunc_model.py filtered MLflow's advice
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        return mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)


class _Predictor:
    """A Translator with the pyfunc's `predict(texts)`: the package's own decoding settings."""

    def __init__(self, translator) -> None:
        self.translator = translator

    def predict(self, texts: list[str]) -> list[str]:
        return self.translator.translate(texts)


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


def _evaluation_pairs(args, name: str, version: str) -> tuple[list[tuple[str, str]], str, str | None]:
    """(pairs, what they are, split) from --data or --split, cut to --max-sentences."""
    from pipeline.evaluate import split_pairs_of_version

    if args.data:
        pairs, data, split = _read_tsv(args.data), os.path.abspath(args.data), None
    else:
        pairs, data, split = split_pairs_of_version(name, version, args.split), f"split:{args.split}", args.split
    if args.max_sentences and len(pairs) > args.max_sentences:
        pairs, data = pairs[: args.max_sentences], f"{data}[:{args.max_sentences}]"
        split = None if split is None else f"{split}[:{args.max_sentences}]"
    return pairs, data, split


def _print_scores(uris: list[str], results: list[dict]) -> None:
    """A table: one row a metric, one column a model."""
    print(f"{'metric':22s}" + "".join(f"{u:>34s}" for u in uris))
    for k in ("bleu", "chrf", "ter", "exact_match", "length_ratio", "loss", "perplexity", "sentences_per_second"):
        print(f"{k:22s}" + "".join(f"{r.get(k, '-'):>34}" for r in results))


def cmd_evaluate(args) -> int:
    if args.data and not os.path.isfile(args.data):  # before MLflow is imported
        from data.io import DataError

        raise DataError(f"--data {args.data}: no such file")
    from pipeline.evaluate import (
        check_split, data_identity, evaluate_pyfunc, model_tgt_lang, record_evaluation, resolve_version,
    )

    if not args.data:
        check_split(args.split)  # before the store is opened
    tracking_uri = _setup_tracking()
    from pipeline.registry import alias_version, promote_if_better

    name, version = resolve_version(args.model_uri)
    if args.compare:
        resolve_version(args.compare)  # a wrong --compare is refused before any scoring
    pairs, data, split = _evaluation_pairs(args, name, version)
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
        _print_scores(uris, results)
        print(f"sentences: {len(pairs)} ({data}, sha256 {identity['sha256'][:12]}); evaluation run {run_id}")
        for label, metric in (("sacreBLEU", "bleu"), ("chrF", "chrf"), ("TER", "ter")):
            print(f"{label:9s} {results[0]['signature'][metric]}")
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
