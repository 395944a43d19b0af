// BPE trainer tests: merges equal to HF tokenizers' own trainer, trained tokenizer.json files
// that encode exactly as Hugging Face tokenizers (JS and Rust) do, determinism, errors.
// Fixtures: tests/tokenizers/bpe_trainer_fixtures, made by
// tools/tokenizers-train/make_fixtures.mjs.
#include <forge/tokenizers/bpe_trainer.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <forge/core/error.h>
#include <forge/tokenizers/tokenizer.h>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kFixtures = fs::path(FORGE_SOURCE_DIR) / "tests/tokenizers/bpe_trainer_fixtures";
const fs::path kData = fs::path(FORGE_SOURCE_DIR) / "../shared/data";

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    EXPECT_TRUE(in) << "cannot open " << p;
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

json read_json(const fs::path& p) {
    return json::parse(read_file(p));
}

// FNV-1a 64 over each value as 4 little-endian bytes (make_fixtures.mjs computes the same).
template <typename Seq> std::string fnv(const Seq& values) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (auto v : values) {
        auto u = static_cast<std::uint32_t>(v);
        for (int k = 0; k < 4; ++k) {
            h ^= (u >> (8 * k)) & 0xFF;
            h *= 0x100000001b3ull;
        }
    }
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}
std::string fnv_bytes(const std::string& s) {
    std::vector<std::uint8_t> bytes(s.begin(), s.end());
    return fnv(bytes);
}

// Trainer options from the CLI flags a fixture was made with.
forge::BpeTrainerOptions options_from_flags(const json& flags) {
    forge::BpeTrainerOptions o;
    std::vector<std::string> f = flags.get<std::vector<std::string>>();
    for (std::size_t i = 0; i < f.size(); ++i) {
        if (f[i] == "--vocab-size") {
            o.vocab_size = std::stoul(f[++i]);
        } else if (f[i] == "--min-frequency") {
            o.min_frequency = std::stoull(f[++i]);
        } else if (f[i] == "--whole-text") {
            o.split_lines = false;
        } else if (f[i] == "--pattern") {
            std::string p = f[++i];
            o.pattern = p == "cl100k" ? std::string(forge::BpeTrainerOptions::kCl100kPattern) : p;
        } else if (f[i] == "--special") {
            while (i + 1 < f.size() && f[i + 1].rfind("--", 0) != 0)
                o.special_tokens.push_back(f[++i]);
        } else {
            ADD_FAILURE() << "unknown flag in fixture: " << f[i];
        }
    }
    return o;
}

bool have_data() {
    return fs::exists(kData / "tinyshakespeare.txt") && fs::exists(kData / "mixed.txt");
}

std::vector<std::pair<std::string, std::string>> merges_of(const std::string& tokenizer_json) {
    std::vector<std::pair<std::string, std::string>> out;
    json doc = json::parse(tokenizer_json);
    for (const auto& m : doc["model"]["merges"])
        out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    return out;
}

} // namespace

// HF's trainer (Rust core) learned these merges on the same file; Forge must learn the same ones
// in the same order, ties included.
TEST(BpeTrainer, MergesEqualHfTrainer) {
    if (!have_data())
        GTEST_SKIP() << "no ../shared/data";
    for (const char* name : {"hf_trainer_shakespeare_gpt2", "hf_trainer_mixed_cl100k"}) {
        SCOPED_TRACE(name);
        json fx = read_json(kFixtures / (std::string(name) + ".json"));
        auto expected = fx["merges"].get<std::vector<std::vector<std::string>>>();
        forge::BpeTrainerOptions o;
        o.min_frequency = 0;
        o.full_byte_alphabet = false;
        if (fx["pattern"] == "cl100k")
            o.pattern = std::string(forge::BpeTrainerOptions::kCl100kPattern);
        o.vocab_size = fx["alphabet_size"].get<std::size_t>() + expected.size();
        forge::BpeTrainer trainer(o);
        trainer.add_path(kData / fx["data"].get<std::string>());
        auto bpe = trainer.train();
        auto got = merges_of(bpe.to_tokenizer_json());
        ASSERT_EQ(bpe.tokens.size(), o.vocab_size);
        ASSERT_EQ(got.size(), expected.size());
        for (std::size_t i = 0; i < got.size(); ++i) {
            ASSERT_EQ(got[i].first, expected[i][0]) << "merge " << i;
            ASSERT_EQ(got[i].second, expected[i][1]) << "merge " << i;
        }
    }
}

