#!/usr/bin/env bash
# Side by side on this machine: `forge bench` against llama.cpp's llama-bench on the same GGUF
# files (random-weight Llama shapes written by quant_make_gguf, every matrix in one type), pp512
# and tg128 tokens/s (median of --reps runs each), peak RSS of each process, and the ratio.
# Runs alternate forge / llama.cpp per (model, threads) so load from other work hits both alike.
#
# llama-bench: node-llama-cpp 3.21.1 ships llama.cpp's source as a git bundle; build it under
# /tmp (measurement only, never committed):
#   mkdir -p /tmp/llcpp && cd /tmp/llcpp && npm i -E node-llama-cpp@3.21.1
#   git clone node_modules/node-llama-cpp/llama/gitRelease.bundle /tmp/llama-src
#   cmake -S /tmp/llama-src -B /tmp/llama-src/build -G Ninja -DCMAKE_BUILD_TYPE=Release \
#     -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build /tmp/llama-src/build --target llama-bench
#
# Usage: bench/llamacpp/compare.sh [-t "1 2"] [-r 5] [-s "llama-120m llama-320m"]
#        [-q "f32 f16 q8_0 q4_0"] [-d /tmp/gguf] [-b BUILD_DIR] [-l LLAMA_BENCH]
set -euo pipefail
THREADS="1 2"; REPS=5; SHAPES="llama-120m llama-320m"; TYPES="f32 f16 q8_0 q4_0"
DIR=/tmp/gguf; BUILD=build; LLAMA_BENCH=${LLAMA_BENCH:-/tmp/llama-src/build/bin/llama-bench}
while getopts "t:r:s:q:d:b:l:" o; do
    case $o in
    t) THREADS=$OPTARG ;; r) REPS=$OPTARG ;; s) SHAPES=$OPTARG ;; q) TYPES=$OPTARG ;;
    d) DIR=$OPTARG ;; b) BUILD=$OPTARG ;; l) LLAMA_BENCH=$OPTARG ;;
    *) sed -n 2,16p "$0"; exit 2 ;;
    esac
done
FORGE=$BUILD/forge; MAKE_GGUF=$BUILD/bench/quant_make_gguf
[ -x "$FORGE" ] && [ -x "$MAKE_GGUF" ] || { echo "build forge_cli and quant_make_gguf first" >&2; exit 1; }
[ -x "$LLAMA_BENCH" ] || { echo "no llama-bench at $LLAMA_BENCH (see the header)" >&2; exit 1; }
mkdir -p "$DIR"
ROOT=$(mktemp -d); OUT=$ROOT/run; mkdir -p "$OUT"
printf "%-11s %-5s %3s | %9s %9s %6s | %9s %9s %6s | %8s %8s\n" shape type thr \
    "forge pp" "llama pp" ratio "forge tg" "llama tg" ratio "forge MB" "llama MB"
for s in $SHAPES; do
    for q in $TYPES; do
        f=$DIR/$s-$q.gguf
        [ -f "$f" ] || "$MAKE_GGUF" "$s" "$q" "$f"
        for t in $THREADS; do
            /usr/bin/time -f %M -o "$OUT/fmem" "$FORGE" bench -m "$f" -t "$t" -r "$REPS" --json > "$OUT/f.json"
            /usr/bin/time -f %M -o "$OUT/lmem" "$LLAMA_BENCH" -m "$f" -t "$t" -r "$REPS" -p 512 -n 128 \
                -o json > "$OUT/l.json" 2> /dev/null
            python3 - "$s" "$q" "$t" "$OUT" <<'PY'
import json, statistics, sys
s, q, t, out = sys.argv[1:5]
f = json.load(open(out + "/f.json"))
l = {}
for r in json.load(open(out + "/l.json")):
    key = "pp512" if r["n_prompt"] > 0 else "tg128"
    l[key] = statistics.median(r["samples_ts"])
fm = int(open(out + "/fmem").read().split()[-1]) / 1024
lm = int(open(out + "/lmem").read().split()[-1]) / 1024
print(f"{s:11} {q:5} {t:>3} | {f['pp512']:9.1f} {l['pp512']:9.1f} {f['pp512']/l['pp512']:5.2f}x |"
      f" {f['tg128']:9.1f} {l['tg128']:9.1f} {f['tg128']/l['tg128']:5.2f}x | {fm:8.0f} {lm:8.0f}")
with open(out + "/../compare_rows.jsonl", "a") as fh:
    fh.write(json.dumps({"shape": s, "type": q, "threads": int(t), "forge": f, "llama": l,
                         "forge_mb": fm, "llama_mb": lm}) + "\n")
PY
        done
    done
done
# Summary: forge at the most threads against llama.cpp's best thread count (its prebuilt and
# self-built binaries can collapse at 2 threads on a busy 2-core VM: best-of is the fair peer).
python3 - "$ROOT/compare_rows.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\nforge at the most threads vs llama.cpp at its best thread count")
print(f"{'shape':11} {'type':5} | {'pp ratio':>8} {'tg ratio':>8} | {'mem ratio':>9}")
for key in sorted({(r["shape"], r["type"]) for r in rows}, key=lambda k: (k[0], k[1])):
    rs = [r for r in rows if (r["shape"], r["type"]) == key]
    f = max(rs, key=lambda r: r["threads"])
    lpp = max(r["llama"]["pp512"] for r in rs)
    ltg = max(r["llama"]["tg128"] for r in rs)
    print(f"{key[0]:11} {key[1]:5} | {f['forge']['pp512']/lpp:7.2f}x {f['forge']['tg128']/ltg:7.2f}x |"
          f" {f['forge_mb']/f['llama_mb']:8.2f}x")
PY
rm -rf "$ROOT"
