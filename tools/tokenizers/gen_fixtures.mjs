// Generates tests/tokenizers/fixtures/*.json: token ids from INDEPENDENT reference tokenizers
// (tiktoken's Rust core as WASM, HF tokenizers' Rust core as a native addon, SentencePiece as
// WASM) for every vocabulary in ../shared/data/tokenizers, on the texts in cases.mjs and on the
// whole data files (count + FNV-1a hash of the ids). Run: npm ci && node gen_fixtures.mjs
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { get_encoding } from "tiktoken";
import hf from "tokenizers";
import { SentencePieceProcessor } from "@sctg/sentencepiece-js";
import { CASES, SPECIAL_CASES, makeText, fnvIds } from "./cases.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const shared = process.env.FORGE_SHARED_DATA || path.resolve(root, "../shared/data");
const outDir = path.join(root, "tests/tokenizers/fixtures");
fs.mkdirSync(outDir, { recursive: true });
const pkg = JSON.parse(fs.readFileSync(path.join(here, "package.json"), "utf8"));
const ver = (n) => `${n}@${pkg.dependencies[n]}`;
const DATA_FILES = ["tinyshakespeare.txt", "mixed.txt"];
const MAX_INLINE = 2000; // longer id lists are stored as count + hash

function record(ids) {
  ids = Array.from(ids, Number);
  return ids.length <= MAX_INLINE ? { ids } : { count: ids.length, fnv1a64: fnvIds(ids) };
}

function caseEntry(c, ids, extra = {}) {
  const e = { name: c.name };
  if (c.text !== undefined) e.text = c.text; else e.gen = c.gen;
  return Object.assign(e, record(ids), extra);
}

// `node gen_fixtures.mjs name...` regenerates only those fixtures.
const only = new Set(process.argv.slice(2));

async function writeFixture(name, meta, encode, encodeSpecial, decode, alwaysMatchesAdded = false) {
  if (only.size && !only.has(name)) return;
  const t0 = performance.now();
  const fx = Object.assign({}, meta, { cases: [], special_cases: [], files: {} });
  for (const c of CASES) {
    const ids = await encode(makeText(c));
    const extra = {};
    // HF always matches added tokens in the input; Forge does so only when they are allowed.
    if (alwaysMatchesAdded && c.name === "special_text_plain") extra.added_tokens_matched = true;
    if (decode && c.text !== undefined) extra.decoded = await decode(ids);
    fx.cases.push(caseEntry(c, ids, extra));
  }
  if (encodeSpecial)
    for (const c of SPECIAL_CASES) fx.special_cases.push(caseEntry(c, await encodeSpecial(c.text)));
  for (const f of DATA_FILES) {
    const text = fs.readFileSync(path.join(shared, f), "utf8");
    const ids = Array.from(await encode(text), Number);
    fx.files[f] = { count: ids.length, fnv1a64: fnvIds(ids) };
  }
  fs.writeFileSync(path.join(outDir, name + ".json"), JSON.stringify(fx, null, 1) + "\n");
  console.log(`${name}: ${fx.cases.length} cases, files ${JSON.stringify(fx.files)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}

// tiktoken rank files and the GPT-2 folder (same vocabulary as r50k_base: tiktoken reproduces
// OpenAI's encoder.py exactly).
for (const [enc, vocab, fname] of [
  ["r50k_base", "r50k_base.tiktoken", "r50k_base"],
  ["cl100k_base", "cl100k_base.tiktoken", "cl100k_base"],
  ["o200k_base", "o200k_base.tiktoken", "o200k_base"],
  ["r50k_base", "gpt2", "gpt2_folder"],
]) {
  const e = get_encoding(enc);
  await writeFixture(fname, { vocab, reference: `${ver("tiktoken")} get_encoding("${enc}") (tiktoken's Rust core, WASM)` },
    (t) => e.encode_ordinary(t), (t) => e.encode(t, "all"), null);
  e.free();
}

// HF tokenizer.json files through the HF tokenizers Rust core (native addon).
for (const [vocab, fname] of [
  ["gpt2/tokenizer.json", "gpt2_tokenizer_json"],
  ["hf/cl100k_base.tokenizer.json", "hf_cl100k_base"],
  ["hf/o200k_base.tokenizer.json", "hf_o200k_base"],
  ["hf/mistral.tokenizer.json", "hf_mistral"],
]) {
  const tok = hf.Tokenizer.fromFile(path.join(shared, "tokenizers", vocab));
  const enc = async (t) => (await tok.encode(t, null, { addSpecialTokens: false })).getIds();
  const dec = vocab.includes("mistral") ? (ids) => tok.decode(Array.from(ids), false) : null;
  const withSpecial = vocab.includes("mistral")
    ? { bos_example: { text: "Hello", ids: Array.from((await tok.encode("Hello", null, { addSpecialTokens: true })).getIds()) } }
    : {};
  await writeFixture(fname, Object.assign({ vocab, reference: `${ver("tokenizers")} Tokenizer.fromFile (HF tokenizers' Rust core)` }, withSpecial),
    enc, enc, dec, true);
}

// SentencePiece .model through sentencepiece compiled to WASM.
{
  const vocab = "sentencepiece/albert-30k-clean.model";
  const sp = new SentencePieceProcessor();
  await sp.loadFromB64StringModel(fs.readFileSync(path.join(shared, "tokenizers", vocab)).toString("base64"));
  await writeFixture("albert_sentencepiece", { vocab, reference: `${ver("@sctg/sentencepiece-js")} SentencePieceProcessor.encodeIds (sentencepiece C++ as WASM)` },
    (t) => sp.encodeIds(t), null, (ids) => sp.decodeIds(Int32Array.from(ids)));
}