// Forge trains a tokenizer.json; HF tokenizers (JS and Rust, recorded in the fixture) and Forge's
// loader must give the same ids for every sample and for whole data files.
TEST(BpeTrainer, TrainedFileEncodesLikeHf) {
    if (!have_data())
        GTEST_SKIP() << "no ../shared/data";
    for (const char* name : {"shakespeare_gpt2_1000", "shakespeare_gpt2_4096", "mixed_cl100k_4096",
                             "both_gpt2_2048_whole"}) {
        SCOPED_TRACE(name);
        json fx = read_json(kFixtures / (std::string(name) + ".json"));
        forge::BpeTrainer trainer(options_from_flags(fx["flags"]));
        for (const auto& d : fx["data"])
            trainer.add_path(kData / d.get<std::string>());
        std::string text = trainer.train().to_tokenizer_json();
        // The same file the fixture's ids came from, byte for byte.
        ASSERT_EQ(fnv_bytes(text), fx["tokenizer_json_fnv"].get<std::string>());

        auto tok = forge::Tokenizer::from_tokenizer_json(text, name);
        forge::EncodeOptions all_special; // HF always matches added tokens in the input
        all_special.allow_all_special = true;
        for (const auto& s : fx["samples"]) {
            std::string sample = s["text"].get<std::string>();
            auto ids = tok.encode(sample, all_special);
            auto expected = s["ids"].get<std::vector<forge::TokenId>>();
            EXPECT_EQ(ids, expected) << "text: " << sample.substr(0, 80);
            EXPECT_EQ(tok.decode(ids), sample);
        }
        for (const auto& f : fx["files"]) {
            std::string data = read_file(kData / f["file"].get<std::string>());
            auto ids = tok.encode(data, all_special);
            EXPECT_EQ(ids.size(), f["n_ids"].get<std::size_t>()) << f["file"];
            EXPECT_EQ(fnv(ids), f["fnv"].get<std::string>()) << f["file"];
        }
    }
}

// A small case worked by hand (Sennrich et al. 2016's example): ties go to the smaller pair of
// ids, and ids of single bytes follow their GPT-2 code points (here: plain ASCII order).
TEST(BpeTrainer, HandWorkedMerges) {
    forge::BpeTrainerOptions o;
    o.vocab_size = 1000;
    o.min_frequency = 2;
    o.full_byte_alphabet = false;
    forge::BpeTrainer trainer(o);
    std::string text;
    for (auto [w, n] : std::vector<std::pair<std::string, int>>{
             {"low", 5}, {"lower", 2}, {"newest", 6}, {"widest", 3}})
        for (int i = 0; i < n; ++i)
            text += w + "\n";
    trainer.add_text(text);
    auto bpe = trainer.train();
    auto merges = merges_of(bpe.to_tokenizer_json());
    std::vector<std::pair<std::string, std::string>> expected = {
        {"e", "s"},     {"es", "t"},  {"l", "o"},    {"lo", "w"},    {"e", "w"}, {"n", "ew"},
        {"new", "est"}, {"d", "est"}, {"i", "dest"}, {"w", "idest"}, {"e", "r"}, {"low", "er"}};
    EXPECT_EQ(merges, expected);
    // Alphabet: bytes seen, in code point order: '\n' maps to U+010A, after the letters.
    EXPECT_EQ(bpe.tokens[0], "d");
    EXPECT_EQ(bpe.tokens.back(), "lower");
    EXPECT_EQ(trainer.stats().n_words, 32u);
    EXPECT_EQ(trainer.stats().n_unique_words, 5u);
}

