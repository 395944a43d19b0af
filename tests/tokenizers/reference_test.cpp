// Forge's ids against independent references (tiktoken, HF tokenizers, SentencePiece as run by
// tools/tokenizers/gen_fixtures.mjs) on every vocabulary in ../shared/data/tokenizers: texts
// covering whitespace, CRLF, contractions, digits, punctuation, scripts, emoji, code, 100 kB words.
#include <gtest/gtest.h>

#include <map>

#include "fixture_util.h"
#include <forge/tokenizers/tokenizer.h>

using forge::TokenId;
using forge::Tokenizer;
namespace ft = forge::test;

namespace {

// One loaded tokenizer per vocabulary for the whole binary (o200k's JSON takes a while).
const Tokenizer& tokenizer_for(const std::filesystem::path& vocab) {
    static std::map<std::string, Tokenizer> cache;
    auto it = cache.find(vocab.string());
    if (it == cache.end())
        it = cache.emplace(vocab.string(), Tokenizer::load(vocab)).first;
    return it->second;
}

class Reference : public ::testing::TestWithParam<std::string> {};

void expect_ids(const nlohmann::json& c, const std::vector<TokenId>& got, const std::string& what) {
    if (c.contains("ids")) {
        auto want = c["ids"].get<std::vector<TokenId>>();
        EXPECT_EQ(got, want) << what << ": " << ft::mismatches(got, want) << " mismatches";
        return;
    }
    {
        EXPECT_EQ(got.size(), c["count"].get<std::size_t>()) << what;
        EXPECT_EQ(ft::fnv_ids(got), c["fnv1a64"].get<std::string>()) << what;
    }
}

TEST_P(Reference, CasesMatch) {
    auto fx = ft::read_fixture(GetParam());
    std::filesystem::path vocab;
    if (fx.contains("vocab_in_repo")) {
        vocab = std::filesystem::path(FORGE_SOURCE_DIR) / fx["vocab_in_repo"].get<std::string>();
    } else {
        if (!ft::have_vocabs())
            GTEST_SKIP() << "../shared/data/tokenizers is absent; reference checks need the vocab files";
        vocab = ft::vocab_dir() / fx["vocab"].get<std::string>();
    }
    const Tokenizer& tok = tokenizer_for(vocab);
    bool byte_level = tok.kind().rfind("tiktoken", 0) == 0 || tok.kind() == "gpt2" ||
                      GetParam().find("gpt2") != std::string::npos ||
                      GetParam().find("cl100k") != std::string::npos ||
                      GetParam().find("o200k") != std::string::npos;
    forge::EncodeOptions all;
    all.allow_all_special = true;
    for (const auto& c : fx["cases"]) {
        std::string name = c["name"];
        std::string text = ft::case_text(c);
        // HF references always match added tokens; Forge does when they are allowed.
        auto ids = tok.encode(text, c.value("added_tokens_matched", false) ? all : forge::EncodeOptions{});
        expect_ids(c, ids, name);
        if (c.contains("decoded")) {
            EXPECT_EQ(tok.decode(ids), c["decoded"].get<std::string>()) << name << " (decode)";
        }
        if (byte_level) {
            EXPECT_EQ(tok.decode(ids), text) << name << " (round trip)";
        }
    }
    for (const auto& c : fx["special_cases"])
        expect_ids(c, tok.encode(c["text"].get<std::string>(), all), c["name"].get<std::string>());
    if (fx.contains("bos_example")) {
        forge::EncodeOptions bos;
        bos.add_special_tokens = true;
        expect_ids(fx["bos_example"], tok.encode(fx["bos_example"]["text"].get<std::string>(), bos),
                   "bos_example");
    }
}

INSTANTIATE_TEST_SUITE_P(Vocabs, Reference, ::testing::ValuesIn(ft::fixture_names()),
                         [](const auto& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Synthetic, Reference,
                         ::testing::Values("synthetic/synth_bert_wordpiece",
                                           "synthetic/synth_wordpiece_seq",
                                           "synthetic/synth_bpe_chars", "synthetic/synth_unigram",
                                           "synthetic/synth_unigram_bytes"),
                         [](const auto& info) { return info.param.substr(10); });

} // namespace
