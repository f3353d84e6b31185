#!/usr/bin/env bash
# The GPU figures in one command, on a machine with an NVIDIA GPU (README, "GPU"):
#
#   benchmarks/gpu.sh            # about 10-20 min; writes benchmarks/results/gpu-latest.json
#   benchmarks/gpu.sh --quick    # a 4k slide end to end instead of 10k, fewer worker counts
#
# Needs the project's .venv with TensorFlow's CUDA build (`make` installs it when nvidia-smi
# answers; by hand: .venv/bin/pip uninstall -y tensorflow-cpu &&
# .venv/bin/pip install "tensorflow[and-cuda]>=2.15") and the shared data
# ($HCCBIO_SHARED_DATA, default ../shared/data). Measures, side by side: TensorFlow on the GPU
# and OpenVINO on the CPU (when installed): the network alone and the pipeline with 1, 4, 8 and
# 16 tiles per forward pass, nuclei/s, s per mm^2, one worker's peak memory, tile throughput
# with several workers sharing the GPU, and a whole slide end to end with 1, 2, 4, ... workers
# (one per core at most) sharing the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
    echo "benchmarks/gpu.sh: no NVIDIA GPU here (nvidia-smi does not answer)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! TF_CPP_MIN_LOG_LEVEL=2 "$PY" -c "import sys, tensorflow as tf; sys.exit(not tf.config.list_physical_devices('GPU'))"; then
    echo "benchmarks/gpu.sh: TensorFlow does not see the GPU; install its CUDA build:" >&2
    echo "  $PY -m pip uninstall -y tensorflow-cpu && $PY -m pip install 'tensorflow[and-cuda]>=2.15'" >&2
    exit 2
fi

cores=$(nproc)
slide=10240
counts=(1 2 4 8 16 32)
if [ "${1:-}" = "--quick" ]; then
    slide=4096
    counts=(1 4 16)
fi
workers=()
for n in "${counts[@]}"; do
    if [ "$n" -le "$cores" ]; then workers+=("$n"); fi
done

# The worker figures use the first tiles-per-forward value (4).
exec "$PY" -m benchmarks.backends --tile 512 --slide "$slide" \
    --tiles-per-forward 4 1 8 16 --workers "${workers[@]}" \
    --end-to-end-workers "${workers[@]}" \
    --out benchmarks/results/gpu-latest.json
