// Small tokenizer.json files for the model types and pipeline parts the shared vocabularies do
// not cover (WordPiece, Unigram, character BPE; BERT/NFD/NFKC/Lowercase/StripAccents/Replace/
// Strip normalizers; BERT/Whitespace/Punctuation/Digits/Metaspace pre-tokenizers; WordPiece/
// Metaspace/ByteFallback decoders). HF tokenizers (Rust) trains each on 40 kB of the shared data,
// the pipeline parts are then set in the JSON, and HF encodes the fixture texts: ids and decoded
// text go to tests/tokenizers/fixtures/synthetic/. Run: node gen_synthetic.mjs
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import hf from "tokenizers";
import { CASES, SPECIAL_CASES, makeText, fnvIds } from "./cases.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const shared = process.env.FORGE_SHARED_DATA || path.resolve(root, "../shared/data");
const outDir = path.join(root, "tests/tokenizers/fixtures/synthetic");
fs.mkdirSync(outDir, { recursive: true });
const pkg = JSON.parse(fs.readFileSync(path.join(here, "package.json"), "utf8"));

const trainText = fs.readFileSync(path.join(shared, "tinyshakespeare.txt"), "utf8").slice(0, 20000) +
  fs.readFileSync(path.join(shared, "mixed.txt"), "utf8").slice(0, 20000);
const trainFile = path.join(fs.mkdtempSync("/tmp/forge-synth-"), "train.txt");
fs.writeFileSync(trainFile, trainText);

function addTokens(j, names, special = true) {
  const vocab = j.model.vocab;
  let next = Array.isArray(vocab) ? vocab.length : Math.max(...Object.values(vocab)) + 1;
  const ids = {};
  for (const n of names) {
    if (Array.isArray(vocab)) { vocab.push([n, 0.0]); ids[n] = next++; }
    else if (!(n in vocab)) { vocab[n] = next++; ids[n] = vocab[n]; } else ids[n] = vocab[n];
    j.added_tokens.push({ id: ids[n], content: n, single_word: false, lstrip: false, rstrip: false, normalized: false, special });
  }
  return ids;
}

const CONFIGS = {
  synth_bert_wordpiece: {
    model: () => hf.WordPiece.empty(), pre: () => hf.bertPreTokenizer(),
    edit(j) {
      const ids = addTokens(j, ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]);
      j.normalizer = { type: "BertNormalizer", clean_text: true, handle_chinese_chars: true, strip_accents: null, lowercase: true };
      j.pre_tokenizer = { type: "BertPreTokenizer" };
      j.decoder = { type: "WordPiece", prefix: "##", cleanup: true };
      j.post_processor = { type: "BertProcessing", sep: ["[SEP]", ids["[SEP]"]], cls: ["[CLS]", ids["[CLS]"]] };
    },
  },
  synth_wordpiece_seq: {
    model: () => hf.WordPiece.empty(), pre: () => hf.whitespacePreTokenizer(),
    edit(j) {
      addTokens(j, ["[UNK]"]);
      j.normalizer = { type: "Sequence", normalizers: [{ type: "NFD" }, { type: "Lowercase" }, { type: "StripAccents" },
        { type: "Replace", pattern: { String: "``" }, content: "\"" }] };
      j.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "WhitespaceSplit" },
        { type: "Punctuation", behavior: "Isolated" }, { type: "Digits", individual_digits: true }] };
      j.decoder = { type: "WordPiece", prefix: "##", cleanup: false };
    },
  },
  synth_bpe_chars: {
    model: () => hf.BPE.empty(), pre: () => hf.whitespacePreTokenizer(),
    edit(j) {
      addTokens(j, ["[UNK]"]);
      j.model.unk_token = "[UNK]";
      j.model.fuse_unk = true;
      j.normalizer = { type: "Sequence", normalizers: [{ type: "NFKC" }, { type: "Lowercase" }] };
      j.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "Whitespace" }, { type: "Digits", individual_digits: false }] };
      j.decoder = null; // HF joins tokens with spaces
    },
  },
  synth_unigram: {
    model: () => hf.Unigram.empty(), pre: () => hf.metaspacePreTokenizer(),
    edit(j) {
      const ids = addTokens(j, ["<unk>", "</s>", "<pad>"]);
      j.model.unk_id = ids["<unk>"];
      j.normalizer = { type: "Sequence", normalizers: [{ type: "NFKC" }, { type: "Replace", pattern: { Regex: " {2,}" }, content: " " }, { type: "Strip", strip_left: false, strip_right: true }] };
      j.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "always", split: true };
      j.decoder = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "always", split: true };
      j.post_processor = { type: "TemplateProcessing", single: [{ Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "</s>", type_id: 0 } }],
        pair: [{ Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "</s>", type_id: 0 } }, { Sequence: { id: "B", type_id: 0 } }, { SpecialToken: { id: "</s>", type_id: 0 } }],
        special_tokens: { "</s>": { id: "</s>", ids: [ids["</s>"]], tokens: ["</s>"] } } };
    },
  },
  synth_unigram_bytes: {
    model: () => hf.Unigram.empty(), pre: () => hf.metaspacePreTokenizer(),
    edit(j) {
      const bytes = [];
      for (let b = 0; b < 256; b++) bytes.push("<0x" + b.toString(16).toUpperCase().padStart(2, "0") + ">");
      const ids = addTokens(j, ["<unk>", "<s>"]);
      const vocab = j.model.vocab;
      for (const t of bytes) vocab.push([t, -20.0]);
      j.model.unk_id = ids["<unk>"];
      j.model.byte_fallback = true;
      j.normalizer = null;
      j.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
      j.decoder = { type: "Sequence", decoders: [{ type: "Replace", pattern: { String: "\u2581" }, content: " " }, { type: "ByteFallback" }, { type: "Fuse" }, { type: "Strip", content: " ", start: 1, stop: 0 }] };
    },
  },
};