TEST(BpeTrainer, SameResultForAnyThreadCount) {
    if (!have_data())
        GTEST_SKIP() << "no ../shared/data";
    std::string data = read_file(kData / "mixed.txt");
    for (bool split_lines : {true, false}) {
        std::string first;
        for (int threads : {1, 3}) {
            forge::BpeTrainerOptions o;
            o.vocab_size = 3000;
            o.split_lines = split_lines;
            o.n_threads = threads;
            o.special_tokens = {"<|endoftext|>"};
            forge::BpeTrainer trainer(o);
            trainer.add_text(data);
            std::string text = trainer.train().to_tokenizer_json();
            if (first.empty())
                first = text;
            else
                EXPECT_EQ(fnv_bytes(text), fnv_bytes(first))
                    << threads << " threads, split_lines " << split_lines;
        }
    }
}

TEST(BpeTrainer, SpecialTokensComeFirstAndAreCutFromTheText) {
    forge::BpeTrainerOptions o;
    o.vocab_size = 300;
    o.special_tokens = {"<|endoftext|>", "<pad>"};
    forge::BpeTrainer trainer(o);
    std::string text;
    for (int i = 0; i < 50; ++i)
        text += "hello<|endoftext|>world<pad><pad>";
    trainer.add_text(text);
    auto bpe = trainer.train();
    ASSERT_GE(bpe.tokens.size(), 258u);
    EXPECT_EQ(bpe.tokens[0], "<|endoftext|>");
    EXPECT_EQ(bpe.tokens[1], "<pad>");
    for (std::size_t i = 2; i < bpe.tokens.size(); ++i) { // no merge learned from special text
        if (bpe.tokens[i].size() > 1) {
            EXPECT_EQ(bpe.tokens[i].find('<'), std::string::npos) << bpe.tokens[i];
        }
    }
    EXPECT_NE(std::find(bpe.tokens.begin(), bpe.tokens.end(), "hello"), bpe.tokens.end());
    EXPECT_NE(std::find(bpe.tokens.begin(), bpe.tokens.end(), "world"), bpe.tokens.end());

    json doc = json::parse(bpe.to_tokenizer_json());
    ASSERT_EQ(doc["added_tokens"].size(), 2u);
    EXPECT_EQ(doc["added_tokens"][1]["content"], "<pad>");
    EXPECT_EQ(doc["added_tokens"][1]["id"], 1);
    EXPECT_EQ(doc["added_tokens"][1]["special"], true);
    EXPECT_EQ(doc["model"]["vocab"]["<pad>"], 1);

    auto tok = forge::Tokenizer::from_tokenizer_json(bpe.to_tokenizer_json());
    forge::EncodeOptions allow;
    allow.allow_all_special = true;
    auto ids = tok.encode("hello<pad>world", allow);
    ASSERT_EQ(ids.size(), 3u);
    EXPECT_EQ(ids[1], 1);
}

TEST(BpeTrainer, FullByteAlphabetEncodesUnseenBytes) {
    forge::BpeTrainerOptions o;
    o.vocab_size = 300;
    forge::BpeTrainer trainer(o);
    trainer.add_text("aaaa bbbb aaaa bbbb");
    auto bpe = trainer.train();
    auto tok = forge::Tokenizer::from_tokenizer_json(bpe.to_tokenizer_json());
    std::string unseen = "\x01\x7f z \xc3\xa9 \xf0\x9f\x98\x80";
    auto ids = tok.encode(unseen);
    EXPECT_EQ(ids.size(), unseen.size()); // one byte token each: nothing unseen was merged
    EXPECT_EQ(tok.decode(ids), unseen);
}

// cl100k's `\s*[\r\n]+` keeps "\n\n" in one piece, but only when lines are not split apart.
TEST(BpeTrainer, WholeTextLearnsNewlineRuns) {
    std::string text;
    for (int i = 0; i < 100; ++i)
        text += "para\n\nnext\n\n";
    for (bool split_lines : {true, false}) {
        forge::BpeTrainerOptions o;
        o.vocab_size = 270;
        o.split_lines = split_lines;
        o.pattern = std::string(forge::BpeTrainerOptions::kCl100kPattern);
        forge::BpeTrainer trainer(o);
        trainer.add_text(text);
        auto bpe = trainer.train();
        bool has = std::find(bpe.tokens.begin(), bpe.tokens.end(), "\n\n") != bpe.tokens.end();
        EXPECT_EQ(has, !split_lines);
    }
}

