#!/usr/bin/env bash
# Runs the CUDA tests on the GPU machine, then compute-sanitizer (memcheck, racecheck) on a
# subset. Usage (from the repo root, with the binaries of a FORGE_CUDA=ON build copied into
# DIR, default .devcuda): bench/cuda/run_tests.sh [DIR]. Logs go to $OUT when it is set.
set -uo pipefail
DIR=${1:-.devcuda}
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=".devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$DIR/cuda_test" 2>&1 | tee "$OUT/cuda_test.log" | grep -E "^\[  (PASSED|FAILED) |FAILED|SKIPPED|Failure|error|differs" | head -80
echo "cuda_test exit: ${PIPESTATUS[0]}"
SAN=/usr/local/cuda/bin/compute-sanitizer
FILTER='CudaNN.*:CudaElementwise.*:CudaReduce.*:CudaCopy.StridedAndCastingCopies:CudaAttention.*:CudaOptimizer.*'
for tool in memcheck racecheck; do
    timeout 100 $SAN --tool $tool --error-exitcode 9 "$DIR/cuda_test" --gtest_filter="$FILTER" \
        > "$OUT/sanitizer_$tool.log" 2>&1
    echo "compute-sanitizer $tool exit: $? ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -1))"
done
