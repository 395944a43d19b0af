// Makes tests/tokenizers/bpe_trainer_fixtures/: trains tokenizers with `forge tokenizer train`,
// encodes sample texts and whole data files with two independent Hugging Face implementations
// (the pure-JS @huggingface/tokenizers and the Rust core's `tokenizers` addon), and records the
// merges HF's own BPE trainer learns, so the C++ test can compare Forge against them.
//
//   npm install && node make_fixtures.mjs --forge ../../build/forge [--data ../../../shared/data]
//
// Every id list is checked to be equal in both HF implementations before it is written.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Tokenizer as JsTokenizer } from "@huggingface/tokenizers";
import rust from "tokenizers";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const args = process.argv.slice(2);
const opt = (name, dflt) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
};
const forge = path.resolve(opt("--forge", path.join(repo, "build/forge")));
const dataDir = path.resolve(opt("--data", path.join(repo, "../shared/data")));
const outDir = path.join(repo, "tests/tokenizers/bpe_trainer_fixtures");
fs.mkdirSync(outDir, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "forge-bpe-"));

// FNV-1a 64 over each id as 4 little-endian bytes: lets the test compare whole files' ids.
function fnv(ids) {
    let h = 0xcbf29ce484222325n;
    const prime = 0x100000001b3n, mask = (1n << 64n) - 1n;
    for (const id of ids)
        for (let k = 0; k < 4; ++k) {
            h ^= BigInt((id >>> (8 * k)) & 0xff);
            h = (h * prime) & mask;
        }
    return h.toString(16).padStart(16, "0");
}

const samples = [
    "",
    "Hello world",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "  leading spaces and trailing spaces   ",
    "tabs\tand\t\ttabs",
    "CRLF line\r\nnext line\r\n",
    "don't I'LL we've THEY'RE she'S you'd I'm it'Ll",
    "12345678901234567890 3.14159 1,000,000",
    "!!!??? ... --- *** ((()))",
    "naïve café résumé Ångström",
    "Ελληνικά: η γρήγορη καφέ αλεπού",
    "Русский текст: съешь же ещё этих мягких булок",
    "中文文本测试，这是一个句子。",
    "日本語のテキストです。",
    "العربية نص تجريبي",
    "हिन्दी पाठ का उदाहरण",
    "emoji 👩‍👩‍👧 👍🏽 🇺🇸 ❤️",
    "int main(int argc, char** argv) {\n    return argc > 1 ? 0 : 1;\n}\n",
    "def f(x):\n\tif x:\n\t\treturn [i for i in range(10)]\n",
    "\n\n\n",
    "   \n  \n \t \n",
    "<|endoftext|>",
    "before<|endoftext|>after <|endoftext|> spaced",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "x".repeat(3000),
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
    "mixed\u00a0nbsp\u2003em-space\u3000ideographic",
];

const configs = [
    {
        name: "shakespeare_gpt2_1000",
        data: ["tinyshakespeare.txt"],
        flags: ["--vocab-size", "1000", "--special", "<|endoftext|>"],
    },
    {
        name: "shakespeare_gpt2_4096",
        data: ["tinyshakespeare.txt"],
        flags: ["--vocab-size", "4096"],
    },
    {
        name: "mixed_cl100k_4096",
        data: ["mixed.txt"],
        flags: ["--vocab-size", "4096", "--pattern", "cl100k", "--special", "<|endoftext|>",
                "<|im_start|>", "<|im_end|>"],
    },
    {
        name: "both_gpt2_2048_whole",
        data: ["tinyshakespeare.txt", "mixed.txt"],
        flags: ["--vocab-size", "2048", "--whole-text", "--min-frequency", "3"],
    },
];

