#!/usr/bin/env bash
# CTest driver of the real-client tests (tests/CMakeLists.txt: serve_client):
#   run.sh <forge binary> <work folder>
# Installs the pinned openai package if node_modules is missing, trains a small byte-level
# model with `forge train`, then runs client_test.mjs against `forge serve`.
# Exit 77 (ctest SKIP_RETURN_CODE) with a message when node/npm or the npm registry is missing.
set -euo pipefail
forge=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)

skip() { echo "SKIP: $*"; exit 77; }
command -v node >/dev/null || skip "node is not installed (scripts/setup.sh installs nodejs)"
command -v npm >/dev/null || skip "npm is not installed (scripts/setup.sh installs npm)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || skip "node $node_major is too old (the openai client needs 18+)"

if [ ! -d "$here/node_modules/openai" ]; then
    echo "installing the openai client (npm ci) ..."
    (cd "$here" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) ||
        skip "npm ci failed: the npm registry is unreachable (see the npm error above)"
fi

mkdir -p "$work"
cd "$work"
if [ ! -f model/model.safetensors ]; then
    # Words the model can learn a little of in a few seconds; context 256 for chat prompts.
    node -e '
        const w = "the quick brown fox jumps over the lazy dog and runs to be or not".split(" ");
        let s = "", x = 7;
        for (let i = 0; i < 20000; ++i) { x = (x * 1103515245 + 12345) % 2147483648; s += w[x % w.length] + " "; }
        require("fs").writeFileSync("data.txt", s);'
    "$forge" train --data data.txt --tokenizer byte --preset tiny --n-ctx 256 --steps 60 \
        --batch 4 --seq-len 64 --eval-every 0 --eval-iters 1 --out model --log-every 30
fi
exec node "$here/client_test.mjs" "$forge" "$work/model"