TEST(BpeTrainer, FoldersAreReadRecursivelyLikeTheirFiles) {
    fs::path dir = fs::temp_directory_path() /
                   ("forge_bpe_trainer_test_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir / "sub");
    std::ofstream(dir / "a.txt") << "the cat sat on the mat\n";
    std::ofstream(dir / "sub" / "b.txt") << "the dog ate the hat\n";
    forge::BpeTrainerOptions o;
    o.vocab_size = 280;
    forge::BpeTrainer from_dir(o), from_text(o);
    from_dir.add_path(dir);
    from_text.add_text("the cat sat on the mat\n");
    from_text.add_text("the dog ate the hat\n");
    EXPECT_EQ(from_dir.train().to_tokenizer_json(), from_text.train().to_tokenizer_json());
    EXPECT_EQ(from_dir.stats().n_bytes, from_text.stats().n_bytes);
    fs::remove_all(dir);
}

TEST(BpeTrainer, InvalidUtf8BytesAreWordsOfTheirOwn) {
    forge::BpeTrainerOptions o;
    o.vocab_size = 300;
    forge::BpeTrainer trainer(o);
    std::string text;
    for (int i = 0; i < 20; ++i)
        text += "ab\xff\xfe"
                "ab \xc3(ab\n";
    EXPECT_NO_THROW(trainer.add_text(text));
    auto bpe = trainer.train();
    for (const auto& t : bpe.tokens) { // no invalid byte was merged with anything
        if (t.size() > 1) {
            EXPECT_EQ(t.find_first_of("\xff\xfe\xc3"), std::string::npos);
        }
    }
    auto tok = forge::Tokenizer::from_tokenizer_json(bpe.to_tokenizer_json());
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
}

TEST(BpeTrainer, CustomPatternIsSavedAsSplit) {
    forge::BpeTrainerOptions o;
    o.vocab_size = 270;
    o.pattern = R"(\p{L}+|\p{N}|[^\p{L}\p{N}]+)";
    forge::BpeTrainer trainer(o);
    trainer.add_text("abc123 abc 456 abcabc");
    json doc = json::parse(trainer.train().to_tokenizer_json());
    EXPECT_EQ(doc["pre_tokenizer"]["type"], "Sequence");
    EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][0]["type"], "Split");
    EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], o.pattern);
    EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
    EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
    EXPECT_EQ(doc["decoder"]["type"], "ByteLevel");
}

TEST(BpeTrainer, BadInputThrows) {
    auto opts = [](auto edit) {
        forge::BpeTrainerOptions o;
        edit(o);
        return o;
    };
    EXPECT_THROW(forge::BpeTrainer(opts([](auto& o) { o.vocab_size = 100; })),
                 forge::InvalidArgument);
    EXPECT_THROW(forge::BpeTrainer(opts([](auto& o) { o.pattern = "(unclosed"; })),
                 forge::InvalidArgument);
    EXPECT_THROW(forge::BpeTrainer(opts([](auto& o) {
                     o.special_tokens = {"<a>", "<a>"};
                 })),
                 forge::InvalidArgument);
    EXPECT_THROW(forge::BpeTrainer(opts([](auto& o) { o.special_tokens = {""}; })),
                 forge::InvalidArgument);
    EXPECT_THROW(forge::BpeTrainer(opts([](auto& o) { o.n_threads = -1; })),
                 forge::InvalidArgument);
    forge::BpeTrainer t;
    EXPECT_THROW(t.add_path("/no/such/forge/path"), forge::NotFound);
    try {
        forge::BpeTrainer(opts([](auto& o) { o.pattern = "a(b"; }));
        FAIL();
    } catch (const forge::InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("regex"), std::string::npos) << e.what();
    }
}

TEST(BpeTrainer, EmptyInputGivesTheAlphabetOnly) {
    forge::BpeTrainerOptions o;
    o.vocab_size = 500;
    o.special_tokens = {"<s>"};
    forge::BpeTrainer trainer(o);
    trainer.add_text("");
    auto bpe = trainer.train();
    EXPECT_EQ(bpe.tokens.size(), 257u);
    EXPECT_TRUE(bpe.merges.empty());
    auto tok = forge::Tokenizer::from_tokenizer_json(bpe.to_tokenizer_json());
    EXPECT_EQ(tok.encode("hi").size(), 2u);
}
