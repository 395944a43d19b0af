// `forge info`: a model's size from its config alone (a preset with optional shape overrides,
// or a checkpoint's config.json): parameters, weight memory per dtype, KV cache per 1k tokens
// and AdamW training state. Nothing is allocated. With a GPU visible (CUDA build), also each
// device's name and memory: the driver's total/free and Forge's allocator statistics.
#include <cstdio>
#include <memory>
#include <string>

#include "command.h"
#include <forge/core/device.h>
#include <forge/models/config.h>
#include <forge/train/trainer.h>

namespace {

using namespace forge;

struct InfoOptions {
    std::string preset, model;
    int64_t n_layer = 0, n_head = 0, n_head_kv = 0, n_embd = 0, n_ff = 0, n_ctx = 0, vocab = 0;
};

std::string bytes_str(double b) {
    char buf[32];
    if (b >= 1024.0 * 1024 * 1024)
        std::snprintf(buf, sizeof(buf), "%.2f GiB", b / (1024.0 * 1024 * 1024));
    else if (b >= 1024.0 * 1024)
        std::snprintf(buf, sizeof(buf), "%.1f MiB", b / (1024.0 * 1024));
    else
        std::snprintf(buf, sizeof(buf), "%.1f KiB", b / 1024.0);
    return buf;
}

std::string with_commas(int64_t n) {
    std::string s = std::to_string(n), out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (i && (s.size() - i) % 3 == 0)
            out += ',';
        out += s[i];
    }
    return out;
}

void run_info(const InfoOptions& o) {
    FORGE_CHECK(o.preset.empty() != o.model.empty(),
                "forge info needs exactly one of --preset NAME "
                "or --model DIR");
    ModelConfig c;
    std::string what;
    if (!o.preset.empty()) {
        c = ModelConfig::preset(o.preset);
        what = "preset " + o.preset;
    } else {
        c = read_checkpoint_info(o.model).config;
        what = "model " + o.model;
    }
    const ModelConfig base = c;
    if (o.n_layer)
        c.n_layer = o.n_layer;
    if (o.n_head) {
        c.n_head = o.n_head;
        if (!o.n_head_kv && base.n_head_kv == base.n_head)
            c.n_head_kv = o.n_head;
        c.head_dim = 0;
    }
    if (o.n_head_kv)
        c.n_head_kv = o.n_head_kv;
    if (o.n_embd) {
        c.n_embd = o.n_embd;
        c.head_dim = 0;
        if (!o.n_ff)
            c.n_ff = base.n_ff * o.n_embd / base.n_embd;
    }
    if (o.n_ff)
        c.n_ff = o.n_ff;
    if (o.n_ctx)
        c.n_ctx = o.n_ctx;
    if (o.vocab)
        c.vocab_size = o.vocab;
    c.validate();

    const int64_t n = c.num_parameters();
    const double p = double(n);
    std::printf("%s: %s family, %lld layers, %lld heads (%lld kv), head_dim %lld, n_embd %lld, "
                "n_ff %lld, vocab %lld, n_ctx %lld%s\n",
                what.c_str(), c.family == ModelFamily::gpt2 ? "gpt2" : "llama",
                static_cast<long long>(c.n_layer), static_cast<long long>(c.n_head),
                static_cast<long long>(c.n_head_kv), static_cast<long long>(c.dim_head()),
                static_cast<long long>(c.n_embd), static_cast<long long>(c.n_ff),
                static_cast<long long>(c.vocab_size), static_cast<long long>(c.n_ctx),
                c.tie_embeddings ? ", tied embeddings" : "");
    std::printf("parameters: %s (%.1fM)\n", with_commas(n).c_str(), p / 1e6);
    // Block formats (ggml): q8_0 = 32 weights in 34 bytes, q4_0 = 32 weights in 18 bytes.
    std::printf("weights:  f32 %s | f16 %s | bf16 %s | q8_0 %s | q4_0 %s\n",
                bytes_str(p * 4).c_str(), bytes_str(p * 2).c_str(), bytes_str(p * 2).c_str(),
                bytes_str(p * 34.0 / 32).c_str(), bytes_str(p * 18.0 / 32).c_str());
    std::printf("KV cache per 1k tokens (per sequence): f32 %s | f16 %s | bf16 %s\n",
                bytes_str(double(c.kv_cache_bytes_per_token(DType::f32)) * 1024).c_str(),
                bytes_str(double(c.kv_cache_bytes_per_token(DType::f16)) * 1024).c_str(),
                bytes_str(double(c.kv_cache_bytes_per_token(DType::bf16)) * 1024).c_str());
    std::printf("training state, AdamW f32 (weights + grads + 2 moments, 16 B/param): %s "
                "(activations extra)\n",
                bytes_str(p * 16).c_str());
    // The GPUs this process sees, with the driver's and Forge's allocator's memory figures.
    for (int d = 0; d < cuda::device_count(); ++d) {
        const cuda::DeviceProperties gp = cuda::device_properties(d);
        const cuda::MemoryStats ms = cuda::memory_stats(d);
        std::printf("cuda:%d: %s, sm_%d%d, %d SMs, memory %s total, %s free; forge allocator: %s "
                    "allocated, %s reserved, %s peak\n",
                    d, gp.name.c_str(), gp.major, gp.minor, gp.sm_count,
                    bytes_str(double(gp.total_memory)).c_str(),
                    bytes_str(double(gp.free_memory)).c_str(),
                    bytes_str(double(ms.allocated)).c_str(),
                    bytes_str(double(ms.reserved)).c_str(), bytes_str(double(ms.peak)).c_str());
    }
}

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<InfoOptions>();
    auto* cmd = root.add_subcommand("info", "Print a model's parameter count and memory needs");
    cmd->add_option("--preset", o->preset, "preset name (tiny, gpt2, gpt2-medium, llama-1b, ...)");
    cmd->add_option("--model", o->model, "a checkpoint folder (reads its config.json)");
    cmd->add_option("--n-layer", o->n_layer, "override layers");
    cmd->add_option("--n-head", o->n_head, "override heads");
    cmd->add_option("--n-head-kv", o->n_head_kv, "override key/value heads");
    cmd->add_option("--n-embd", o->n_embd, "override width");
    cmd->add_option("--n-ff", o->n_ff, "override MLP width");
    cmd->add_option("--n-ctx", o->n_ctx, "override context");
    cmd->add_option("--vocab-size", o->vocab, "override vocabulary size");
    cmd->callback([o] { run_info(*o); });
});

} // namespace
