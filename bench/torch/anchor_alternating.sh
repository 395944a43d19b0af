#!/usr/bin/env bash
# Issue 4's training anchor, Forge and PyTorch one after the other on the same two cores
# (taskset -c CPUS), ROUNDS times, so a noisy host affects both alike. Prints the median ms per
# step of each run (steps 11..STEPS for both): Forge f32 with its batch split (the default),
# Forge f32 with --batch-split off, PyTorch f32 eager; with BF16=1 also both under bf16 autocast
# (where the CPU has bf16 matmuls).
#   bench/torch/anchor_alternating.sh FORGE_BIN DATA [STEPS] [ROUNDS] [CPUS]
set -euo pipefail
forge=${1:?forge binary}; data=${2:?tinyshakespeare.txt}; steps=${3:-300}; rounds=${4:-2}
cpus=${5:-0,1}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
forge_run() { # extra flags
    rm -rf "$work/ckpt"
    taskset -c "$cpus" "$forge" train --preset gpt2 --n-layer 4 --n-head 4 --n-embd 128 \
        --seq-len 64 --batch 12 --steps "$steps" --lr 1e-3 --min-lr 1e-4 --warmup 100 \
        --weight-decay 0.1 --beta2 0.99 --grad-clip 1.0 --dropout 0 --tokenizer char \
        --data "$data" --eval-every 0 --threads 2 --seed 1337 --out "$work/ckpt" --log-every 1 \
        "$@" 2>&1 | grep -o 'step *[0-9]*/.* [0-9.]* ms/step' |
        awk '{split($2, s, "/"); if (s[1] > 10) print $(NF-1)}' | sort -g |
        awk '{v[NR] = $1} END {if (NR) printf "%.1f ms", v[int((NR + 1) / 2)]; else print "failed"}'
}
torch_run() { # extra flags
    taskset -c "$cpus" python3 "$here/nanogpt_cpu.py" --data "$data" --iters "$steps" --threads 2 "$@" |
        tail -1 | python3 -c 'import json,sys; print("%.1f ms" % json.load(sys.stdin)["ms_per_iter_median"])'
}
for r in $(seq "$rounds"); do
    line="round $r: forge f32 $(forge_run) | forge f32 split off $(forge_run --batch-split off) |"
    line="$line pytorch f32 $(torch_run)"
    [ "${BF16:-0}" = 1 ] && line="$line | forge bf16 $(forge_run --dtype bf16) | pytorch bf16 $(torch_run --bf16)"
    echo "$line"
done
