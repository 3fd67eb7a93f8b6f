#!/usr/bin/env bash
# The GPU check, at most 8 minutes in all: the gpu-marked tests, the batch-size probe, the attack's cost
# ratio, cuDNN against native kernels, a training epoch at 26,000 samples and the full-scale attack
# (37,832 samples × 1,000 iterations). Writes one JSON ($OUT/gpu.json when OUT is set, else
# bench/results/gpu.json) and prints one table. See bench/bench_gpu.py for what each part measures.
#
#   bench/gpu_check.sh                       # on the CUDA device
#   bench/gpu_check.sh --device cpu --quick  # the same steps at small sizes on a CPU (about a minute)
#
# Needs Python with torch, numpy, attrs, pytest and hypothesis; nothing else (no network, no cattrs,
# optuna, database or report packages). PYTHON picks the interpreter (default: python3, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-$(command -v python3 || command -v python)}"
# SIGINT at the limit lets the script write what it measured before it stops.
exec timeout --signal=INT --kill-after=20 480 "$python" bench/bench_gpu.py "$@"
