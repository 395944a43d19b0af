// Data preparation: the char/byte tokenizers, the token cache and its invalidation, batch
// sampling, and the forge.toml parser.
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include <forge/tokenizers/tokenizer.h>
#include <forge/train/config_file.h>
#include <forge/train/data.h>
#include <forge/train/tokenizer_spec.h>

#include "train_util.h"

using namespace forge;
namespace fs = std::filesystem;

TEST(CharTokenizer, SavesAndLoadsThroughTokenizerLoad) {
    auto dir = test::scratch("char_tok");
    const std::string text = "héllo wörld\nhi ✓\n";
    test::write_file(dir / "a.txt", text);
    auto tt = make_training_tokenizer("char", {dir / "a.txt"}, dir / "cache");
    test::write_file(dir / "tokenizer.json", tt.file_bytes);
    Tokenizer tok = Tokenizer::load(dir / "tokenizer.json");
    // 12 distinct code points: \n space d h i l o r w é ö ✓
    EXPECT_EQ(tok.vocab_size(), distinct_chars(text).size());
    EXPECT_EQ(tok.vocab_size(), 12u);
    auto ids = tok.encode(text);
    EXPECT_EQ(ids.size(), 17u); // one id per character
    EXPECT_EQ(tok.decode(ids), text);
    EXPECT_EQ(ids[0], 3); // 'h' comes after \n, space and d in code point order
}

TEST(CharTokenizer, ShakespeareMatchesNanoGptVocabulary) {
    auto chars = distinct_chars(read_file_bytes(FORGE_SOURCE_DIR "/data/tinyshakespeare.txt"));
    EXPECT_EQ(chars.size(), 65u); // nanoGPT's shakespeare_char vocab
    EXPECT_EQ(chars[0], "\n");
}

TEST(ByteTokenizer, HasAll256Bytes) {
    auto tt = make_training_tokenizer("byte", {}, "unused");
    EXPECT_EQ(tt.tokenizer.vocab_size(), 256u);
    std::string s = "a\xff\x00z";
    s.resize(4);
    EXPECT_EQ(tt.tokenizer.decode(tt.tokenizer.encode(s)), s);
}

TEST(TokenizerSpec, RejectsUnknown) {
    EXPECT_THROW(make_training_tokenizer("words", {}, "x"), InvalidArgument);
    EXPECT_THROW(make_training_tokenizer("bpe:abc", {}, "x"), InvalidArgument);
    EXPECT_THROW(make_training_tokenizer("bpe:10", {}, "x"), InvalidArgument);
}

TEST(TokenizerSpec, BpeTrainsOnDataAndCaches) {
    auto dir = test::scratch("bpe_tok");
    test::write_file(dir / "a.txt", test::shakespeare(50000));
    auto t1 = make_training_tokenizer("bpe:300", {dir / "a.txt"}, dir / "cache");
    EXPECT_EQ(t1.tokenizer.vocab_size(), 300u);
    auto t2 = make_training_tokenizer("bpe:300", {dir / "a.txt"}, dir / "cache");
    EXPECT_EQ(t1.hash, t2.hash);
    const std::string s = "First Citizen:\nBefore we proceed";
    EXPECT_EQ(t1.tokenizer.decode(t1.tokenizer.encode(s)), s);
    EXPECT_LT(t1.tokenizer.encode(s).size(), s.size());
}

TEST(TokenCache, BuildsReusesAndInvalidates) {
    auto dir = test::scratch("cache");
    const std::string text = test::shakespeare(20000);
    test::write_file(dir / "a.txt", text);
    auto tt = make_training_tokenizer("char", {dir / "a.txt"}, dir / "cache");
    auto c1 = tokenize_cached({dir / "a.txt"}, tt.tokenizer, tt.hash, dir / "cache");
    EXPECT_TRUE(c1.rebuilt);
    EXPECT_EQ(c1.tokens.size(), int64_t(text.size()));
    EXPECT_EQ(c1.tokens.width(), 2);
    auto ids = tt.tokenizer.encode(text);
    for (int64_t i = 0; i < c1.tokens.size(); i += 97)
        ASSERT_EQ(c1.tokens[i], uint32_t(ids[size_t(i)])) << i;

    // Unchanged: reused.
    auto c2 = tokenize_cached({dir / "a.txt"}, tt.tokenizer, tt.hash, dir / "cache");
    EXPECT_FALSE(c2.rebuilt);

    // Same size and mtime, different content: the content hash catches it.
    const auto mtime = fs::last_write_time(dir / "a.txt");
    std::string edited = text;
    edited[100] = edited[100] == 'a' ? 'b' : 'a';
    test::write_file(dir / "a.txt", edited);
    fs::last_write_time(dir / "a.txt", mtime);
    auto c3 = tokenize_cached({dir / "a.txt"}, tt.tokenizer, tt.hash, dir / "cache");
    EXPECT_TRUE(c3.rebuilt);
    EXPECT_NE(c3.key, c1.key);

    // Touched only (mtime): rebuilt too (size+mtime+hash is the rule).
    fs::last_write_time(dir / "a.txt", mtime + std::chrono::seconds(5));
    EXPECT_TRUE(tokenize_cached({dir / "a.txt"}, tt.tokenizer, tt.hash, dir / "cache").rebuilt);
    EXPECT_FALSE(tokenize_cached({dir / "a.txt"}, tt.tokenizer, tt.hash, dir / "cache").rebuilt);

    // Another tokenizer: its own cache, built fresh.
    auto bt = make_training_tokenizer("byte", {}, dir / "cache");
    auto c4 = tokenize_cached({dir / "a.txt"}, bt.tokenizer, bt.hash, dir / "cache");
    EXPECT_TRUE(c4.rebuilt);
    EXPECT_NE(c4.tokens.path(), c1.tokens.path());
}

