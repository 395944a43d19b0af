#!/usr/bin/env bash
# Issue 4's training anchor, Forge and PyTorch one after the other on the same two cores
# (taskset -c 0,1), ROUNDS times, so a noisy host affects both alike; prints ms/iter per run.
#   bench/torch/anchor_alternating.sh FORGE_BIN DATA [STEPS] [ROUNDS]
set -euo pipefail
forge=${1:?forge binary}; data=${2:?tinyshakespeare.txt}; steps=${3:-300}; rounds=${4:-2}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
for r in $(seq "$rounds"); do
    rm -rf "$work/ckpt"
    f=$(taskset -c 0,1 "$forge" train --preset gpt2 --n-layer 4 --n-head 4 --n-embd 128 \
        --seq-len 64 --batch 12 --steps "$steps" --lr 1e-3 --min-lr 1e-4 --warmup 100 \
        --weight-decay 0.1 --beta2 0.99 --grad-clip 1.0 --dropout 0 --tokenizer char \
        --data "$data" --eval-every 0 --threads 2 --seed 1337 --out "$work/ckpt" 2>&1 |
        grep -E "step +$steps/" | grep -o '[0-9.]* ms/step')
    t=$(taskset -c 0,1 python3 "$here/nanogpt_cpu.py" --data "$data" --iters "$steps" --threads 2 | tail -1 |
        python3 -c 'import json,sys; print("%.1f ms/iter" % json.load(sys.stdin)["ms_per_iter_median"])')
    echo "round $r: forge $f | pytorch $t"
done
