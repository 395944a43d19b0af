# Shell shared by the node-driven `forge serve` tests (serve-client/run.sh, serve-browser/run.sh);
# sourced, not run. Not here: the checks themselves (the .mjs scripts).

# Exit 77 (ctest SKIP_RETURN_CODE) with a message.
skip() { echo "SKIP: $*"; exit 77; }

# node >= 18 and npm, else skip.
need_node() {
    command -v node >/dev/null || skip "node is not installed (scripts/setup.sh installs nodejs)"
    command -v npm >/dev/null || skip "npm is not installed (scripts/setup.sh installs npm)"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 18 ] || skip "node $major is too old (the tests need 18+)"
}

# npm_install DIR PACKAGE: `npm ci` in DIR (its package-lock.json pins PACKAGE) if
# DIR/node_modules/PACKAGE is missing; skip if the registry cannot be reached.
npm_install() {
    [ -d "$1/node_modules/$2" ] && return 0
    echo "installing $2 (npm ci) ..."
    (cd "$1" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) ||
        skip "npm ci failed: the npm registry is unreachable (see the npm error above)"
}

# train_tiny_model FORGE WORK: WORK/model, a small byte-level model `forge train` makes in a few
# seconds from a corpus of a few words (context 256 for chat prompts); kept if already there.
train_tiny_model() {
    mkdir -p "$2"
    [ -f "$2/model/model.safetensors" ] && return 0
    (cd "$2" &&
        node -e '
            const w = "the quick brown fox jumps over the lazy dog and runs to be or not".split(" ");
            let s = "", x = 7;
            for (let i = 0; i < 20000; ++i) { x = (x * 1103515245 + 12345) % 2147483648; s += w[x % w.length] + " "; }
            require("fs").writeFileSync("data.txt", s);' &&
        "$1" train --data data.txt --tokenizer byte --preset tiny --n-ctx 256 --steps 60 \
            --batch 4 --seq-len 64 --eval-every 0 --eval-iters 1 --out model --log-every 30)
}
