#!/usr/bin/env bash
# bench/gpu.sh: the GPU benchmark, one prepared script that finishes in under 8 minutes.
#
# Model section (issue 5): training tokens/s and model FLOPs utilisation (MFU, against the datasheet
# dense-bf16 peak) for the `base` and `big` presets, eager and under torch.compile, in bf16-mixed
# (autocast over fp32 weights, as the pipeline trains) and bf16-true; which SDPA kernels ran (from the
# profiler, by kernel name); two self-checks on the GPU (bf16 ≈ fp32 logits; KV-cached greedy decoding
# = recomputation). Exits non-zero if a check fails or a variant errors. Every number is in each part's
# JSON last line, and in $OUT/gpu_bench_{mixed,true}.json when $OUT is set.
#
#   bash bench/gpu.sh                        # batch 256 x (128 + 128) tokens, V = 32768; 128 s on an H200
#   bash bench/gpu.sh --profile-top 20       # extra arguments go to both `bench/model.py gpu` parts
#   PYTHON=/path/to/python bash bench/gpu.sh
#
# Needs only torch (with CUDA) and pyyaml: no Ray, MLflow or Lightning.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LOG_DIR="${OUT:-/tmp}"
export PYTHONUNBUFFERED=1
status=0

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null \
  || echo "nvidia-smi not available"
if ! "$PY" -c "import torch, yaml, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
  echo "FAIL: $PY cannot import torch+yaml or sees no CUDA device; nothing was measured" >&2
  exit 3
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

echo "== model: bf16-mixed (what the pipeline trains with): base and big eager, big compiled; GPU self-checks"
# Hard stops (timeout) sum with the second part's to under 8 minutes; --budget-s makes the script itself skip
# variants that would start too late, so a slow torch.compile costs one row, not the whole report.
timeout --signal=INT --kill-after=10 290 "$PY" -u bench/model.py gpu --presets base,big --compile big \
  --batch 256 --budget-s 200 "$@" 2>&1 | tee "$LOG_DIR/gpu_bench_model.log"
rc=${PIPESTATUS[0]}
[ -f "${OUT:-/nonexistent}/gpu_bench.json" ] && mv "$OUT/gpu_bench.json" "$OUT/gpu_bench_mixed.json"
if [ "$rc" -ne 0 ]; then
  echo "model section (bf16-mixed) exited with $rc (124: timed out; 1: a check failed or a variant errored)" >&2
  status=$rc
fi

echo "== model: bf16-true (weights, norms and residual stream in bf16): big eager and compiled"
timeout --signal=INT --kill-after=10 160 "$PY" -u bench/model.py gpu --presets big --compile big \
  --batch 256 --precision bf16-true --budget-s 60 "$@" 2>&1 | tee "$LOG_DIR/gpu_bench_model_true.log"
rc=${PIPESTATUS[0]}
[ -f "${OUT:-/nonexistent}/gpu_bench.json" ] && mv "$OUT/gpu_bench.json" "$OUT/gpu_bench_true.json"
if [ "$rc" -ne 0 ]; then
  echo "model section (bf16-true) exited with $rc" >&2
  status=$rc
fi

echo "== training (issue 6): tpipe's LightningModule vs a plain PyTorch loop, base, bf16, one GPU (torch + Lightning, no Ray)"
timeout --signal=INT --kill-after=10 120 "$PY" -u bench/gpu_train.py --model base --steps 60 --warmup 10 \
  2>&1 | tee "$LOG_DIR/gpu_bench_train.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "training section exited with $rc" >&2
  status=$rc
fi

exit $status
