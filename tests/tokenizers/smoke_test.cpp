// Placeholder replaced below.
#include <gtest/gtest.h>
#include <forge/tokenizers/tokenizer.h>
TEST(TokenizerSmoke, LoadsCl100k) {
    auto t = forge::Tokenizer::load(FORGE_SOURCE_DIR "/../shared/data/tokenizers/cl100k_base.tiktoken");
    auto ids = t.encode("hello world's");
    EXPECT_EQ(ids, (std::vector<forge::TokenId>{15339, 1917, 596}));
}
