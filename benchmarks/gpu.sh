#!/usr/bin/env bash
# CPU against GPU learners: training env steps/s of MAPPO on simple_spread, SMAX
# (smacv2_5_units) and VMAS (balance), the Learner on the CPU and on one GPU, everything else
# alike (benchmarks/gpu_learners.py says how). Prints one JSON line as its last stdout line.
#
# On a GPU machine (16 cores, one H200) it fits in 8 minutes: the runs share a 420 s budget
# and the last one starts no later than 45 s before it ends. Without a CUDA device it runs the
# CPU learners only (2 timed iterations each, a couple of minutes) and says the GPU part was
# skipped.
#
#   bash benchmarks/gpu.sh [extra args for gpu_learners.py, e.g. --iterations 3]
#   PYTHON=/path/to/python bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

# SMAX (JAX) simulates on the CPU in both runs, and must not take the GPU's memory.
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: CUDA device found: CPU and GPU learners" >&2
else
    echo "gpu.sh: no CUDA device on this machine: the GPU part is skipped; CPU learners only" >&2
fi
exec timeout 470 "$PYTHON" benchmarks/gpu_learners.py "$@"
