#!/usr/bin/env bash
# Runs every benchmark binary in the build folder; figures go to docs/PERF.md by hand, with the
# machine they came from.
set -euo pipefail
build=${1:-build}
for b in "$build"/bench/*_bench; do
    echo "== $b"
    "$b" --benchmark_min_time=0.2 --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
done
