// Tokenizer throughput: single-thread encode and decode MB/s for every vocabulary in
// ../shared/data/tokenizers on tinyshakespeare.txt and mixed.txt, encode_batch thread scaling, and
// a 1 MB word without spaces (the quadratic-BPE trap). Peers run side by side from
// tools/tokenizers/bench_peers.mjs; figures go in docs/PERF.md (## Tokenizers).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <forge/tokenizers/tokenizer.h>

namespace {

namespace fs = std::filesystem;

fs::path data_dir() { return fs::path(FORGE_SOURCE_DIR) / ".." / "shared" / "data"; }

const std::string& file_text(const std::string& name) {
    static std::map<std::string, std::string> cache;
    auto it = cache.find(name);
    if (it == cache.end()) {
        std::ifstream f(data_dir() / name, std::ios::binary);
        std::ostringstream ss;
        ss << f.rdbuf();
        it = cache.emplace(name, ss.str()).first;
    }
    return it->second;
}

const forge::Tokenizer* tokenizer(const std::string& vocab) {
    static std::map<std::string, forge::Tokenizer> cache;
    auto it = cache.find(vocab);
    if (it == cache.end()) {
        auto p = data_dir() / "tokenizers" / vocab;
        if (!fs::exists(p))
            return nullptr;
        it = cache.emplace(vocab, forge::Tokenizer::load(p)).first;
    }
    return &it->second;
}

const char* kVocabs[] = {"r50k_base.tiktoken",   "cl100k_base.tiktoken",
                         "o200k_base.tiktoken",  "gpt2",
                         "gpt2/tokenizer.json",  "hf/cl100k_base.tokenizer.json",
                         "hf/o200k_base.tokenizer.json", "hf/mistral.tokenizer.json",
                         "sentencepiece/albert-30k-clean.model"};
const char* kFiles[] = {"tinyshakespeare.txt", "mixed.txt"};

void encode(benchmark::State& st, std::string vocab, std::string file) {
    const auto* tok = tokenizer(vocab);
    if (!tok) {
        st.SkipWithError("../shared/data/tokenizers is absent");
        return;
    }
    const std::string& text = file_text(file);
    std::size_t n_tokens = 0;
    for (auto _ : st) {
        auto ids = tok->encode(text);
        n_tokens = ids.size();
        benchmark::DoNotOptimize(ids.data());
    }
    st.SetBytesProcessed(std::int64_t(st.iterations() * text.size()));
    st.counters["tokens"] = double(n_tokens);
    st.counters["MB/s"] = benchmark::Counter(double(text.size()) / 1e6 * double(st.iterations()),
                                             benchmark::Counter::kIsRate);
}

void decode(benchmark::State& st, std::string vocab, std::string file) {
    const auto* tok = tokenizer(vocab);
    if (!tok) {
        st.SkipWithError("../shared/data/tokenizers is absent");
        return;
    }
    auto ids = tok->encode(file_text(file));
    std::size_t bytes = 0;
    for (auto _ : st) {
        auto s = tok->decode(ids);
        bytes = s.size();
        benchmark::DoNotOptimize(s.data());
    }
    st.SetBytesProcessed(std::int64_t(st.iterations() * bytes));
    st.counters["MB/s"] = benchmark::Counter(double(bytes) / 1e6 * double(st.iterations()),
                                             benchmark::Counter::kIsRate);
}

// Both files cut into 256 pieces at line ends, encoded with encode_batch on n threads.
void encode_batch(benchmark::State& st, std::string vocab) {
    const auto* tok = tokenizer(vocab);
    if (!tok) {
        st.SkipWithError("../shared/data/tokenizers is absent");
        return;
    }
    std::vector<std::string> docs;
    std::size_t total = 0;
    for (const char* f : kFiles) {
        const std::string& t = file_text(f);
        std::size_t step = t.size() / 128, pos = 0;
        while (pos < t.size()) {
            std::size_t e = std::min(t.size(), pos + step);
            e = t.find('\n', e);
            e = e == std::string::npos ? t.size() : e + 1;
            docs.push_back(t.substr(pos, e - pos));
            pos = e;
        }
        total += t.size();
    }
    int threads = int(st.range(0));
    for (auto _ : st) {
        auto out = tok->encode_batch(docs, {}, threads);
        benchmark::DoNotOptimize(out.data());
    }
    st.SetBytesProcessed(std::int64_t(st.iterations() * total));
    st.counters["MB/s"] = benchmark::Counter(double(total) / 1e6 * double(st.iterations()),
                                             benchmark::Counter::kIsRate);
}

// One 1 MB word of pseudo-random letters: one pre-tokenizer piece, so BPE must not be quadratic.
void long_word(benchmark::State& st, std::string vocab) {
    const auto* tok = tokenizer(vocab);
    if (!tok) {
        st.SkipWithError("../shared/data/tokenizers is absent");
        return;
    }
    std::string w(1 << 20, 'a');
    std::uint32_t x = 1;
    for (auto& c : w) {
        x = x * 1103515245u + 12345u;
        c = char('a' + ((x >> 16) % 26));
    }
    for (auto _ : st)
        benchmark::DoNotOptimize(tok->encode(w).data());
    st.SetBytesProcessed(std::int64_t(st.iterations() * w.size()));
}

const bool registered = [] {
    for (const char* v : kVocabs)
        for (const char* f : kFiles)
            benchmark::RegisterBenchmark((std::string("Encode/") + v + "/" + f).c_str(), encode,
                                         std::string(v), std::string(f))
                ->Unit(benchmark::kMillisecond)
                ->MinTime(1.0);
    for (const char* v : kVocabs)
        benchmark::RegisterBenchmark((std::string("Decode/") + v + "/mixed.txt").c_str(), decode,
                                     std::string(v), std::string("mixed.txt"))
            ->Unit(benchmark::kMillisecond);
    for (const char* v : {"cl100k_base.tiktoken", "o200k_base.tiktoken"}) {
        auto* b = benchmark::RegisterBenchmark((std::string("EncodeBatch/") + v).c_str(),
                                               encode_batch, std::string(v));
        b->Unit(benchmark::kMillisecond)->UseRealTime();
        for (int t = 1; t <= int(std::max(2u, std::thread::hardware_concurrency())); t *= 2)
            b->Arg(t);
    }
    for (const char* v : {"cl100k_base.tiktoken", "o200k_base.tiktoken", "hf/mistral.tokenizer.json"})
        benchmark::RegisterBenchmark((std::string("LongWord1MB/") + v).c_str(), long_word,
                                     std::string(v))
            ->Unit(benchmark::kMillisecond);
    return true;
}();

} // namespace
