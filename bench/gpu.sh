#!/usr/bin/env bash
# bench/gpu.sh: the GPU benchmark, one prepared script that finishes in under 8 minutes.
#
# Model section (issue 5): bf16 training tokens/s and model FLOPs utilisation for the `base` and `big`
# presets (eager; `big` also under torch.compile), which SDPA kernel families ran (from the profiler),
# and two self-checks on the GPU (bf16 ≈ fp32 logits; KV-cached greedy decoding = recomputation).
# Exits non-zero if a check fails or a variant errors; every number is in the JSON last line, and in
# $OUT/gpu_bench.json when $OUT is set.
#
#   bash bench/gpu.sh                        # defaults: batch 128 x (128 + 128) tokens, V = 32768
#   bash bench/gpu.sh --batch 256            # extra arguments go to `bench/model.py gpu`
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

echo "== model: bf16 training throughput and MFU (base, big), attention kernels, GPU self-checks"
# 460 s hard stop; the script itself stops starting new variants after --budget-s (400 s).
timeout --signal=INT --kill-after=20 460 "$PY" -u bench/model.py gpu --presets base,big --compile big "$@" \
  2>&1 | tee "$LOG_DIR/gpu_bench_model.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "model section exited with $rc (124: timed out; 1: a check failed or a variant errored)" >&2
  status=$rc
fi

# (training section: appended by the pipeline, below this line)

exit $status
