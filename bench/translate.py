"""Cold `tpipe translate` of one sentence: wall and CPU seconds of fresh processes.

    TPIPE_HOME=... python bench/translate.py models:/tpipe-smoke@champion [--runs 3]

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


def one_run(model_uri: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
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
    runs = [one_run(args.model_uri) for _ in range(args.runs)]
    for r in runs:
        print(f"wall {r['wall_s']:6.2f}s  cpu {r['cpu_s']:6.2f}s  stderr lines {r['stderr_lines']}")
    print(json.dumps({"model_uri": args.model_uri, "runs": runs,
                      "median_wall_s": sorted(r["wall_s"] for r in runs)[len(runs) // 2],
                      "median_cpu_s": sorted(r["cpu_s"] for r in runs)[len(runs) // 2],
                      "load_average": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
