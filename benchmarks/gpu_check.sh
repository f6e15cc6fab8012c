#!/usr/bin/env bash
# One command on a lent GPU machine (issue 24): writes benchmarks/records/gpu_check.json in under 5 minutes.
# Extra arguments go to benchmarks/gpu_check.py (e.g. --cuda-graphs, --data-root DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi: CPU smoke run"
exec timeout 290 "$PY" benchmarks/gpu_check.py "$@"
