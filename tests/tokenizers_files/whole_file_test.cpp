// Whole data files (../shared/data/tinyshakespeare.txt, mixed.txt) through every vocabulary:
// the id count and FNV-1a hash must equal the reference's (tiktoken / HF tokenizers /
// SentencePiece, recorded by tools/tokenizers/gen_fixtures.mjs). Label: slow.
#include <gtest/gtest.h>

#include "tokenizers/fixture_util.h"
#include <forge/tokenizers/tokenizer.h>

namespace ft = forge::test;

namespace {

class WholeFile : public ::testing::TestWithParam<std::string> {};

TEST_P(WholeFile, MatchesReference) {
    if (!ft::have_vocabs() || !std::filesystem::exists(ft::shared_data() / "tinyshakespeare.txt"))
        GTEST_SKIP() << "../shared/data (vocab files and tinyshakespeare.txt/mixed.txt) is absent";
    auto fx = ft::read_fixture(GetParam());
    auto tok = forge::Tokenizer::load(ft::vocab_dir() / fx["vocab"].get<std::string>());
    for (const auto& [file, want] : fx["files"].items()) {
        std::string text = ft::read_all(ft::shared_data() / file);
        auto ids = tok.encode(text);
        EXPECT_EQ(ids.size(), want["count"].get<std::size_t>()) << file;
        EXPECT_EQ(ft::fnv_ids(ids), want["fnv1a64"].get<std::string>()) << file;
        // encode_batch over lines must give the same ids as line-by-line encode.
        if (file == "tinyshakespeare.txt") {
            std::vector<std::string> lines;
            std::size_t pos = 0;
            while (pos < text.size() && lines.size() < 4000) {
                std::size_t e = text.find('\n', pos);
                e = e == std::string::npos ? text.size() : e + 1;
                lines.push_back(text.substr(pos, e - pos));
                pos = e;
            }
            auto batch = tok.encode_batch(lines, {}, 2);
            ASSERT_EQ(batch.size(), lines.size());
            for (std::size_t i = 0; i < lines.size(); ++i)
                ASSERT_EQ(batch[i], tok.encode(lines[i])) << "line " << i;
        }
        // Byte-level vocabularies give the file back exactly.
        if (tok.kind().find("sentencepiece") == std::string::npos &&
            GetParam().find("mistral") == std::string::npos) {
            EXPECT_TRUE(tok.decode(ids) == text) << file << ": decode(encode(x)) != x";
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Vocabs, WholeFile, ::testing::ValuesIn(ft::fixture_names()),
                         [](const auto& info) { return info.param; });

} // namespace
