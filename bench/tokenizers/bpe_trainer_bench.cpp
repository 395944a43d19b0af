// BPE trainer throughput: MB of training text per second for a full train (count + merge) on
// ../shared/data, by vocabulary size and thread count. HF tokenizers' trainer is the peer
// (tools/tokenizers-train/bench_hf_trainer.mjs prints its figure on the same files).
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <benchmark/benchmark.h>

#include <forge/tokenizers/bpe_trainer.h>

namespace {

const std::filesystem::path kData = std::filesystem::path(FORGE_SOURCE_DIR) / "../shared/data";

const std::string& text_of(const char* file) {
    static std::string cache[2];
    std::string& s = cache[std::string(file) == "mixed.txt" ? 1 : 0];
    if (s.empty()) {
        std::ifstream in(kData / file, std::ios::binary);
        std::ostringstream ss;
        ss << in.rdbuf();
        s = ss.str();
    }
    return s;
}

// args: vocab size, threads, 1 = cl100k pattern
void train(benchmark::State& state, const char* file) {
    const std::string& text = text_of(file);
    if (text.empty()) {
        state.SkipWithError("missing ../shared/data file");
        return;
    }
    forge::BpeTrainerOptions opts;
    opts.vocab_size = static_cast<std::size_t>(state.range(0));
    opts.n_threads = static_cast<int>(state.range(1));
    if (state.range(2))
        opts.pattern = std::string(forge::BpeTrainerOptions::kCl100kPattern);
    double count_s = 0, merge_s = 0;
    for (auto _ : state) {
        forge::BpeTrainer trainer(opts);
        trainer.add_text(text);
        auto bpe = trainer.train();
        benchmark::DoNotOptimize(bpe.merges.data());
        count_s += trainer.stats().count_seconds;
        merge_s += trainer.stats().merge_seconds;
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * text.size()));
    state.counters["count_s"] = count_s / static_cast<double>(state.iterations());
    state.counters["merge_s"] = merge_s / static_cast<double>(state.iterations());
}

void BM_BpeTrain_Shakespeare(benchmark::State& state) {
    train(state, "tinyshakespeare.txt");
}
void BM_BpeTrain_Mixed(benchmark::State& state) {
    train(state, "mixed.txt");
}

} // namespace

BENCHMARK(BM_BpeTrain_Shakespeare)
    ->ArgNames({"vocab", "threads", "cl100k"})
    ->Args({1000, 1, 0})
    ->Args({4096, 1, 0})
    ->Args({4096, 2, 0})
    ->Args({16384, 2, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_BpeTrain_Mixed)
    ->ArgNames({"vocab", "threads", "cl100k"})
    ->Args({4096, 1, 0})
    ->Args({4096, 2, 0})
    ->Args({4096, 2, 1})
    ->Args({16384, 2, 0})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

BENCHMARK_MAIN();
