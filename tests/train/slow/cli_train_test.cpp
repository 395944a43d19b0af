// End to end through the `forge` binary: a project from `forge new` trains from its forge.toml,
// flags override it, a checkpoint continues, and --init-from fine-tunes. Slow: real training.
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../train_util.h"

namespace fs = std::filesystem;

namespace {

int run(const std::string& args, const fs::path& cwd, std::string* out = nullptr) {
    const std::string cmd =
        "cd '" + cwd.string() + "' && '" FORGE_BINARY_DIR "/forge' " + args + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    std::array<char, 4096> buf{};
    std::string text;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), p)) > 0)
        text.append(buf.data(), n);
    int status = pclose(p);
    if (out)
        *out = text;
    else if (status != 0)
        std::fprintf(stderr, "%s\n", text.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

std::vector<nlohmann::json> metrics(const fs::path& p) {
    std::vector<nlohmann::json> out;
    std::ifstream in(p);
    std::string line;
    while (std::getline(in, line))
        out.push_back(nlohmann::json::parse(line));
    return out;
}

} // namespace

TEST(CliTrain, ProjectTrainResumeFineTune) {
    if (!fs::exists(FORGE_BINARY_DIR "/forge"))
        GTEST_SKIP() << "build the forge_cli target first";
    auto dir = forge::test::scratch("cli_e2e");
    forge::test::write_file(dir / "corpus.txt", forge::test::shakespeare(60000));
    ASSERT_EQ(run("new proj --data corpus.txt", dir), 0);
    const fs::path proj = dir / "proj";
    const std::string small = " --n-layer 2 --n-embd 32 --n-head 2 --seq-len 16 --batch 4 "
                              "--eval-every 10 --eval-iters 2 --threads 1";
    std::string out;
    ASSERT_EQ(run("train --steps 20" + small, proj, &out), 0) << out;
    ASSERT_TRUE(fs::exists(proj / "out" / "model.safetensors")) << out;
    auto m = metrics(proj / "out" / "metrics.jsonl"); // metrics_out from forge.toml
    ASSERT_EQ(m.size(), 3u) << out;                   // steps 0, 10, 20
    for (const char* k : {"step", "train_loss", "val_loss", "tokens_per_s", "elapsed_s"})
        EXPECT_TRUE(m.back().contains(k)) << k;
    EXPECT_EQ(m.back()["step"], 20);
    EXPECT_LT(m.back()["val_loss"].get<double>(), m.front()["val_loss"].get<double>());

    // Continue the same run further (its saved options, a longer schedule).
    ASSERT_EQ(run("train --resume out --steps 30 --metrics-out more.jsonl", proj, &out), 0) << out;
    EXPECT_NE(out.find("resumed"), std::string::npos) << out;
    auto more = metrics(proj / "more.jsonl");
    ASSERT_FALSE(more.empty());
    EXPECT_EQ(more.back()["step"], 30);

    // Fine-tune from the checkpoint on new data.
    forge::test::write_file(dir / "other.txt", forge::test::shakespeare(60000).substr(30000));
    ASSERT_EQ(run("train --init-from out --data ../other.txt --steps 5 --out ft --eval-every 0 "
                  "--eval-iters 2 --batch 4 --seq-len 16 --threads 1 --metrics-out ft.jsonl",
                  proj, &out),
              0)
        << out;
    EXPECT_TRUE(fs::exists(proj / "ft" / "trainer_state.json"));
}