let failures = 0;
for (const cfg of configs) {
    const out = path.join(tmp, cfg.name + ".json");
    const dataPaths = cfg.data.map((d) => path.join(dataDir, d));
    execFileSync(forge, ["tokenizer", "train", "--data", ...dataPaths, "--out", out, ...cfg.flags],
                 { stdio: ["ignore", "inherit", "inherit"] });
    const json = fs.readFileSync(out, "utf8");
    const js = new JsTokenizer(JSON.parse(json), {});
    const rs = rust.Tokenizer.fromString(json);
    const encodeBoth = async (text, what) => {
        const a = js.encode(text).ids;
        const b = Array.from((await rs.encode(text)).getIds());
        if (a.length !== b.length || a.some((v, i) => v !== b[i])) {
            console.error(`${cfg.name}: HF JS and HF Rust disagree on ${what}`);
            ++failures;
        }
        const back = await rs.decode(b, false);
        if (back !== text) {
            console.error(`${cfg.name}: HF Rust does not round-trip ${what}`);
            ++failures;
        }
        return b;
    };
    const fixture = { name: cfg.name, data: cfg.data, flags: cfg.flags,
                      tokenizer_json_fnv: fnv(Buffer.from(json, "utf8")), samples: [], files: [] };
    for (const [i, text] of samples.entries())
        fixture.samples.push({ text, ids: await encodeBoth(text, `sample ${i}`) });
    for (const d of cfg.data) {
        const text = fs.readFileSync(path.join(dataDir, d), "utf8");
        const ids = await encodeBoth(text, d);
        fixture.files.push({ file: d, n_ids: ids.length, fnv: fnv(ids) });
    }
    fs.writeFileSync(path.join(outDir, cfg.name + ".json"), JSON.stringify(fixture, null, 1) + "\n");
    console.log(`${cfg.name}: ${fixture.samples.length} samples, files ` +
                fixture.files.map((f) => `${f.file}=${f.n_ids} ids`).join(", "));
}

// HF's own trainer (Rust core, default BpeTrainer: min frequency 0, alphabet = bytes seen, lines
// trained one by one) on each data file; the first merges are the fixture.
const N_MERGES = 2500;
const cl100k = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
const trainerRuns = [
    { name: "hf_trainer_shakespeare_gpt2", data: "tinyshakespeare.txt", pattern: "gpt2" },
    { name: "hf_trainer_mixed_cl100k", data: "mixed.txt", pattern: "cl100k" },
];
for (const run of trainerRuns) {
    // Built from JSON: the addon's splitPreTokenizer() takes a literal string, not a regex.
    const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true,
                        use_regex: run.pattern === "gpt2" };
    const pre = run.pattern === "gpt2" ? byteLevel : {
        type: "Sequence",
        pretokenizers: [{ type: "Split", pattern: { Regex: cl100k }, behavior: "Isolated",
                          invert: false }, byteLevel] };
    const t = rust.Tokenizer.fromString(JSON.stringify({
        version: "1.0", truncation: null, padding: null, added_tokens: [], normalizer: null,
        pre_tokenizer: pre, post_processor: null, decoder: null,
        model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null,
                 end_of_word_suffix: null, fuse_unk: false, byte_fallback: false,
                 ignore_merges: false, vocab: {}, merges: [] } }));
    t.train([path.join(dataDir, run.data)]);
    const file = path.join(tmp, run.name + ".json");
    t.save(file, false);
    const model = JSON.parse(fs.readFileSync(file, "utf8")).model;
    const merges = model.merges.map((m) => (Array.isArray(m) ? m : m.split(" ")));
    const nVocab = Object.keys(model.vocab).length;
    const fixture = { name: run.name, data: run.data, pattern: run.pattern,
                      alphabet_size: nVocab - merges.length, n_merges_total: merges.length,
                      merges: merges.slice(0, N_MERGES) };
    fs.writeFileSync(path.join(outDir, run.name + ".json"), JSON.stringify(fixture) + "\n");
    console.log(`${run.name}: alphabet ${fixture.alphabet_size}, ${merges.length} merges ` +
                `(first ${N_MERGES} kept)`);
}
fs.rmSync(tmp, { recursive: true, force: true });
if (failures) {
    console.error(`${failures} disagreement(s)`);
    process.exit(1);
}
