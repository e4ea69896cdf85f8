#!/usr/bin/env bash
# Rewrite deploy/docker/constraints.txt from the dev virtualenv (.venv): every installed
# distribution pinned with ==, minus the project itself and torch (the Dockerfiles pin torch,
# whose CPU and CUDA builds live on different indexes). Run from the repository root.
set -euo pipefail
python="${PYTHON:-.venv/bin/python}"
out=deploy/docker/constraints.txt
{
  echo "# Versions the tpipe images install: the dev environment's resolved set, so an image runs what the"
  echo "# tests ran. torch is pinned in the Dockerfiles (its CPU and CUDA builds come from different indexes)."
  echo "# Regenerate after a dependency change: bash deploy/docker/freeze-constraints.sh"
  "$python" -m pip freeze --exclude-editable --exclude transformer-pipeline --exclude torch \
    | grep -E '^[A-Za-z0-9_.-]+==' | LC_ALL=C sort -f
} > "$out"
echo "wrote $out ($(grep -c '==' "$out") pins)"
