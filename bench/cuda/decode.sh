#!/usr/bin/env bash
# Batch-1 GPT-2 124M generation on the GPU, Forge and PyTorch side by side in one call:
# `forge bench --device cuda` (CudaLM: bf16 weights, the decode step as one persistent kernel in
# a CUDA graph, or with --per-op as kernels per op; prefill through the ops in bf16) against
# bench/cuda/torch_decode.py (the same shapes in bf16, static KV cache, the step in a CUDA graph),
# plus the device copy bandwidth (the ceiling of the weight read).
# Usage (repo root, the FORGE_CUDA=ON `forge` binary and torch_decode.py in DIR, default .devdec):
#   bench/cuda/decode.sh [DIR] [--compile]   (--compile: also PyTorch with torch.compile in a CUDA graph)
set -uo pipefail
DIR=${1:-.devdec}
COMPILE=${2:-}
export LD_LIBRARY_PATH=".devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "== forge (one persistent kernel a step, graph)"
"$DIR/forge" bench --device cuda --shape gpt2 --pp 512 1024 --tg 128 --reps 5
echo "== forge (kernels per op, graph)"
"$DIR/forge" bench --device cuda --shape gpt2 --pp 0 --tg 128 --reps 5 --per-op
echo "== forge (eager launches)"
"$DIR/forge" bench --device cuda --shape gpt2 --pp 0 --tg 128 --reps 3 --eager
echo "== forge, 1000 tokens (attention over up to 1000 cached positions)"
"$DIR/forge" bench --device cuda --shape gpt2 --pp 0 --tg 1000 --reps 3
echo "== pytorch"
PYTHONUNBUFFERED=1 python3 "$DIR/torch_decode.py" --tg 128 --cap 128 --pp 512 1024 $COMPILE
