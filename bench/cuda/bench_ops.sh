#!/usr/bin/env bash
# CUDA figures on the GPU machine: kernel GB/s and TFLOP/s with their measured ceilings, then the
# GPT-2 124M f32 training step in Forge and in PyTorch, side by side on the same GPU.
# Usage (repo root, FORGE_CUDA=ON binaries copied into DIR, default .devcuda):
#   bench/cuda/bench_ops.sh [DIR] [B] [T]
set -uo pipefail
DIR=${1:-.devcuda}
B=${2:-8}
T=${3:-1024}
HERE=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=".devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
"$DIR/cuda_bench" kernels
for mode in exact tf32; do
    "$DIR/cuda_bench" train "$B" "$T" "$mode"
    python3 "$HERE/torch_gpt2.py" "$B" "$T" "$mode" eager
done
