#!/usr/bin/env bash
# Forge's main job for a new user: train the `tiny` preset on a real English corpus (the
# committed data/tinyshakespeare.txt, 1.1 MB) for a few minutes on 2 cores, save it, then
# generate a sample from the saved folder. FORGE_QUICKSTART_STEPS shortens or lengthens the run.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/.."
out=runs/quickstart
steps=${FORGE_QUICKSTART_STEPS:-1000}

# Character-level model with nanoGPT's shakespeare_char recipe (warmup + cosine, AdamW beta2
# 0.99, weight decay 0.1, clipping 1.0) on tiny's full 256-character context (so the sample can
# be 200 characters long); eval every 250 steps on the held-out last 10%.
"$build/forge" train --preset tiny --data data/tinyshakespeare.txt --tokenizer char \
    --steps "$steps" --batch 8 --seq-len 256 --lr 1e-3 --min-lr 1e-4 --warmup 100 \
    --weight-decay 0.1 --beta2 0.99 --grad-clip 1.0 --eval-every 250 --threads 2 --seed 1337 \
    --out "$out" --metrics-out "$out/metrics.jsonl"

echo "---- sample from $out ----"
"$build/forge" generate --model "$out" --prompt "ROMEO:" --max-tokens 200 --temperature 0.8 \
    --seed 1337
