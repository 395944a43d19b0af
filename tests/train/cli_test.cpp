// `forge train / new / info` error paths through the built binary: one clear message on stderr
// and a non-zero exit, never a crash. Fast: every case fails before training starts.
#include <array>
#include <cstdio>
#include <filesystem>

#include <gtest/gtest.h>

#include "train_util.h"

namespace fs = std::filesystem;

namespace {

struct CliResult {
    int code;
    std::string out; // stdout + stderr
};

CliResult forge_cli(const std::string& args, const fs::path& cwd = FORGE_BINARY_DIR) {
    const std::string cmd =
        "cd '" + cwd.string() + "' && '" FORGE_BINARY_DIR "/forge' " + args + " 2>&1";
    CliResult r{-1, {}};
    FILE* p = popen(cmd.c_str(), "r");
    if (!p)
        return r;
    std::array<char, 4096> buf{};
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0)
        r.out.append(buf.data(), n);
    int status = pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    return r;
}

class Cli : public ::testing::Test {
  protected:
    void SetUp() override {
        if (!fs::exists(FORGE_BINARY_DIR "/forge"))
            GTEST_SKIP() << "build the forge_cli target first";
    }
    void expect_error(const std::string& args, const std::string& needle,
                      const fs::path& cwd = FORGE_BINARY_DIR) {
        CliResult r = forge_cli(args, cwd);
        EXPECT_NE(r.code, 0) << args << "\n" << r.out;
        EXPECT_LT(r.code, 128) << "crashed: " << args << "\n" << r.out;
        EXPECT_NE(r.out.find(needle), std::string::npos) << args << "\n" << r.out;
        EXPECT_EQ(r.out.find("terminate called"), std::string::npos) << r.out;
    }
};

} // namespace

TEST_F(Cli, TrainErrors) {
    auto dir = forge::test::scratch("cli_errors");
    forge::test::write_file(dir / "a.txt", forge::test::shakespeare(20000));
    const std::string data =
        " --data '" + (dir / "a.txt").string() + "' --out '" + (dir / "o").string() + "'";
    expect_error("train --data '" + (dir / "missing.txt").string() + "'", "no such file or folder");
    expect_error("train --preset nope" + data, "nope");
    expect_error("train --steps abc" + data, "bad value 'abc' for steps");
    expect_error("train --lr -1" + data, "--lr must be > 0");
    expect_error("train --tokenizer wordz" + data, "unknown tokenizer 'wordz'");
    expect_error("train --seq-len 100000" + data, "exceeds the model's context");
    expect_error("train --resume '" + (dir / "nockpt").string() + "'", "no such checkpoint folder");
    expect_error("train --bogus-flag 1" + data, "bogus");
    expect_error("train --dtype f16" + data, "--dtype f16 runs on CUDA only");
    expect_error("train --loss-scale lots" + data, "--loss-scale must be auto, dynamic, none");
    expect_error("train --batch-split on" + data, "--batch-split must be auto or off");
    // No data at all, in a folder without forge.toml.
    expect_error("train", "no training data", dir);
}

TEST_F(Cli, CorruptCheckpoint) {
    auto dir = forge::test::scratch("cli_corrupt");
    fs::create_directories(dir / "ck");
    forge::test::write_file(dir / "ck" / "config.json", "{\"model_type\": \"gpt2\", oops");
    expect_error("train --resume '" + (dir / "ck").string() + "'", "corrupt");
    expect_error("info --model '" + (dir / "ck").string() + "'", "corrupt");
}

TEST_F(Cli, BadConfigFile) {
    auto dir = forge::test::scratch("cli_config");
    forge::test::write_file(dir / "forge.toml", "steps = 10\nstepz = 3\n");
    expect_error("train", "forge.toml:2: unknown key 'stepz'", dir);
    forge::test::write_file(dir / "forge.toml", "steps = ten\n");
    expect_error("train", "forge.toml:1:", dir);
}

TEST_F(Cli, InfoAndNew) {
    CliResult r = forge_cli("info --preset gpt2");
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("124,439,808"), std::string::npos) << r.out; // HF's GPT-2 count
    EXPECT_NE(r.out.find("q4_0"), std::string::npos);
    EXPECT_NE(r.out.find("KV cache per 1k tokens"), std::string::npos);
    expect_error("info --preset gpt5", "gpt5");
    expect_error("info", "exactly one of --preset");

    auto dir = forge::test::scratch("cli_new");
    r = forge_cli("new '" + (dir / "proj").string() + "'");
    EXPECT_EQ(r.code, 0) << r.out;
    EXPECT_TRUE(fs::exists(dir / "proj" / "forge.toml"));
    EXPECT_TRUE(fs::is_directory(dir / "proj" / "data"));
    EXPECT_TRUE(fs::exists(dir / "proj" / "README.md"));
    expect_error("new '" + (dir / "proj").string() + "'", "already exists");
    expect_error("new '" + (dir / "p2").string() + "' --preset nope", "nope");
    // The scaffolded project with an empty data/ fails clearly.
    expect_error("train", "holds no files", dir / "proj");
}
