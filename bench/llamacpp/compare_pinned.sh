#!/usr/bin/env bash
# Forge vs llama.cpp on a machine that has neither built (the GPU machine's CPU): `forge bench`
# and llama-bench on the same random-weight GGUFs, both pinned to the same cores with 2 threads,
# alternating per model, ROUNDS rounds; plus the read-bandwidth ceiling of those cores. Results
# go to one file (the device tool returns few files).
#   bench/llamacpp/compare_pinned.sh TOOLS_DIR FORGE OUT_FILE [ROUNDS] [CPUS]
# MODELS="llama-120m:f32 llama-320m:q8_0 ..." picks the (shape, type) pairs (default: six).
# TOOLS_DIR holds llama-bench with its libraries (see compare.sh's header for the build),
# quant_make_gguf and read_bw from Forge's build (bench/). Models are written under /tmp/gguf.
# LD_LIBRARY_PATH must already find forge's own shared libraries (OpenBLAS, ...) if they are
# not installed there; a run that prints no JSON shows its error line instead.
set -u
L=${1:?tools dir}; F=${2:?forge binary}; S=${3:?output file}; ROUNDS=${4:-2}; CPUS=${5:-0,1}
export LD_LIBRARY_PATH=$L:${LD_LIBRARY_PATH:-}
G=/tmp/gguf; mkdir -p $G
lscpu | grep -E "Model name|L3" >> "$S"
taskset -c "$CPUS" "$L/read_bw" 1 2 >> "$S"
MODELS=${MODELS:-llama-120m:q8_0 llama-120m:q4_0 llama-120m:f16 llama-320m:q8_0 llama-320m:q4_0 llama-120m:f32}
for m in $MODELS; do
    set -- ${m/:/ }; f=$G/$1-$2.gguf
    "$L/quant_make_gguf" "$1" "$2" "$f" > /dev/null 2>&1 || { echo "making $m failed" >> "$S"; continue; }
    for r in $(seq "$ROUNDS"); do
        fj=$(taskset -c "$CPUS" "$F" bench -m "$f" -t 2 -r 3 --json 2>&1 | tail -1)
        lj=$(taskset -c "$CPUS" "$L/llama-bench" -m "$f" -t 2 -r 3 -p 512 -n 128 -o json 2> /dev/null |
            python3 -c 'import json, statistics, sys
r = json.load(sys.stdin)
print(json.dumps({("pp512" if x["n_prompt"] > 0 else "tg128"): round(statistics.median(x["samples_ts"]), 1) for x in r}))')
        echo "$1 $2 round $r | forge $fj | llama $lj" >> "$S"
    done
    rm -f "$f"
done
cat "$S"
