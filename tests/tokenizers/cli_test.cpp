// The `forge tokenize` / `forge detokenize` contract, run as a process. Skips when the forge
// binary has not been built in this build directory (it links all of libforge).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "fixture_util.h"

namespace ft = forge::test;

namespace {

std::filesystem::path forge_bin() { return std::filesystem::path(FORGE_BINARY_DIR) / "forge"; }

// Runs `forge args` with `input` on stdin; returns stdout and sets rc.
std::string run(const std::string& args, const std::string& input, int& rc) {
    auto in = std::filesystem::temp_directory_path() / ("forge_cli_in_" + std::to_string(::getpid()));
    {
        std::ofstream(in, std::ios::binary) << input;
    }
    std::string cmd = forge_bin().string() + " " + args + " < " + in.string() + " 2>/dev/null";
    FILE* p = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0)
        out.append(buf, n);
    int status = ::pclose(p);
    rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::filesystem::remove(in);
    return out;
}

#define NEED_CLI()                                                                                 \
    if (!std::filesystem::exists(forge_bin()) || !ft::have_vocabs())                               \
    GTEST_SKIP() << "needs the forge binary (cmake --build <dir> --target forge_cli) and "         \
                    "../shared/data/tokenizers"

TEST(Cli, TokenizeDetokenizeRoundTrip) {
    NEED_CLI();
    std::string cl = (ft::vocab_dir() / "cl100k_base.tiktoken").string();
    int rc = 0;
    EXPECT_EQ(run("tokenize --tokenizer " + cl, "hello world's", rc), "[15339,1917,596]\n");
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(run("tokenize --tokenizer " + cl, "a<|endoftext|>", rc), "[64,27,91,8862,728,428,91,29]\n");
    EXPECT_EQ(run("tokenize --tokenizer " + cl + " --allow-special", "a<|endoftext|>", rc), "[64,100257]\n");
    std::string text = "héllo\r\n\t👋 world\n";
    std::string ids = run("tokenize -t " + cl, text, rc);
    EXPECT_EQ(run("detokenize -t " + cl, ids, rc), text);
    EXPECT_EQ(run("tokenize -t " + cl + " --jsonl", "\"hello\"\n\n\"a\\nb\"\n", rc), "[15339]\n[64,198,65]\n");
    EXPECT_EQ(run("detokenize -t " + cl + " --jsonl", "[15339]\n[64,198,65]\n", rc), "\"hello\"\n\"a\\nb\"\n");
    // Every input kind the contract names.
    for (const char* v : {"gpt2", "gpt2/tokenizer.json", "hf/mistral.tokenizer.json",
                          "sentencepiece/albert-30k-clean.model"}) {
        std::string out = run(std::string("tokenize -t ") + (ft::vocab_dir() / v).string(), "hello world", rc);
        EXPECT_EQ(rc, 0) << v;
        EXPECT_EQ(out.front(), '[') << v;
    }
    run("detokenize -t " + cl, "[1, \"x\"]", rc);
    EXPECT_EQ(rc, 1);
    run("tokenize -t /nonexistent.tiktoken", "x", rc);
    EXPECT_EQ(rc, 1);
}

} // namespace
