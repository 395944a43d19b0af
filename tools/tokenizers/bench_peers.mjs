// Side-by-side single-thread encode throughput: Forge (bench/tokenizers) and its peers, on
// ../shared/data/tinyshakespeare.txt and mixed.txt, all in one run on one machine.
//   node bench_peers.mjs [path/to/tokenizers_bench]   (default: ../../build/bench/tokenizers_bench)
// Peers: tiktoken (WASM), tiktoken-node and @anysphere/tiktoken-node (tiktoken's Rust core as
// native addons), tokenizers (HF's Rust core, native) for the tokenizer.json path.
import fs from "node:fs";
import path from "node:path";
import os from "node:os";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { get_encoding } from "tiktoken";
import hf from "tokenizers";

const require = createRequire(import.meta.url);
const tiktokenNode = require("tiktoken-node");
const anysphere = require("@anysphere/tiktoken-node");

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const shared = process.env.FORGE_SHARED_DATA || path.resolve(root, "../shared/data");
const forgeBench = process.argv[2] || path.join(root, "build/bench/tokenizers_bench");
const FILES = ["tinyshakespeare.txt", "mixed.txt"];
const texts = Object.fromEntries(FILES.map((f) => [f, fs.readFileSync(path.join(shared, f), "utf8")]));
const bytes = Object.fromEntries(FILES.map((f) => [f, Buffer.byteLength(texts[f])]));
const MIN_SECONDS = Number(process.env.BENCH_SECONDS || 1.5);

// Process CPU time (all threads), so a busy machine does not skew the comparison; Forge's
// bytes_per_second is CPU time too (Google Benchmark's default).
function cpuMs(since) {
  const d = process.cpuUsage(since);
  return (d.user + d.system) / 1000;
}

async function measure(fn, text) {
  let n = await fn(text); // warm-up (and the token count)
  const times = [];
  const t0 = performance.now();
  while (times.length < 3 || (performance.now() - t0) / 1000 < MIN_SECONDS) {
    const t = process.cpuUsage();
    n = await fn(text);
    times.push(cpuMs(t));
  }
  times.sort((a, b) => a - b);
  return { ms: times[Math.floor(times.length / 2)], tokens: n };
}

const results = []; // {vocab, file, impl, mbps, tokens}
async function run(vocab, impl, fn) {
  for (const f of FILES) {
    const { ms, tokens } = await measure(fn, texts[f]);
    const mbps = bytes[f] / 1e6 / (ms / 1000);
    results.push({ vocab, file: f, impl, mbps, tokens });
    console.error(`${impl.padEnd(28)} ${vocab.padEnd(30)} ${f.padEnd(20)} ${mbps.toFixed(2).padStart(7)} MB/s  ${tokens} tokens`);
  }
}

// tiktoken WASM
for (const enc of ["r50k_base", "cl100k_base", "o200k_base"]) {
  const e = get_encoding(enc);
  await run(enc, "tiktoken 1.0.22 (WASM)", (t) => e.encode_ordinary(t).length);
}
// tiktoken-node (native, sync)
for (const enc of ["r50k_base", "cl100k_base"]) {
  const e = tiktokenNode.getEncoding(enc);
  await run(enc, "tiktoken-node 0.0.7", (t) => e.encode(t).length);
}
// @anysphere/tiktoken-node (native; encodes on its worker thread, one call at a time)
{
  const t = anysphere.getTokenizer();
  const S = anysphere.SupportedEncoding, A = anysphere.SpecialTokenAction;
  await run("cl100k_base", "@anysphere/tiktoken-node 0.2.1", async (x) => (await t.encode(x, S.Cl100k, A.NormalText, {})).length);
  await run("o200k_base", "@anysphere/tiktoken-node 0.2.1", async (x) => (await t.encode(x, S.O200k, A.NormalText, {})).length);
}
// HF tokenizers (Rust, native) on the tokenizer.json files
for (const vocab of ["gpt2/tokenizer.json", "hf/cl100k_base.tokenizer.json", "hf/o200k_base.tokenizer.json", "hf/mistral.tokenizer.json"]) {
  const tok = hf.Tokenizer.fromFile(path.join(shared, "tokenizers", vocab));
  await run(vocab, "tokenizers 0.23.2 (HF, Rust)", async (t) => (await tok.encode(t, null, { addSpecialTokens: false })).getLength());
}

// Forge, same machine, same run.
const forgeVocab = { r50k_base: "r50k_base.tiktoken", cl100k_base: "cl100k_base.tiktoken", o200k_base: "o200k_base.tiktoken" };
if (fs.existsSync(forgeBench)) {
  const out = execFileSync(forgeBench, ["--benchmark_filter=^Encode/", "--benchmark_format=json"], { maxBuffer: 1 << 26 }).toString();
  for (const b of JSON.parse(out).benchmarks) {
    const m = b.name.match(/^Encode\/(.+)\/([^/]+\.txt)/);
    if (!m) continue;
    const vocab = Object.entries(forgeVocab).find(([, v]) => v === m[1])?.[0] || m[1];
    results.push({ vocab, file: m[2], impl: "Forge", mbps: b.bytes_per_second / 1e6, tokens: b.tokens });
    console.error(`${"Forge".padEnd(28)} ${vocab.padEnd(30)} ${m[2].padEnd(20)} ${(b.bytes_per_second / 1e6).toFixed(2).padStart(7)} MB/s  ${b.tokens} tokens`);
  }
} else {
  console.error(`(no Forge bench at ${forgeBench}; pass its path to include Forge)`);
}

// Markdown table: one row per vocab, MB/s per implementation and file.
const impls = [...new Set(results.map((r) => r.impl))];
const vocabs = [...new Set(results.map((r) => r.vocab))];
console.log(`Machine: ${os.cpus()[0].model}, ${os.cpus().length} cores; single-thread encode, MB/s of CPU time (median of >= 3 runs); node ${process.version}`);
console.log("");
console.log(`| vocab | file | ${impls.join(" | ")} |`);
console.log(`|---|---|${impls.map(() => "---:").join("|")}|`);
for (const v of vocabs)
  for (const f of FILES) {
    const cells = impls.map((i) => {
      const r = results.find((x) => x.vocab === v && x.file === f && x.impl === i);
      return r ? r.mbps.toFixed(1) : "";
    });
    if (cells.some((c) => c)) console.log(`| ${v} | ${f} | ${cells.join(" | ")} |`);
  }
