#!/usr/bin/env bash
# CTest driver of the browser test of the chat page (tests/CMakeLists.txt: serve_browser):
#   run.sh <forge binary> <work folder>
# Installs the pinned playwright-core if node_modules is missing, trains the same small model as
# serve-client, starts `forge serve` on a free loopback port, runs browser_test.mjs in Debian's
# headless chromium against it, then stops the server with SIGTERM (it must exit 0).
# Exit 77 (ctest SKIP_RETURN_CODE) with a message when chromium, node/npm or the registry is
# missing.
set -euo pipefail
forge=$1
work=$2
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../serve-client/common.sh"

[ -x /usr/bin/chromium ] || skip "/usr/bin/chromium is missing (scripts/setup.sh installs chromium)"
need_node
[ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || skip "playwright-core needs node 20+"
npm_install "$here" playwright-core
train_tiny_model "$forge" "$work"

key=sk-browser-test
"$forge" serve --model "$work/model" --name tiny-chat --port 0 --api-key "$key" --slots 2 \
    --drain 5 --quiet >"$work/serve.out" 2>"$work/serve.err" &
pid=$!
stop_server() {
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null && echo "FAIL: forge serve ignored SIGTERM for 10 s"
    return 0
}
trap stop_server EXIT

url=""
for _ in $(seq 600); do   # 60 s for the bind and the load
    kill -0 "$pid" 2>/dev/null || { cat "$work/serve.err"; echo "FAIL: forge serve exited early"; exit 1; }
    if grep -q "ready" "$work/serve.out"; then
        url=$(grep -o 'http://[^ ]*' "$work/serve.out" | head -1)
        break
    fi
    sleep 0.1
done
[ -n "$url" ] || { cat "$work/serve.out" "$work/serve.err"; echo "FAIL: no 'ready' in 60 s"; exit 1; }
echo "forge serve at $url"

rc=0
timeout 240 node "$here/browser_test.mjs" "$url" "$key" || rc=$?
trap - EXIT
stop_server
wait "$pid" || { echo "FAIL: forge serve exited with $? after SIGTERM"; rc=1; }
exit "$rc"