for (const [name, cfg] of Object.entries(CONFIGS)) {
  const t = new hf.Tokenizer(cfg.model());
  t.setPreTokenizer(cfg.pre());
  t.train([trainFile]);
  const tmp = trainFile + "." + name + ".json";
  t.save(tmp);
  const j = JSON.parse(fs.readFileSync(tmp, "utf8"));
  j.added_tokens = j.added_tokens || [];
  cfg.edit(j);
  const json = JSON.stringify(j);
  const vocabFile = name + ".tokenizer.json";
  fs.writeFileSync(path.join(outDir, vocabFile), json + "\n");
  const tok = hf.Tokenizer.fromString(json);
  const fx = { vocab_in_repo: "tests/tokenizers/fixtures/synthetic/" + vocabFile,
    reference: `tokenizers@${pkg.dependencies.tokenizers} Tokenizer.fromString (HF tokenizers' Rust core)`, cases: [], special_cases: [], files: {} };
  for (const c of CASES) {
    const text = makeText(c);
    const ids = Array.from((await tok.encode(text, null, { addSpecialTokens: false })).getIds());
    const e = { name: c.name };
    if (c.text !== undefined) e.text = c.text; else e.gen = c.gen;
    if (c.name === "special_text_plain") e.added_tokens_matched = true;
    if (ids.length <= 2000) e.ids = ids; else { e.count = ids.length; e.fnv1a64 = fnvIds(ids); }
    if (c.text !== undefined) e.decoded = await tok.decode(ids, false);
    fx.cases.push(e);
  }
  for (const c of SPECIAL_CASES)
    fx.special_cases.push({ name: c.name, text: c.text, ids: Array.from((await tok.encode(c.text, null, { addSpecialTokens: false })).getIds()) });
  fx.bos_example = { text: "Hello world", ids: Array.from((await tok.encode("Hello world", null, { addSpecialTokens: true })).getIds()) };
  fs.writeFileSync(path.join(outDir, name + ".json"), JSON.stringify(fx, null, 1) + "\n");
  console.log(name, "vocab", fs.statSync(path.join(outDir, vocabFile)).size, "bytes");
}
