#!/usr/bin/env bash
# Installs every Debian package Forge's build, tests and benchmarks need. Idempotent: a package
# already present is skipped, so a second run does no network work at all.
set -euo pipefail

packages=(
    build-essential cmake ninja-build pkg-config git
    libopenblas-dev libgtest-dev libgmock-dev libbenchmark-dev
    nlohmann-json3-dev libpcre2-dev libutf8proc-dev libsentencepiece-dev libcli11-dev
    libcpp-httplib-dev libonnx-dev libprotobuf-dev
    clang libclang-rt-14-dev
    python3 python3-numpy python3-yaml   # yaml: llama.cpp's gguf-py (tests/formats_interop)
    chromium   # serve_browser: the chat page in headless chromium (~115 MB download, ~20 s)
)
# Node.js runs the reference tokenizers and HTTP clients in tests; Debian 12's own is fine.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup: all ${#packages[@]} packages present"
    exit 0
fi
echo "setup: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
