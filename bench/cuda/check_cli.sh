#!/usr/bin/env bash
# `forge train` and `forge generate` with --device cuda against --device cpu on the GPU machine:
# the per-step losses of a short tiny-preset run (must agree to ~1e-4), then greedy generation
# from each run's checkpoint on each device, and `forge info` (CUDA memory lines).
# Usage (repo root, the FORGE_CUDA=ON `forge` binary in DIR, default .devcuda):
#   bench/cuda/check_cli.sh [DIR]
set -uo pipefail
DIR=${1:-.devcuda}
export LD_LIBRARY_PATH=".devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
TMP=$(mktemp -d)
for dev in cpu cuda; do
    "$DIR/forge" train --data data/tinyshakespeare.txt --preset tiny --steps 6 --batch 4 \
        --seq-len 64 --log-every 1 --eval-every 0 --eval-iters 2 --warmup 2 --threads 8 \
        --out "$TMP/$dev" --device $dev > "$TMP/$dev.log" 2>&1
    echo "train --device $dev exit: $?"
    grep -E "^device|cuda memory|done" "$TMP/$dev.log"
done
python3 - "$TMP/cpu.log" "$TMP/cuda.log" <<'PY'
import re, sys
def losses(p):
    return [float(m.group(1)) for m in re.finditer(r"loss[ =:]+([0-9.]+)", open(p).read())]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print("cpu  losses:", a)
print("cuda losses:", b)
d = max((abs(x - y) for x, y in zip(a, b)), default=float("nan"))
print(f"max |cpu - cuda| = {d:.2e} over {min(len(a), len(b))} values:",
      "OK" if a and len(a) == len(b) and d <= 2e-4 else "MISMATCH")  # printed to 4 decimals
PY
for dev in cpu cuda; do
    "$DIR/forge" generate -m "$TMP/cuda" -p "ROMEO:" -n 24 --temperature 0 --device $dev -q \
        > "$TMP/gen_$dev.txt" 2>&1
    echo "generate --device $dev exit: $?: $(head -c 200 "$TMP/gen_$dev.txt" | tr '\n' '|')"
done
cmp -s "$TMP/gen_cpu.txt" "$TMP/gen_cuda.txt" && echo "greedy text: same on cpu and cuda" ||
    echo "greedy text: differs"
"$DIR/forge" info --preset gpt2 | tail -2
CUDA_VISIBLE_DEVICES= "$DIR/forge" train --data data/tinyshakespeare.txt --steps 1 --device cuda \
    --out "$TMP/x" 2>&1 | tail -2
rm -rf "$TMP"
