#!/usr/bin/env bash
# Issue 4's training anchor, Forge and PyTorch one after the other on the same two cores
# (taskset -c 0,1), ROUNDS times, so a noisy host affects both alike; prints ms/iter per run,
# f32 and bf16 autocast for both (bf16 rows are skipped where the CPU has no bf16 matmuls).
#   bench/torch/anchor_alternating.sh FORGE_BIN DATA [STEPS] [ROUNDS] [CPUS]
set -euo pipefail
forge=${1:?forge binary}; data=${2:?tinyshakespeare.txt}; steps=${3:-300}; rounds=${4:-2}
cpus=${5:-0,1}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
forge_run() { # dtype
    rm -rf "$work/ckpt"
    taskset -c "$cpus" "$forge" train --preset gpt2 --n-layer 4 --n-head 4 --n-embd 128 \
        --seq-len 64 --batch 12 --steps "$steps" --lr 1e-3 --min-lr 1e-4 --warmup 100 \
        --weight-decay 0.1 --beta2 0.99 --grad-clip 1.0 --dropout 0 --tokenizer char \
        --data "$data" --eval-every 0 --threads 2 --seed 1337 --out "$work/ckpt" --dtype "$1" 2>&1 |
        grep -E "step +$steps/" | grep -o '[0-9.]* ms/step' || echo "failed"
}
torch_run() { # extra flags
    taskset -c "$cpus" python3 "$here/nanogpt_cpu.py" --data "$data" --iters "$steps" --threads 2 "$@" |
        tail -1 | python3 -c 'import json,sys; print("%.1f ms/iter" % json.load(sys.stdin)["ms_per_iter_median"])'
}
for r in $(seq "$rounds"); do
    echo "round $r: forge f32 $(forge_run f32) | forge bf16 $(forge_run bf16) |" \
         "pytorch f32 $(torch_run) | pytorch bf16 $(torch_run --bf16)"
done
