#!/usr/bin/env bash
# Issue 4's training anchor, Forge and PyTorch side by side on one host's CPU, 2 threads each on
# their own cores (taskset), at the same time so both see the same machine state.
#   bench/torch/anchor_side_by_side.sh FORGE_BIN DATA [STEPS]
# Prints Forge's last progress/eval lines and the PyTorch script's JSON line.
set -euo pipefail
forge=${1:?forge binary}; data=${2:?tinyshakespeare.txt}; steps=${3:-2000}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
taskset -c 0,1 "$forge" train --preset gpt2 --n-layer 4 --n-head 4 --n-embd 128 --seq-len 64 \
    --batch 12 --steps "$steps" --lr 1e-3 --min-lr 1e-4 --warmup 100 --weight-decay 0.1 \
    --beta2 0.99 --grad-clip 1.0 --dropout 0 --tokenizer char --data "$data" --eval-every 500 \
    --threads 2 --seed 1337 --out "$work/ckpt" --metrics-out "$work/metrics.jsonl" \
    > "$work/forge.log" 2>&1 &
taskset -c 2,3 python3 "$here/nanogpt_cpu.py" --data "$data" --iters "$steps" --threads 2 \
    > "$work/torch.log" 2>&1 &
wait
echo "== forge"; grep -E "eval step|step +$steps/" "$work/forge.log" | tail -3
echo "== pytorch"; tail -1 "$work/torch.log"
