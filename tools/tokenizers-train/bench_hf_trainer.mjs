// Times HF tokenizers' BPE trainer (Rust core via the `tokenizers` addon) beside
// `forge tokenizer train` on the same files with the same work: the addon's default trainer
// (vocab 30000, min frequency 0, alphabet = bytes seen, line by line), which Forge runs with
// `--vocab-size 30000 --min-frequency 0 --seen-bytes-only`. Prints the median of 5 runs each.
//
//   node bench_hf_trainer.mjs --forge ../../build/forge [--data ../../../shared/data]
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import rust from "tokenizers";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? args[args.indexOf(name) + 1] : dflt);
const forge = path.resolve(opt("--forge", path.join(repo, "build/forge")));
const dataDir = path.resolve(opt("--data", path.join(repo, "../shared/data")));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "forge-bpe-bench-"));
const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];

for (const file of ["tinyshakespeare.txt", "mixed.txt"]) {
    const data = path.join(dataDir, file);
    const mb = fs.statSync(data).size / 1e6;
    const hf = [], fg = [];
    for (let i = 0; i < 5; ++i) {
        const t = new rust.Tokenizer(rust.BPE.empty());
        t.setPreTokenizer(rust.byteLevelPreTokenizer(false, true));
        let t0 = process.hrtime.bigint();
        t.train([data]);
        hf.push(Number(process.hrtime.bigint() - t0) / 1e9);
        t0 = process.hrtime.bigint();
        execFileSync(forge, ["tokenizer", "train", "--data", data, "--vocab-size", "30000",
                             "--min-frequency", "0", "--seen-bytes-only", "--quiet",
                             "--out", path.join(tmp, "t.json")]);
        fg.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    const h = median(hf), f = median(fg);
    console.log(`${file} (${mb.toFixed(2)} MB, vocab 30000): HF tokenizers ${h.toFixed(3)} s ` +
                `(${(mb / h).toFixed(1)} MB/s), forge ${f.toFixed(3)} s incl. process start ` +
                `(${(mb / f).toFixed(1)} MB/s), ${(h / f).toFixed(1)}x`);
}
fs.rmSync(tmp, { recursive: true, force: true });
