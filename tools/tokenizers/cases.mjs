// The texts every vocabulary's fixture covers. `gen` cases are built by the same recipe in the
// C++ tests (tests/tokenizers/fixture_util.h), so 100 kB inputs need not be committed.
export const CASES = [
  { name: "empty", text: "" },
  { name: "space", text: " " },
  { name: "hello", text: "Hello, world!" },
  { name: "hello_leading_space", text: " Hello world" },
  { name: "whitespace_runs", text: "a   b    c\n\n\nd \n \n  e   \t\t  f    " },
  { name: "leading_trailing", text: "   leading and trailing   " },
  { name: "newlines_only", text: "\n\n\n\n" },
  { name: "unicode_spaces", text: "a\u00a0b\u2003c\u3000d\u2028e\u0085f \u200bg\ufeffh\u180ei" },
  { name: "crlf", text: "line1\r\nline2\r\n\r\nline3\r\n\r\n" },
  { name: "tabs", text: "\tindented\n\t\tdouble\tx\t \t y\t\n" },
  { name: "contractions_lower", text: "I'm you're he's we've they'll I'd can't won't it's" },
  { name: "contractions_upper", text: "I'M YOU'RE HE'S WE'VE THEY'LL I'D CAN'T WON'T IT'S" },
  { name: "contractions_mixed", text: "i'M You'Re hE's We'VE tHey'Ll I'd 's 'S 'll 'LL 'Ve 'rE x'd'd" },
  { name: "contractions_unicode", text: "it\u2019s don\u2019t it'ſ K'K 'ﬅ" },
  { name: "digits", text: "1234567890123456789 3.14159265358979 1,000,000 2024-01-01 0x1F 007" },
  { name: "long_digits", text: "1".repeat(100) + " " + "9876543210".repeat(5) },
  { name: "other_digits", text: "١٢٣٤ ٥٦ ०१२३ ⅷ ² ½ 𝟙𝟚" },
  { name: "punctuation", text: "!!!???...,,,;;;:::---___***###@@@%%%^^^&&&" },
  { name: "punctuation_mixed", text: "Hello!!! What??? ...well, (a) [b] {c} <d> \"e\" 'f' `g` ~h~ |i| \\j\\ /k/" },
  { name: "slashes", text: "/path/to/file.txt // comment /* c */ http://example.com/a?b=c&d=e#f" },
  { name: "accents", text: "café naïve résumé Ångström Ærøskøbing façade coöperate Zürich" },
  { name: "combining", text: "cafe\u0301 nai\u0308ve \u0301start x\u0301\u0301\u0301 e\u0300\u0316" },
  { name: "greek", text: "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο. ΑΒΓΔ" },
  { name: "cyrillic", text: "Съешь же ещё этих мягких французских булок, да выпей чаю. ПРИВЕТ мир" },
  { name: "cjk", text: "我能吞下玻璃而不伤身体。日本語のテキスト、カタカナとひらがな。한국어 텍스트입니다." },
  { name: "arabic", text: "أنا قادر على أكل الزجاج و هذا لا يؤلمني. مرحبا بالعالم" },
  { name: "devanagari", text: "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती." },
  { name: "emoji", text: "👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 👍🏿 🇺🇸🇯🇵 😀😃😄 ❤️ 🧑🏾‍💻 a👋b" },
  { name: "titlecase", text: "ǅemal ǈ ǋ ᾈ ﬀ ﬁ ǅUNGLA" },
  { name: "code_python", text: "def f(x):\n    return [i**2 for i in range(x) if i % 2 == 0]  # squares\n\nprint(f(10))\n" },
  { name: "code_cpp", text: "#include <vector>\nint main() {\n\tstd::vector<int> v{1, 2, 3};\n\tfor (auto& x : v) x *= 2;\n\treturn v.size() > 2 ? 0 : 1;\n}\n" },
  { name: "code_json", text: "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}\n" },
  { name: "special_text_plain", text: "<|endoftext|> hello <|fim_prefix|>x<|endofprompt|> <s></s><unk> [CLS]" },
  { name: "mixed_lines", text: "Hello world\n  indented line\n\n\tTabbed: 42 items, 3.5% off!!\r\nEnd." },
  { name: "long_word_100k", gen: { kind: "lcg_letters", n: 100000, seed: 1 } },
  { name: "repeat_a_100k", gen: { kind: "repeat", unit: "a", times: 100000 } },
  { name: "spaces_30k", gen: { kind: "repeat_then", unit: " ", times: 30000, tail: "x" } },
];

// Encoded with special tokens allowed (tiktoken "all"; HF always matches added tokens).
export const SPECIAL_CASES = [
  { name: "special_allowed", text: "<|endoftext|> hello <|fim_prefix|>x<|endofprompt|>" },
  { name: "special_allowed_sp", text: "<s>Hi</s> <unk> [CLS] a [SEP]" },
];

export function makeText(c) {
  if (c.text !== undefined) return c.text;
  const g = c.gen;
  if (g.kind === "lcg_letters") {
    let x = g.seed >>> 0;
    const out = new Array(g.n);
    for (let i = 0; i < g.n; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      out[i] = String.fromCharCode(97 + ((x >>> 16) % 26));
    }
    return out.join("");
  }
  if (g.kind === "repeat") return g.unit.repeat(g.times);
  if (g.kind === "repeat_then") return g.unit.repeat(g.times) + g.tail;
  throw new Error("unknown gen " + g.kind);
}

// FNV-1a 64 over each id as 4 little-endian bytes; hex.
export function fnvIds(ids) {
  let h = 0xcbf29ce484222325n;
  const p = 0x100000001b3n, m = 0xffffffffffffffffn;
  for (const id of ids) {
    let v = id >>> 0;
    for (let k = 0; k < 4; k++) {
      h ^= BigInt(v & 0xff);
      h = (h * p) & m;
      v >>>= 8;
    }
  }
  return h.toString(16).padStart(16, "0");
}
