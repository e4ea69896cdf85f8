"""Corpus translation throughput: `tpipe translate --input/--output` on Ray Data against the plain
single-process Translator loop, on the same lines, with output compared line by line.

    TPIPE_HOME=/tmp/bench-home python bench/translate.py --model-uri models:/tpipe-smoke@champion [--lines 20000]

The model is any registered one in TPIPE_HOME's store (or MLFLOW_TRACKING_URI); `tpipe run smoke`
makes one in a few minutes. The lines are the built-in corpus's English side (the smoke and default
models' domain), `--lines` of them.

  single     Translator(package).translate(lines): one process, torch's default threads (every core)
  ray 1a     pipeline.batch_translate on a local Ray (num_cpus=2): 1 actor, 1 torch thread
  ray 2a     the same with 2 actors

Each round runs single, 1a, 2a (every second round 2a before 1a), so the machine's drift falls on
all three alike; the ratio against single is taken within a round and the median over rounds is
reported. Ray's seconds run from the first row requested to the last row received: they include the
actors' start-up (each loads the model package), not Ray's own start-up. single's exclude
its model load (reported apart). tokens/s counts generated target tokens. Ends with one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-uri", required=True, help="models:/NAME/VERSION or models:/NAME@ALIAS")
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=99)
    args = ap.parse_args()

    import mlflow
    import ray

    from data.builtin import generate_pairs
    from pipeline.batch_translate import plan_translation, translate_plan
    from pipeline.home import Home
    from pipeline.inference import Translator

    uri = Home.resolve().tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    lines = [src for src, _ in generate_pairs(args.lines, args.seed)]
    plan = plan_translation(args.model_uri, lines, uri)
    package = Path(mlflow.artifacts.download_artifacts(f"{plan.version_uri}")) / "artifacts" / "package"
    t0 = time.perf_counter()
    translator = Translator(package)
    load_s = time.perf_counter() - t0
    src_tokens = sum(len(x) for x in plan.ids)

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    reference: list[str] | None = None
    rounds: list[dict[str, dict]] = []
    identical = True
    try:
        for r in range(args.rounds):
            order = ["single", "ray 1a", "ray 2a"] if r % 2 == 0 else ["single", "ray 2a", "ray 1a"]
            row: dict[str, dict] = {}
            for name in order:
                if name == "single":
                    t = time.perf_counter()
                    out = translator.translate(lines)
                    seconds = time.perf_counter() - t
                    row[name] = {"seconds": seconds}
                else:
                    out, stats = translate_plan(plan, tracking_uri=uri, actors=int(name[4]))
                    row[name] = {"seconds": stats["seconds"], "output_tokens": stats["output_tokens"]}
                if reference is None:
                    reference = out
                identical &= out == reference
                print(f"round {r + 1} {name:7s} {row[name]['seconds']:7.1f}s  {args.lines / row[name]['seconds']:7.1f} sentences/s",
                      file=sys.stderr, flush=True)
            out_tokens = next(v["output_tokens"] for v in row.values() if "output_tokens" in v)
            for v in row.values():
                v["sentences_per_second"] = round(args.lines / v["seconds"], 1)
                v["tokens_per_second"] = round(out_tokens / v["seconds"], 1)
                v["source_tokens_per_second"] = round(src_tokens / v["seconds"], 1)
                v["seconds"] = round(v["seconds"], 2)
            rounds.append(row)
    finally:
        ray.shutdown()

    def median(name: str, key: str) -> float:
        return round(statistics.median(row[name][key] for row in rounds), 1)

    result = {
        "bench": "translate",
        "model_uri": args.model_uri,
        "model_version": plan.model_version,
        "lines": args.lines,
        "generation": plan.generation,
        "padding_fraction": round(plan.padding_fraction, 4),
        "cpus": os.cpu_count(),
        "single_load_seconds": round(load_s, 2),
        "median": {n: {k: median(n, k) for k in ("sentences_per_second", "tokens_per_second", "seconds")}
                   for n in ("single", "ray 1a", "ray 2a")},
        "speedup_vs_single": {
            n: round(statistics.median(row["single"]["seconds"] / row[n]["seconds"] for row in rounds), 3)
            for n in ("ray 1a", "ray 2a")
        },
        "output_identical": identical,
        "rounds": rounds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
