"""Cold `tpipe translate` of one sentence: wall and CPU seconds of fresh processes, and where they go.

    TPIPE_HOME=... python bench/translate.py models:/tpipe-smoke@champion [--runs 7] [--skip-mlflow]
    TPIPE_HOME=... python bench/translate.py models:/tpipe-smoke@champion --threads   # decoding threads

Each round starts, in a rotating order so the machine's drift falls on all of them alike:
  python            `python -c pass`: the interpreter alone
  import torch      `python -c "import torch"`: the floor no tpipe change can go under (the anchor)
  local store       `tpipe translate` on the version found in TPIPE_HOME's sqlite store (tpipe's default)
  via mlflow        MLFLOW_TRACKING_URI pointed at that same store: MLflow's client and pyfunc load it
                    (what every server store takes)
  (--compare-tree)  the local-store translate with another checkout's code (before/after a change)
  phases            the local-store path in one process with a timer per phase (start, imports,
                    parsing, resolving the URI, building the model, weights, tokenizer, decoding)
Each process gets an empty numba cache folder (NUMBA_CACHE_DIR), as on a machine where nothing was
compiled yet. CPU seconds (user + system of the child) are less disturbed by a busy machine than
wall seconds; "over torch" is a run's wall seconds minus the `import torch` of the same round.
The last line is one JSON object with every figure.

--threads instead times decoding 1, 8 and 64 sentences in one warm process on 1 thread and on
torch's default (one per core): what `tpipe translate` decodes on (pipeline/model_commands.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's `data` package, not bench/data.py
SENTENCE = "The cat sat on the mat and looked at the birds in the garden."
EXTRA = "(not in the command) Translator(package) again, warm"
WAYS = ("python", "import torch", "local store", "via mlflow", "phases")


def command(way: str, model_uri: str) -> list[str]:
    if way.startswith("local store, code of "):
        return [sys.executable, "-m", "pipeline.cli", "translate", model_uri, SENTENCE]
    return {
        "python": [sys.executable, "-c", "pass"],
        "import torch": [sys.executable, "-c", "import torch"],
        "local store": [sys.executable, "-m", "pipeline.cli", "translate", model_uri, SENTENCE],
        "via mlflow": [sys.executable, "-m", "pipeline.cli", "translate", model_uri, SENTENCE],
        "phases": [sys.executable, __file__, model_uri, "--phases-child", repr(time.time())],
    }[way]


def one_run(way: str, model_uri: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        code = way.removeprefix("local store, code of ") if way.startswith("local store, code of ") else ROOT
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(code)}
        env.pop("MLFLOW_TRACKING_URI", None)
        if way == "via mlflow":
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(os.environ['TPIPE_HOME']).resolve()}/mlflow.db"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        # cwd: `python -m` puts the working directory before PYTHONPATH
        proc = subprocess.run(command(way, model_uri), env=env, cwd=code, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{way}: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "stderr_lines": len(proc.stderr.splitlines())}
    if way == "phases":
        run["phases"] = json.loads(proc.stdout.splitlines()[-1])
    return run


def phases_child(model_uri: str, launched: float) -> None:
    """The local-store path of pipeline/model_commands.py:cmd_translate, phase by phase, in one
    process: {phase: [wall s, cpu s]}. The first phase runs from the parent's launch to here (the
    interpreter and this script's own stdlib imports); its CPU seconds are this process's so far."""
    marks: dict[str, list[float]] = {"python start": [time.time() - launched, time.process_time()]}
    t, c = time.perf_counter(), time.process_time()

    def mark(name: str) -> None:
        nonlocal t, c
        now, cpu = time.perf_counter(), time.process_time()
        marks[name] = [now - t, cpu - c]
        t, c = now, cpu

    import torch

    mark("import torch")
    from pipeline import cli

    mark("import pipeline.cli")
    args = cli.build_parser().parse_args(["translate", model_uri, SENTENCE])
    mark("argparse")
    from pipeline.home import Home
    from pipeline.inference import Translator, check_sentences
    from pipeline.model_commands import _decode_on_one_thread
    from pipeline.registry import local_package

    mark("import the translate path")
    check_sentences(args.text)
    _decode_on_one_thread()
    package = local_package(Home.resolve().tracking_uri(), args.model_uri)
    if package is None:
        raise SystemExit(f"{model_uri}: not in TPIPE_HOME's local store")
    mark("resolve the model URI (sqlite3)")
    from safetensors.torch import load_model

    from data.tokenizer import load_tokenizer
    from model.config import ModelConfig
    from model.generation import generate  # noqa: F401 (the first decode imports it)
    from model.transformer import Transformer

    mark("import model, safetensors, tokenizer")
    cfg = ModelConfig(**json.loads((package / "model_config.json").read_text(encoding="utf-8")))
    model = Transformer(cfg)
    mark("build the Transformer")
    load_model(model, str(package / "model.safetensors"))
    model.eval()
    mark("load the weights (safetensors)")
    load_tokenizer(package / "tokenizer")
    mark("load the tokenizer")
    translator = Translator(package)  # all of the three above in one call, as the command does
    mark(EXTRA)
    translator.translate(args.text)
    mark("decode one sentence")
    marks["threads"] = [torch.get_num_threads(), torch.get_num_threads()]
    print(json.dumps({k: [round(x, 4) for x in v] for k, v in marks.items()}))


def threads_table(model_uri: str, repeats: int) -> dict:
    """Decoding 1, 8, 64 sentences on 1 thread and on torch's default, interleaved, in one warm process."""
    import torch

    from pipeline.home import Home
    from pipeline.inference import Translator
    from pipeline.registry import local_package

    default = torch.get_num_threads()
    translator = Translator(local_package(Home.resolve().tracking_uri(), model_uri))
    sentences = [f"{SENTENCE} ({i})" for i in range(64)]
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for threads in (1, default):
            torch.set_num_threads(threads)
            for n in (1, 8, 64):
                t0 = time.perf_counter()
                translator.translate(sentences[:n])
                times.setdefault(f"{n} sentences, {threads} thread(s)", []).append(time.perf_counter() - t0)
    print("| decoding | median s | all s |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.3f} | {' '.join(f'{x:.2f}' for x in v)} |")
    return {"median_s": {k: round(statistics.median(v), 3) for k, v in times.items()}, "default_threads": default}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_uri")
    ap.add_argument("--runs", type=int, default=7, help="rounds (default 7); medians over them")
    ap.add_argument("--skip-mlflow", action="store_true", help="leave out the MLflow path (the slowest)")
    ap.add_argument("--compare-tree", default=None, metavar="DIR",
                    help="also the local-store translate with the code of another checkout, e.g. an older commit "
                         "(git archive COMMIT | tar -x -C DIR)")
    ap.add_argument("--threads", action="store_true", help="time decoding on 1 thread vs torch's default instead")
    ap.add_argument("--phases-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if "TPIPE_HOME" not in os.environ:
        raise SystemExit("set TPIPE_HOME to the home whose store holds the model")
    if args.phases_child:
        phases_child(args.model_uri, float(args.phases_child))
        return 0
    if args.threads:
        figures = threads_table(args.model_uri, args.runs)
        print(json.dumps({"model_uri": args.model_uri, **figures, "load_average": os.getloadavg()[0]}))
        return 0
    ways = [w for w in WAYS if not (args.skip_mlflow and w == "via mlflow")]
    if args.compare_tree:
        ways.append(f"local store, code of {Path(args.compare_tree).resolve()}")
    runs: dict[str, list[dict]] = {w: [] for w in ways}
    load: list[float] = []
    for i in range(args.runs):
        for way in ways[i % len(ways):] + ways[: i % len(ways)]:
            runs[way].append(one_run(way, args.model_uri))
        load.append(os.getloadavg()[0])
    for way in ways:  # wall seconds over the same round's `import torch`
        for run, anchor in zip(runs[way], runs["import torch"]):
            run["over_torch_s"] = round(run["wall_s"] - anchor["wall_s"], 3)
    median = lambda rs, k: round(statistics.median(r[k] for r in rs), 3)  # noqa: E731
    print("| way | median wall s | min wall s | median over torch s | median cpu s | stderr lines |")
    print("|---|---|---|---|---|---|")
    for way, rs in runs.items():
        print(f"| {way} | {median(rs, 'wall_s'):.2f} | {min(r['wall_s'] for r in rs):.2f} | "
              f"{median(rs, 'over_torch_s'):.2f} | {median(rs, 'cpu_s'):.2f} | {max(r['stderr_lines'] for r in rs)} |")
    names = list(runs["phases"][0]["phases"])
    phases = {k: [round(statistics.median(r["phases"][k][i] for r in runs["phases"]), 3) for i in (0, 1)] for k in names}
    print("\n| phase (the phases process, median) | wall s | cpu s |\n|---|---|---|")
    for k, (wall, cpu) in phases.items():
        print(f"| {k} | {wall:.3f} | {cpu:.3f} |")
    print(f"| sum of the command's phases | {sum(v[0] for k, v in phases.items() if k not in (EXTRA, 'threads')):.3f} "
          f"| {sum(v[1] for k, v in phases.items() if k not in (EXTRA, 'threads')):.3f} |")
    print(json.dumps({"model_uri": args.model_uri, "runs": runs,
                      "median_wall_s": {w: median(rs, "wall_s") for w, rs in runs.items()},
                      "median_over_torch_s": {w: median(rs, "over_torch_s") for w, rs in runs.items()},
                      "median_cpu_s": {w: median(rs, "cpu_s") for w, rs in runs.items()},
                      "median_phases_s": phases, "load_average": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