TEST(TokenCache, CorruptFileIsRebuilt) {
    auto dir = test::scratch("cache_corrupt");
    test::write_file(dir / "a.txt", test::shakespeare(5000));
    auto tt = make_training_tokenizer("char", {dir / "a.txt"}, dir / "cache");
    auto c1 = tokenize_cached({dir / "a.txt"}, tt.tokenizer, tt.hash, dir / "cache");
    const fs::path file = c1.tokens.path();
    c1 = {};
    fs::resize_file(file, 100);
    EXPECT_THROW(TokenFile::open(file), InvalidArgument);
    EXPECT_TRUE(tokenize_cached({dir / "a.txt"}, tt.tokenizer, tt.hash, dir / "cache").rebuilt);
}

TEST(DataFiles, FoldersAreListedSortedAndMissingPathsFail) {
    auto dir = test::scratch("files");
    fs::create_directories(dir / "d" / "sub");
    test::write_file(dir / "d" / "b.txt", "b");
    test::write_file(dir / "d" / "a.txt", "a");
    test::write_file(dir / "d" / ".hidden", "h");
    test::write_file(dir / "d" / "sub" / "c.txt", "c");
    auto files = list_data_files({dir / "d"});
    ASSERT_EQ(files.size(), 3u);
    EXPECT_EQ(files[0].filename(), "a.txt");
    EXPECT_EQ(files[2].filename(), "c.txt");
    EXPECT_THROW(list_data_files({dir / "nope.txt"}), NotFound);
    fs::create_directories(dir / "empty");
    EXPECT_THROW(list_data_files({dir / "empty"}), InvalidArgument);
}

TEST(BatchSampler, ShiftedTargetsSeededAndRestorable) {
    auto dir = test::scratch("sampler");
    test::write_file(dir / "a.txt", test::shakespeare(10000));
    auto tt = make_training_tokenizer("char", {dir / "a.txt"}, dir / "cache");
    auto c = tokenize_cached({dir / "a.txt"}, tt.tokenizer, tt.hash, dir / "cache");
    BatchSampler a(c.tokens, 0, 9000, 4, 8, BatchSampler::Mode::random, 7);
    BatchSampler b(c.tokens, 0, 9000, 4, 8, BatchSampler::Mode::random, 7);
    auto [x, y] = a.next();
    ASSERT_EQ(x.shape(), (Shape{4, 8}));
    auto xv = x.to_vector<int64_t>(), yv = y.to_vector<int64_t>();
    for (int r = 0; r < 4; ++r)
        for (int t = 0; t < 7; ++t)
            EXPECT_EQ(yv[size_t(r * 8 + t)], xv[size_t(r * 8 + t + 1)]);
    EXPECT_EQ(b.next().first.to_vector<int64_t>(), xv); // same seed, same batch
    auto saved = a.state();
    auto n1 = a.next().first.to_vector<int64_t>();
    b.set_state(saved);
    EXPECT_EQ(b.next().first.to_vector<int64_t>(), n1);

    BatchSampler s(c.tokens, 100, 200, 2, 10, BatchSampler::Mode::sequential, 0);
    auto sx = s.next().first.to_vector<int64_t>();
    EXPECT_EQ(sx[0], int64_t(c.tokens[100]));
    EXPECT_EQ(sx[10], int64_t(c.tokens[110]));
    EXPECT_THROW(BatchSampler(c.tokens, 0, 5, 1, 8, BatchSampler::Mode::random, 0),
                 InvalidArgument);
}

TEST(ConfigFile, ParsesTheSubset) {
    auto entries = parse_config(R"(# comment
[model]
preset = "tiny"   # trailing comment
n_layer = 4
[data]
data = ["a.txt",
        'b # not a comment.txt',]
lr = 1e-3
flag = true
steps = 2_000
name = "say \"hi\""
)",
                                "t.toml");
    ASSERT_EQ(entries.size(), 7u);
    EXPECT_EQ(entries[0].key, "preset");
    EXPECT_EQ(entries[0].values[0], "tiny");
    EXPECT_EQ(entries[1].key, "n-layer");
    EXPECT_EQ(entries[1].line, 4);
    EXPECT_TRUE(entries[2].is_array);
    EXPECT_EQ(entries[2].values, (std::vector<std::string>{"a.txt", "b # not a comment.txt"}));
    EXPECT_EQ(entries[3].values[0], "1e-3");
    EXPECT_EQ(entries[5].values[0], "2000");
    EXPECT_EQ(entries[6].values[0], "say \"hi\"");
}

TEST(ConfigFile, ErrorsNameTheLine) {
    auto expect_error = [](const char* text, const char* where) {
        try {
            parse_config(text, "f.toml");
            ADD_FAILURE() << "no error for: " << text;
        } catch (const InvalidArgument& e) {
            EXPECT_NE(std::string(e.what()).find(where), std::string::npos) << e.what();
        }
    };
    expect_error("a = 1\nb = tiny\n", "f.toml:2:");
    expect_error("a = \"open\n", "f.toml:1:");
    expect_error("a = 1\na = 2\n", "set twice");
    expect_error("a = [1, 2\n", "in the array for 'a'");
    expect_error("= 3\n", "expected `key = value`");
    expect_error("a = 1 2\n", "unexpected text");
}
