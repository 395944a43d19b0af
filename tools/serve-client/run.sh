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
source "$here/common.sh"

need_node
npm_install "$here" openai
train_tiny_model "$forge" "$work"
exec node "$here/client_test.mjs" "$forge" "$work/model"
