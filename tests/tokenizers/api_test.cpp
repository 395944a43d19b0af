// Tokenizer API behaviour beyond the reference ids: the special-token rule, BOS/EOS, streaming
// decode, the invalid UTF-8 policy, encode_batch, error messages, and linear-time BPE.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "fixture_util.h"
#include <forge/core/error.h>
#include <forge/tokenizers/tokenizer.h>

using forge::EncodeOptions;
using forge::TokenId;
using forge::Tokenizer;
namespace ft = forge::test;

namespace {

#define NEED_VOCABS()                                                                              \
    if (!ft::have_vocabs())                                                                        \
    GTEST_SKIP() << "../shared/data/tokenizers is absent"

const Tokenizer& cached(const std::string& vocab) {
    static std::map<std::string, Tokenizer> cache;
    auto it = cache.find(vocab);
    if (it == cache.end())
        it = cache.emplace(vocab, Tokenizer::load(ft::vocab_dir() / vocab)).first;
    return it->second;
}

bool valid_utf8(const std::string& s) {
    // Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), written
    // independently of the library's own check.
    std::size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        std::size_t n = c < 0x80   ? 1
                        : c < 0xC2 ? 0
                        : c < 0xE0 ? 2
                        : c < 0xF0 ? 3
                        : c < 0xF5 ? 4
                                   : 0;
        if (n == 0 || i + n > s.size())
            return false;
        for (std::size_t k = 1; k < n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80)
                return false;
        auto c1 = static_cast<unsigned char>(s[i + 1 < s.size() ? i + 1 : i]);
        if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) || (c == 0xF0 && c1 < 0x90) ||
            (c == 0xF4 && c1 >= 0x90))
            return false;
        i += n;
    }
    return true;
}

template <typename F> std::string error_of(F&& f) {
    try {
        f();
    } catch (const forge::InvalidArgument& e) {
        return e.what();
    }
    return "(no InvalidArgument thrown)";
}

TEST(Tokenizer, SpecialTokenTextIsPlainUnlessAllowed) {
    NEED_VOCABS();
    const auto& tok = cached("cl100k_base.tiktoken");
    std::string text = "a<|endoftext|>b<|fim_prefix|>";
    auto plain = tok.encode(text);
    EXPECT_EQ(std::count(plain.begin(), plain.end(), 100257), 0);
    EXPECT_EQ(tok.decode(plain), text);

    EncodeOptions one;
    one.allowed_special = {"<|endoftext|>"};
    auto ids = tok.encode(text, one);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), 100257), 1);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), 100258), 0); // fim_prefix not allowed
    EXPECT_EQ(tok.decode(ids), text);

    EncodeOptions all;
    all.allow_all_special = true;
    auto all_ids = tok.encode(text, all);
    EXPECT_EQ(std::count(all_ids.begin(), all_ids.end(), 100258), 1);
    forge::DecodeOptions skip;
    skip.skip_special_tokens = true;
    EXPECT_EQ(tok.decode(all_ids, skip), "ab");

    EncodeOptions bad;
    bad.allowed_special = {"<|nope|>"};
    EXPECT_NE(error_of([&] { tok.encode("x", bad); }).find("<|nope|>"), std::string::npos);
}

