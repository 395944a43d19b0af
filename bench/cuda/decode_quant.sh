#!/usr/bin/env bash
# GGUF Q8_0 / Q4_0 weights on the GPU, in one call: the decode GEMVs' GB/s against the device copy
# (cuda_gemv_bench: bf16, and Q8_0 / Q4_0 as the file's blocks and split into values | scales,
# each with f32 and int8/dp4a dot products; GPT-2 and Llama 8B shapes), then batch-1 decoding of
# GPT-2 124M-shaped and llama-320m-shaped random models (`forge bench --device cuda --shape ...
# --type ...`) with bf16, Q8_0 and Q4_0 matrices: the step as one persistent kernel, as kernels
# per op, and with f32 dot products (per op).
# Usage (repo root, the FORGE_CUDA=ON `forge` and `cuda_gemv_bench` binaries in DIR, default
# .devcudaq; the non-system shared libraries unpacked in .devlibs):
#   bench/cuda/decode_quant.sh [DIR]
set -uo pipefail
DIR=${1:-.devcudaq}
export LD_LIBRARY_PATH=".devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "== decode GEMVs (DRAM: >= 1 GiB of matrix copies cycled; 100 calls per CUDA graph)"
"$DIR/cuda_gemv_bench"
for t in bf16 q8_0 q4_0; do
    echo "== forge bench, GPT-2 124M shape, $t matrices"
    "$DIR/forge" bench --device cuda --shape gpt2 --type $t --pp 128 --tg 128 --reps 3
done
for t in bf16 q8_0 q4_0; do
    echo "== forge bench, GPT-2 124M shape, $t matrices, kernels per op"
    "$DIR/forge" bench --device cuda --shape gpt2 --type $t --per-op --pp 0 --tg 128 --reps 3
done
for t in q8_0 q4_0; do
    echo "== forge bench, GPT-2 124M shape, $t matrices, f32 dot products (kernels per op)"
    "$DIR/forge" bench --device cuda --shape gpt2 --type $t --f32-dot --pp 0 --tg 128 --reps 3
done
for t in bf16 q8_0 q4_0; do
    echo "== forge bench, llama-320m shape (vocab 32000, untied head), $t matrices"
    "$DIR/forge" bench --device cuda --shape llama-320m --type $t --pp 0 --tg 128 --reps 3
done
