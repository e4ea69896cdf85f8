"""Cold `tpipe translate` of one sentence: wall and CPU seconds of fresh processes.

    TPIPE_HOME=... python bench/translate.py models:/tpipe-smoke@champion [--runs 3]

Two ways to the same model, interleaved run by run so the machine's drift falls on both:
  local store   the version found in TPIPE_HOME's sqlite store with sqlite3 (tpipe's default)
  via mlflow    MLFLOW_TRACKING_URI pointed at that same store: MLflow's client and pyfunc load it
                (what every server store takes, and what `tpipe translate` did before)
Each run is a new process with an empty numba cache folder (NUMBA_CACHE_DIR), as on a machine
where nothing was compiled yet. CPU seconds (user + system of the child) are less disturbed by a
busy machine than wall seconds. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "The cat sat on the mat and looked at the birds in the garden."


def one_run(model_uri: str, via_mlflow: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        if via_mlflow:
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(os.environ['TPIPE_HOME']).resolve()}/mlflow.db"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "translate", model_uri, SENTENCE],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stderr_lines": len(proc.stderr.splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_uri")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if "TPIPE_HOME" not in os.environ:
        raise SystemExit("set TPIPE_HOME to the home whose store holds the model")
    runs: dict[str, list[dict[str, float]]] = {"local store": [], "via mlflow": []}
    for i in range(args.runs):
        for way in (("local store", "via mlflow") if i % 2 == 0 else ("via mlflow", "local store")):
            runs[way].append(one_run(args.model_uri, via_mlflow=way == "via mlflow"))
    median = lambda rs, k: sorted(r[k] for r in rs)[len(rs) // 2]  # noqa: E731
    print("| way | median wall s | median cpu s | stderr lines |\n|---|---|---|---|")
    for way, rs in runs.items():
        print(f"| {way} | {median(rs, 'wall_s'):.2f} | {median(rs, 'cpu_s'):.2f} | {max(r['stderr_lines'] for r in rs)} |")
    print(json.dumps({"model_uri": args.model_uri, "runs": runs,
                      "median_wall_s": {w: median(rs, "wall_s") for w, rs in runs.items()},
                      "median_cpu_s": {w: median(rs, "cpu_s") for w, rs in runs.items()},
                      "load_average": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