TEST(Tokenizer, VocabSizesAndSpecialIds) {
    NEED_VOCABS();
    EXPECT_EQ(cached("r50k_base.tiktoken").vocab_size(), 50257u);
    EXPECT_EQ(cached("cl100k_base.tiktoken").vocab_size(), 100277u);
    EXPECT_EQ(cached("o200k_base.tiktoken").vocab_size(), 200019u);
    EXPECT_EQ(cached("gpt2").vocab_size(), 50257u);
    EXPECT_EQ(cached("hf/mistral.tokenizer.json").vocab_size(), 32000u);
    EXPECT_EQ(cached("sentencepiece/albert-30k-clean.model").vocab_size(), 30000u);

    EXPECT_EQ(cached("cl100k_base.tiktoken").eos_id(), 100257);
    EXPECT_EQ(cached("o200k_base.tiktoken").eos_id(), 199999);
    EXPECT_EQ(cached("gpt2").eos_id(), 50256);
    EXPECT_EQ(cached("hf/mistral.tokenizer.json").bos_id(), 1);
    EXPECT_EQ(cached("hf/mistral.tokenizer.json").eos_id(), 2);
    EXPECT_EQ(cached("hf/mistral.tokenizer.json").unk_id(), 0);
    const auto& sp = cached("sentencepiece/albert-30k-clean.model");
    EXPECT_EQ(sp.unk_id(), 1);
    EXPECT_EQ(sp.pad_id(), 0);
    EXPECT_EQ(sp.token(1), "<unk>");

    const auto& cl = cached("cl100k_base.tiktoken");
    EXPECT_EQ(cl.special_tokens().size(), 5u);
    EXPECT_EQ(cl.token(9906), "Hello");
    EXPECT_EQ(cl.token_to_id("Hello"), 9906);
    EXPECT_EQ(cl.token_to_id("<|endofprompt|>"), 100276);
    EXPECT_FALSE(cl.token_to_id("definitely not a single token").has_value());
    EXPECT_EQ(cl.kind(), "tiktoken:cl100k_base");
    EXPECT_EQ(cached("hf/mistral.tokenizer.json").token(28705), "\xE2\x96\x81");
    EXPECT_THROW(cl.token(-1), forge::InvalidArgument);
    EXPECT_THROW(cl.token(100261), forge::InvalidArgument); // a hole between ranks and specials
    std::vector<TokenId> bad = {1, 2, 999999};
    EXPECT_NE(error_of([&] { cl.decode(bad); }).find("999999"), std::string::npos);
}

TEST(Tokenizer, AddSpecialTokensUsesThePostProcessor) {
    NEED_VOCABS();
    EncodeOptions o;
    o.add_special_tokens = true;
    auto ids = cached("hf/mistral.tokenizer.json").encode("Hello", o);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(cached("cl100k_base.tiktoken").encode("Hello", o), std::vector<TokenId>{9906});
}

// Pushing ids one at a time yields valid UTF-8 every time and, joined, the whole text.
TEST(Tokenizer, IncrementalDecoderNeverSplitsACharacter) {
    NEED_VOCABS();
    std::string text =
        "héllo 👨‍👩‍👧‍👦 我能吞下玻璃 мир 🇺🇸 ok\n\tend";
    for (const char* v : {"cl100k_base.tiktoken", "o200k_base.tiktoken", "gpt2/tokenizer.json",
                          "hf/mistral.tokenizer.json", "sentencepiece/albert-30k-clean.model"}) {
        SCOPED_TRACE(v);
        const auto& tok = cached(v);
        auto ids = tok.encode(text);
        auto dec = tok.incremental_decoder();
        std::string joined;
        for (TokenId id : ids) {
            std::string part = dec.push(id);
            EXPECT_TRUE(valid_utf8(part)) << "after id " << id;
            joined += part;
        }
        joined += dec.flush();
        EXPECT_EQ(joined, tok.decode(ids));
    }
    // Byte-level pieces of one emoji: nothing until the character is complete.
    const auto& cl = cached("cl100k_base.tiktoken");
    auto dec = cl.incremental_decoder();
    std::vector<TokenId> bytes;
    for (unsigned char b : std::string("\xF0\x9F\x98\x80"))
        bytes.push_back(*cl.token_to_id(std::string(1, char(b))));
    EXPECT_EQ(dec.push(bytes[0]), "");
    EXPECT_EQ(dec.push(bytes[1]), "");
    EXPECT_EQ(dec.push(bytes[2]), "");
    EXPECT_EQ(dec.push(bytes[3]), "\xF0\x9F\x98\x80");
    // A stream cut off mid-character ends in U+FFFD.
    auto cut = cl.incremental_decoder();
    EXPECT_EQ(cut.push(bytes[0]), "");
    EXPECT_EQ(cut.flush(), "\xEF\xBF\xBD");
    // A byte that can never start a character is replaced at once.
    auto bad = cl.incremental_decoder();
    EXPECT_EQ(bad.push(*cl.token_to_id(std::string(1, '\xFF'))), "\xEF\xBF\xBD");
}

