#!/usr/bin/env bash
# GPT-2 124M shapes (byte tokenizer, so a 256-token vocabulary) trained from scratch on
# tinyshakespeare with `forge train --device cuda`, once per --dtype (f32, bf16): the loss curves
# side by side, with each run's tokens/s (its last progress line) and peak memory.
# Usage (repo root, the FORGE_CUDA=ON `forge` binary in DIR): bench/cuda/bf16_curve.sh [DIR] [STEPS]
set -uo pipefail
DIR=${1:-.devcuda}
STEPS=${2:-50}
export LD_LIBRARY_PATH=".devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
TMP=$(mktemp -d)
for dt in f32 bf16; do
    "$DIR/forge" train --data data/tinyshakespeare.txt --preset gpt2 --tokenizer byte \
        --steps "$STEPS" --batch 8 --seq-len 1024 --lr 6e-4 --warmup 10 --log-every 5 \
        --eval-every 0 --eval-iters 2 --device cuda --dtype "$dt" --out "$TMP/$dt" \
        > "$TMP/$dt.log" 2>&1
    echo "--dtype $dt exit $?: $(grep -E '^step' "$TMP/$dt.log" | tail -1)"
    grep -E "cuda memory|done" "$TMP/$dt.log"
done
python3 - "$TMP/f32.log" "$TMP/bf16.log" <<'PY'
import re, sys
def curve(p):
    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"step +(\d+)/\d+ \| loss ([0-9.]+)", open(p).read())}
a, b = curve(sys.argv[1]), curve(sys.argv[2])
print("step   f32 loss  bf16 loss  bf16 - f32")
for s in sorted(a):
    if s in b:
        print(f"{s:4d}  {a[s]:9.4f}  {b[s]:9.4f}  {b[s] - a[s]:+9.4f}")
PY
rm -rf "$TMP"
