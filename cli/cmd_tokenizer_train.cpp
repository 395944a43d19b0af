// `forge tokenizer train`: trains a byte-level BPE tokenizer on text files or folders and writes
// a Hugging Face tokenizer.json. Encoding with it is `forge tokenize`'s job.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "command.h"
#include <forge/core/error.h>
#include <forge/tokenizers/bpe_trainer.h>

namespace {

struct TrainArgs {
    std::vector<std::string> data;
    std::size_t vocab_size = 4096;
    std::string out;
    std::vector<std::string> specials;
    std::uint64_t min_frequency = 2;
    std::string pattern = "gpt2";
    bool whole_text = false;
    bool seen_bytes_only = false;
    int threads = 0;
    bool quiet = false;
};

void run_train(const TrainArgs& a) {
    forge::BpeTrainerOptions opts;
    opts.vocab_size = a.vocab_size;
    opts.special_tokens = a.specials;
    opts.min_frequency = a.min_frequency;
    if (a.pattern == "gpt2")
        opts.pattern = std::string(forge::BpeTrainerOptions::kGpt2Pattern);
    else if (a.pattern == "cl100k")
        opts.pattern = std::string(forge::BpeTrainerOptions::kCl100kPattern);
    else
        opts.pattern = a.pattern;
    opts.split_lines = !a.whole_text;
    opts.full_byte_alphabet = !a.seen_bytes_only;
    opts.n_threads = a.threads;

    forge::BpeTrainer trainer(opts);
    for (const auto& path : a.data)
        trainer.add_path(path);
    forge::TrainedBpe bpe = trainer.train();
    bpe.save(a.out);
    if (!a.quiet) {
        const auto& s = trainer.stats();
        double mb = static_cast<double>(s.n_bytes) / 1e6;
        double total = s.count_seconds + s.merge_seconds;
        std::fprintf(stderr,
                     "wrote %s: %zu tokens (%zu merges, %zu special) from %.2f MB, %llu words "
                     "(%llu distinct); counting %.3f s, merging %.3f s, %.1f MB/s\n",
                     a.out.c_str(), bpe.tokens.size(), bpe.merges.size(), bpe.special_tokens.size(),
                     mb, static_cast<unsigned long long>(s.n_words),
                     static_cast<unsigned long long>(s.n_unique_words), s.count_seconds,
                     s.merge_seconds, total > 0 ? mb / total : 0.0);
        if (bpe.tokens.size() < opts.vocab_size)
            std::fprintf(stderr,
                         "note: stopped below --vocab-size %zu: no pair occurs --min-frequency "
                         "%llu times any more\n",
                         opts.vocab_size, static_cast<unsigned long long>(opts.min_frequency));
    }
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    // `forge tokenizer` may be shared with other tokenizer verbs: reuse it if it exists.
    auto found = root.get_subcommands([](CLI::App* app) { return app->get_name() == "tokenizer"; });
    CLI::App* group = found.empty()
                          ? root.add_subcommand("tokenizer", "tokenizer tools (train, ...)")
                          : found.front();
    group->require_subcommand(1);
    auto args = std::make_shared<TrainArgs>();
    auto* cmd = group->add_subcommand(
        "train", "train a byte-level BPE tokenizer and write a Hugging Face tokenizer.json");
    cmd->add_option("--data", args->data, "text files or folders (read recursively)")
        ->required()
        ->expected(1, -1);
    cmd->add_option("--vocab-size", args->vocab_size,
                    "vocabulary size, counting special tokens and the 256 byte symbols")
        ->required();
    cmd->add_option("--out", args->out, "tokenizer.json to write")->required();
    cmd->add_option("--special", args->specials,
                    "special tokens (ids 0, 1, ... in this order), e.g. '<|endoftext|>'")
        ->expected(0, -1);
    cmd->add_option("--min-frequency", args->min_frequency, "stop when no pair occurs this often")
        ->capture_default_str();
    cmd->add_option("--pattern", args->pattern, "pre-tokenizer: gpt2, cl100k, or a PCRE2 regex")
        ->capture_default_str();
    cmd->add_flag("--whole-text", args->whole_text,
                  "pre-split whole files instead of line by line (learns tokens like \"\\n\\n\")");
    cmd->add_flag("--seen-bytes-only", args->seen_bytes_only,
                  "only bytes seen in the data join the vocabulary (not all 256)");
    cmd->add_option("--threads", args->threads, "counting threads (0: all)")->capture_default_str();
    cmd->add_flag("--quiet", args->quiet, "print nothing on success");
    cmd->callback([args] { run_train(*args); });
});