// Policy: byte-level vocabularies encode any bytes losslessly (each invalid byte is its own
// piece); character-level ones see U+FFFD in its place.
TEST(Tokenizer, InvalidUtf8Policy) {
    NEED_VOCABS();
    std::string bad = "ok \xFF\xFE abc\xC3 (\xE2\x82) \xED\xA0\x80 end \xF0\x9F";
    for (const char* v : {"r50k_base.tiktoken", "cl100k_base.tiktoken", "o200k_base.tiktoken",
                          "gpt2", "gpt2/tokenizer.json", "hf/cl100k_base.tokenizer.json"}) {
        SCOPED_TRACE(v);
        const auto& tok = cached(v);
        auto ids = tok.encode(bad);
        EXPECT_EQ(tok.decode(ids), bad);
        // Valid runs encode as they would alone.
        auto ok = tok.encode("ok ");
        EXPECT_TRUE(std::equal(ok.begin(), ok.end(), ids.begin()));
    }
    std::string replaced = "ok \xEF\xBF\xBD\xEF\xBF\xBD abc\xEF\xBF\xBD (\xEF\xBF\xBD\xEF\xBF\xBD) "
                           "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD end \xEF\xBF\xBD\xEF\xBF\xBD";
    for (const char* v : {"hf/mistral.tokenizer.json", "sentencepiece/albert-30k-clean.model"}) {
        SCOPED_TRACE(v);
        EXPECT_EQ(cached(v).encode(bad), cached(v).encode(replaced));
    }
}

TEST(Tokenizer, EncodeBatchMatchesEncodeOnAnyThreadCount) {
    NEED_VOCABS();
    const auto& tok = cached("o200k_base.tiktoken");
    std::vector<std::string> docs;
    for (int i = 0; i < 200; ++i)
        docs.push_back("document " + std::to_string(i) + ": " +
                       std::string(std::size_t(i % 17), 'x') + " 你好 " + std::to_string(i * 7919));
    std::vector<std::vector<TokenId>> want;
    for (const auto& d : docs)
        want.push_back(tok.encode(d));
    for (int threads : {0, 1, 2, 4, 7})
        EXPECT_EQ(tok.encode_batch(docs, {}, threads), want) << threads << " threads";
    EXPECT_TRUE(tok.encode_batch(std::vector<std::string>{}, {}, 2).empty());
    // Two threads sharing one tokenizer (and its caches) agree with one.
    std::vector<TokenId> a, b;
    std::thread t1([&] {
        for (int k = 0; k < 20; ++k)
            a = tok.encode(docs[std::size_t(k)]);
    });
    std::thread t2([&] {
        for (int k = 0; k < 20; ++k)
            b = tok.encode(docs[std::size_t(k)]);
    });
    t1.join();
    t2.join();
    EXPECT_EQ(a, want[19]);
    EXPECT_EQ(b, want[19]);
}

// A 1 MB piece encodes and decodes back (its speed, which shows there is no quadratic merge,
// is measured by bench/tokenizers: LongWord1MB; timing assertions stay out of tests).
TEST(Tokenizer, MegabyteWordRoundTrips) {
    NEED_VOCABS();
    std::string w(1 << 20, 'a');
    std::uint32_t x = 7;
    for (auto& c : w) {
        x = x * 1103515245u + 12345u;
        c = char('a' + ((x >> 16) % 26));
    }
    for (const char* v : {"cl100k_base.tiktoken", "hf/mistral.tokenizer.json"}) {
        const auto& tok = cached(v);
        auto ids = tok.encode(w);
        EXPECT_GT(ids.size(), 1000u) << v;
        if (v[0] == 'c') { // byte-level: exact bytes back
            EXPECT_EQ(tok.decode(ids), w) << v;
        }
    }
}

TEST(Tokenizer, FromRanksFollowsTiktokensRule) {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b)
        tokens.push_back(std::string(1, char(b)));
    tokens.push_back("ab");  // 256
    tokens.push_back("bc");  // 257
    tokens.push_back("abc"); // 258
    auto tok = Tokenizer::from_ranks(tokens, R"(\S+|\s+)", {{"<eot>", 300, true}}, "tiny");
    EXPECT_EQ(tok.encode("abc"), std::vector<TokenId>{258}); // whole piece is a token
    // ab (256) merges before bc (257); then ab+c is the token abc.
    EXPECT_EQ(tok.encode("abcb"), (std::vector<TokenId>{258, 'b'}));
    EXPECT_EQ(tok.encode("bcab"), (std::vector<TokenId>{257, 256}));
    EXPECT_EQ(tok.encode("x<eot>"), (std::vector<TokenId>{'x', '<', 'e', 'o', 't', '>'}));
    EncodeOptions all;
    all.allow_all_special = true;
    EXPECT_EQ(tok.encode("x<eot>", all), (std::vector<TokenId>{'x', 300}));
    EXPECT_EQ(tok.vocab_size(), 301u);
    tokens.erase(tokens.begin() + 'q');
    tokens.insert(tokens.begin() + 'q', std::string());
    EXPECT_NE(error_of([&] { Tokenizer::from_ranks(tokens, "\\S+", {}, "holes"); }).find("256"),
              std::string::npos);
}

