#!/usr/bin/env bash
# CUDA figures on the GPU machine: kernel GB/s and TFLOP/s with their measured ceilings, flash
# attention (exact f32 and bf16 tensor cores) against PyTorch's flash SDPA, then the
# GPT-2 124M training step (f32 weights; f32, TF32 and bf16-autocast compute) in Forge and in
# PyTorch (eager, and torch.compile for bf16), side by side on the same GPU.
# Usage (repo root, FORGE_CUDA=ON binaries copied into DIR, default .devcuda):
#   bench/cuda/bench_ops.sh [DIR] [B] [T]
set -uo pipefail
DIR=${1:-.devcuda}
B=${2:-8}
T=${3:-1024}
HERE=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=".devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
"$DIR/cuda_bench" kernels attn
python3 "$HERE/torch_attn.py"
for mode in f32 tf32 bf16; do
    "$DIR/cuda_bench" train "$B" "$T" "$mode"
    python3 "$HERE/torch_gpt2.py" "$B" "$T" "${mode/f32/exact}" eager
done
python3 "$HERE/torch_gpt2.py" "$B" "$T" bf16 compile
