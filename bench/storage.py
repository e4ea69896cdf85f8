"""The smoke pipeline with its outputs on S3 against the same pipeline on the local disk.

    python bench/storage.py                 # 2 rounds, local and S3 alternating
    python bench/storage.py --rounds 3 --config smoke train.max_steps=40

S3 is a moto_server on 127.0.0.1 (the dev extra): `artifact_root` and Ray Train's checkpoints
(`train.storage_path`, default under the root) in the bucket, training workers reading the
tokenizer and shards through their node cache. MLflow stays a sqlite store in a fresh TPIPE_HOME
in both cases. Each run is `tpipe run` in a fresh process with a fresh TPIPE_HOME (nothing reused),
so the times include Ray's start-up. Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def start_moto(log: Path) -> tuple[subprocess.Popen, int]:
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except requests.ConnectionError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    requests.put(f"http://127.0.0.1:{port}/bench", timeout=10).raise_for_status()
    return proc, port


def run(items: list[str], home: Path, env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *items, "--json"], cwd=ROOT, capture_output=True,
                          text=True, env={**env, "TPIPE_HOME": str(home)}, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"tpipe run {' '.join(items)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"process_s": time.perf_counter() - t0, "wall_s": summary["wall_seconds"],
            "steps": {k: v["seconds"] for k, v in summary["steps"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--config", nargs="*", default=["smoke"], help="config and overrides (default: smoke)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tpipe-bench-storage-"))
    moto, port = start_moto(work / "moto.log")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
               PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    results: dict[str, list[dict]] = {"local": [], "s3": []}
    try:
        for r in range(args.rounds):
            for kind in ("local", "s3") if r % 2 == 0 else ("s3", "local"):
                items = list(args.config)
                if kind == "s3":
                    items.append(f"artifact_root=s3://bench/round{r}?endpoint_override=127.0.0.1:{port}&scheme=http")
                results[kind].append(run(items, work / f"home-{kind}-{r}", env))
                print(f"round {r} {kind:5s} {results[kind][-1]['wall_s']:7.1f}s  {results[kind][-1]['steps']}", flush=True)
    finally:
        os.killpg(moto.pid, 15)
    median = {k: statistics.median(x["wall_s"] for x in v) for k, v in results.items()}
    steps = {k: {s: statistics.median(x["steps"][s] for x in v) for s in v[0]["steps"]} for k, v in results.items()}
    print(f"\n{'step':10s} {'local s':>9s} {'s3 s':>9s}")
    for s in steps["local"]:
        print(f"{s:10s} {steps['local'][s]:9.1f} {steps['s3'][s]:9.1f}")
    print(f"{'pipeline':10s} {median['local']:9.1f} {median['s3']:9.1f}   s3/local = {median['s3'] / median['local']:.2f}")
    print(json.dumps({"median_wall_s": median, "ratio": median["s3"] / median["local"], "steps": steps, "runs": results}))


if __name__ == "__main__":
    main()
