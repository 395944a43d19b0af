#!/usr/bin/env bash
# Forge's main job for a new user: train a model on a real corpus, then generate from it.
# Until the model presets land (issue #4) this is `forge demo`: a character-level transformer
# built from Forge's ops, trained with autograd on tinyshakespeare, then sampled.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/.."
"$build/forge" demo --data data/tinyshakespeare.txt --steps "${FORGE_DEMO_STEPS:-300}"