TEST(Tokenizer, BadFilesThrowClearErrors) {
    EXPECT_NE(error_of([] {
                  Tokenizer::from_tokenizer_json("{not json", "broken.json");
              }).find("broken.json: not valid JSON"),
              std::string::npos);
    EXPECT_NE(error_of([] {
                  Tokenizer::from_tokenizer_json(R"({"model": {"type": "Magic"}})", "m.json");
              }).find("unknown model type \"Magic\""),
              std::string::npos);
    EXPECT_NE(error_of([] {
                  Tokenizer::from_tokenizer_json(R"({"version": "1.0"})", "x.json");
              }).find("missing field \"model\""),
              std::string::npos);
    const char* bad_merge =
        R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}})";
    EXPECT_NE(
        error_of([&] { Tokenizer::from_tokenizer_json(bad_merge, "merge.json"); }).find("merge #0"),
        std::string::npos);
    const char* bad_norm = R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                               "normalizer": {"type": "Sparkle"}})";
    EXPECT_NE(error_of([&] {
                  Tokenizer::from_tokenizer_json(bad_norm, "n.json");
              }).find("unsupported normalizer type \"Sparkle\""),
              std::string::npos);
    const char* bad_regex = R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}})";
    EXPECT_NE(error_of([&] {
                  Tokenizer::from_tokenizer_json(bad_regex, "r.json");
              }).find("does not compile"),
              std::string::npos);
    EXPECT_THROW(Tokenizer::load("/nonexistent/tokenizer.json"), forge::NotFound);

    auto dir = std::filesystem::temp_directory_path() / "forge_tok_api_test";
    std::filesystem::create_directories(dir);
    { std::ofstream(dir / "weird.tiktoken") << "IQ== 0\nnot-a-line\n"; }
    EXPECT_NE(error_of([&] { Tokenizer::load(dir / "weird.tiktoken"); }).find("weird.tiktoken:2"),
              std::string::npos);
    { std::ofstream(dir / "junk.model") << "this is not a protobuf"; }
    EXPECT_NE(error_of([&] { Tokenizer::load(dir / "junk.model"); }).find("junk.model"),
              std::string::npos);
    std::filesystem::remove_all(dir);
    EXPECT_THROW(Tokenizer::known_pattern("p99k"), forge::InvalidArgument);
}

TEST(Tokenizer, MinimalJsonModelsWork) {
    // A WordPiece with BERT parts, written by hand.
    const char* wp = R"({
      "normalizer": {"type": "BertNormalizer", "lowercase": true},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "decoder": {"type": "WordPiece", "prefix": "##"},
      "added_tokens": [{"id": 0, "content": "[UNK]", "special": true}],
      "model": {"type": "WordPiece", "unk_token": "[UNK]",
                "vocab": {"[UNK]": 0, "un": 1, "##aff": 2, "##able": 3, "the": 4, "!": 5}}})";
    auto tok = Tokenizer::from_tokenizer_json(wp, "wp.json");
    EXPECT_EQ(tok.encode("The UNAFFABLE!"), (std::vector<TokenId>{4, 1, 2, 3, 5}));
    EXPECT_EQ(tok.encode("zzz"), std::vector<TokenId>{0});
    EXPECT_EQ(tok.decode(std::vector<TokenId>{4, 1, 2, 3, 5}), "the unaffable!");
    // A Unigram: Viterbi picks the best-scoring split.
    const char* uni = R"({
      "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
      "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"},
      "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0], ["▁", -2], ["▁ab", -3],
                ["a", -2], ["b", -2], ["c", -2], ["▁abc", -10], ["bc", -1.5]]}})";
    auto u = Tokenizer::from_tokenizer_json(uni, "uni.json");
    // ▁ab + c (-5) beats ▁ + a + bc (-5.5) and ▁abc (-10).
    EXPECT_EQ(u.encode("abc"), (std::vector<TokenId>{2, 5}));
    EXPECT_EQ(u.decode(u.encode("abc ab")), "abc ab");
}

} // namespace
