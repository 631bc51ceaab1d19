#!/usr/bin/env bash
# The one prepared GPU check (issue 24): on a machine with an NVIDIA GPU and this
# repository's .venv (scripts/setup.sh, run beforehand), install TensorRT from PyPI, train on
# CUDA on the digits and the photos, build TensorRT fp16 and int8 engines, measure them and
# write benchmarks/reports/gpu-DATE.md. At most 8 minutes: each step has its own limit.
#
#   benchmarks/gpu_check.sh             # the check
#   benchmarks/gpu_check.sh --dry-run   # the plumbing on the CPU, no TensorRT
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
if [[ "${1:-}" != "--dry-run" ]]; then
    timeout 30 nvidia-smi -L || { echo "gpu_check: no NVIDIA GPU here (nvidia-smi failed)"; exit 1; }
    # TensorRT's wheels (tensorrt 10 on cu12, 11 on cu13); the newest the index offers.
    timeout 150 "$python" -m pip install -q --disable-pip-version-check tensorrt
fi
exec timeout 300 nice -n 5 "$python" benchmarks/gpu_check.py "$@"
