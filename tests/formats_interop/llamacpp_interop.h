// Shared by the llama.cpp interop tests (gguf_llamacpp*_test.cpp): node-llama-cpp's install and
// greedy decoding (tools/llamacpp), Forge's greedy decoding on a loaded model, and the two small
// deterministic models with real vocabularies the tests write. Test code only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <sentencepiece_trainer.h>

#include <forge/autograd/autograd.h>
#include <forge/core/error.h>
#include <forge/core/ops.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>
#include <forge/tokenizers/bpe_trainer.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge::interop {

namespace fs = std::filesystem;

inline const fs::path kSrc = FORGE_SOURCE_DIR;
inline const fs::path kTool = kSrc / "tools/llamacpp";
inline const fs::path kWork = fs::path(FORGE_BINARY_DIR) / "gguf_interop";
inline constexpr int kTokens = 16;
inline const std::string kPromptText = "ROMEO: What light through yonder window";

/// The command's stdout (and whatever it redirects there); *rc is pclose's status.
inline std::string run(const std::string& cmd, int* rc) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) {
        *rc = -1;
        return out;
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
        out.append(buf, n);
    *rc = pclose(p);
    return out;
}

/// node-llama-cpp installed (from the committed package-lock.json), or why not.
inline std::string ensure_llamacpp() {
    if (fs::exists(kTool / "node_modules/node-llama-cpp/package.json"))
        return "";
    int rc = 0;
    run("node --version >/dev/null 2>&1", &rc);
    if (rc != 0)
        return "node is not installed";
    std::string log = run("cd '" + kTool.string() + "' && npm ci --no-audit --no-fund 2>&1", &rc);
    if (rc != 0)
        return "npm ci failed (is the npm registry reachable?): " + log.substr(0, 400);
    return "";
}

struct LlamaCpp {
    std::vector<int64_t> prompt, tokens;
};

/// llama.cpp's greedy continuation (tools/llamacpp/greedy.mjs) of `value`, a prompt given as
/// "--ids 1,2,3" or "--text ...", with the prompt ids it used.
inline LlamaCpp llamacpp_greedy(const fs::path& gguf, const std::string& mode,
                                const std::string& value) {
    int rc = 0;
    const std::string cmd = "node '" + (kTool / "greedy.mjs").string() + "' '" + gguf.string() +
                            "' " + std::to_string(kTokens) + " " + mode + " '" + value + "' 2>&1";
    std::string out = run(cmd, &rc);
    if (rc != 0)
        throw std::runtime_error("llama.cpp failed on " + gguf.string() + ":\n" + out);
    // The JSON is the last line (anything else is the binary's logging).
    size_t at = out.rfind("{\"prompt\"");
    if (at == std::string::npos)
        throw std::runtime_error("no JSON from greedy.mjs:\n" + out);
    auto j = nlohmann::json::parse(out.substr(at));
    return {j["prompt"].get<std::vector<int64_t>>(), j["tokens"].get<std::vector<int64_t>>()};
}

/// Forge's greedy continuation (full forward each step: no cache, no sampler, nothing shared
/// with llama.cpp but the file).
inline std::vector<int64_t> forge_greedy(Transformer& m, std::vector<int64_t> ids, int n) {
    NoGradGuard g;
    std::vector<int64_t> out;
    for (int i = 0; i < n; ++i) {
        Tensor logits = m.forward(Tensor::from_vector(ids, {1, int64_t(ids.size())}, DType::i64));
        Tensor last = logits.select(1, int64_t(ids.size()) - 1).contiguous();
        const float* p = last.data<float>();
        int64_t best = 0;
        for (int64_t v = 1; v < last.numel(); ++v)
            if (p[v] > p[best])
                best = v;
        out.push_back(best);
        ids.push_back(best);
    }
    return out;
}

/// What llama.cpp's greedy run should print for `prompt` on the model Forge loaded: Forge's
/// greedy tokens, cut before an end-of-generation token (greedy.mjs's evaluate() stops there
/// and leaves it out).
inline std::vector<int64_t> forge_expected(const LoadedModel& back,
                                           const std::vector<int64_t>& prompt) {
    std::vector<int64_t> want = forge_greedy(*back.model, prompt, kTokens);
    if (back.tokenizer)
        if (auto eos = back.tokenizer->eos_id())
            if (auto it = std::find(want.begin(), want.end(), int64_t(*eos)); it != want.end())
                want.erase(it, want.end());
    return want;
}

// Logits of a llama.cpp-like computation differ from Forge's f32 reference by rounding that
// the reference does not do: llama.cpp quantizes activations to Q8_0 (Q8_1, Q8_K) for quantized
// weights and rounds them to F16/BF16 for F16/BF16 weights, keeps its KV cache in F16 and
// takes GELU from an F16 table. On these models (logits of about 2), Forge's engine, which
// rounds activations the same way, is measured within 0.03-0.05 of the reference per logit, so
// within about 0.1 on the difference of two. Two greedy runs may therefore part where the
// reference's logits for the two tokens differ by less than that, and nowhere else.
inline constexpr float kRoundingTie = 0.1f;

// The first token where `theirs` parts from `ours` (an ended run reads as `eos`), and how much
// the reference's logits prefer ours there: nullopt when the runs are equal.
struct Parting {
    size_t at;
    int64_t ours, theirs;
    float margin;
};
inline std::optional<Parting> parting(Transformer& ref, const std::vector<int64_t>& prompt,
                               const std::vector<int64_t>& ours, const std::vector<int64_t>& theirs,
                               int64_t eos) {
    if (ours == theirs)
        return std::nullopt;
    size_t i = 0;
    while (i < ours.size() && i < theirs.size() && ours[i] == theirs[i])
        ++i;
    std::vector<int64_t> ids = prompt;
    ids.insert(ids.end(), ours.begin(), ours.begin() + int64_t(i));
    NoGradGuard g;
    Tensor logits = ref.forward(Tensor::from_vector(ids, {1, int64_t(ids.size())}, DType::i64));
    Tensor last = logits.select(1, int64_t(ids.size()) - 1).contiguous();
    const float* l = last.data<float>();
    const int64_t a = i < ours.size() ? ours[i] : eos, b = i < theirs.size() ? theirs[i] : eos;
    return Parting{i, a, b, l[a] - l[b]};
}

/// Random weights are nearly uniform; scaling the embeddings and the head makes the next token
/// clear, so greedy decoding is decided by the model, not by rounding.
inline void sharpen(Transformer& m, double embed, double blocks) {
    auto sd = m.state_dict();
    for (auto& [k, v] : sd)
        if (k.find("embed") != std::string::npos || k.find("wte") != std::string::npos ||
            k.find("lm_head") != std::string::npos)
            v = mul(v, Tensor::scalar(embed));
        else if (v.dim() == 2)
            v = mul(v, Tensor::scalar(blocks));
    m.load_state_dict(sd, true);
}

inline std::string join(const std::vector<int64_t>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i)
        s += (i ? "," : "") + std::to_string(v[i]);
    return s;
}

struct InteropModel {
    std::shared_ptr<Transformer> model;
    Tokenizer tok;
};

/// GPT-2 (LayerNorm with biases, learned positions, tied head) with a 512-token byte-level BPE
/// trained on tinyshakespeare.
inline InteropModel gpt2_model() {
    BpeTrainerOptions o;
    o.vocab_size = 512;
    o.special_tokens = {"<|endoftext|>"};
    BpeTrainer t(o);
    std::ifstream in(kSrc / "data/tinyshakespeare.txt");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    t.add_text(std::string_view(text).substr(0, 200000));
    Tokenizer tok = Tokenizer::from_tokenizer_json(t.train().to_tokenizer_json());
    ModelConfig c;
    c.family = ModelFamily::gpt2;
    c.vocab_size = 512;
    c.n_ctx = 128;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_head_kv = 4;
    c.n_embd = 128;
    c.n_ff = 512;
    auto m = std::make_shared<Transformer>(c, 42);
    sharpen(*m, 3.0, 4.0);
    m->eval();
    return {m, tok};
}

/// Llama (RMSNorm, RoPE, GQA, SwiGLU, untied head) with a 512-piece SentencePiece BPE
/// (byte fallback) trained on tinyshakespeare; the .model is written to kWork/spm.model.
inline InteropModel llama_model() {
    fs::create_directories(kWork);
    const fs::path prefix = kWork / "spm";
    auto st = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + (kSrc / "data/tinyshakespeare.txt").string() +
        " --model_prefix=" + prefix.string() +
        " --model_type=bpe --vocab_size=512 --byte_fallback=true --character_coverage=1.0 "
        "--minloglevel=2 --num_threads=1 --input_sentence_size=4000 "
        "--normalization_rule_name=identity --remove_extra_whitespaces=false");
    if (!st.ok())
        throw std::runtime_error("sentencepiece training failed: " + st.ToString());
    Tokenizer tok = Tokenizer::load(prefix.string() + ".model");
    ModelConfig c;
    c.family = ModelFamily::llama;
    c.vocab_size = 512;
    c.n_ctx = 128;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_head_kv = 2;
    c.n_embd = 256;
    c.n_ff = 512;
    c.norm_eps = 1e-5f;
    c.tie_embeddings = false;
    auto m = std::make_shared<Transformer>(c, 42);
    sharpen(*m, 6.0, 1.0);
    m->eval();
    return {m, tok};
}

} // namespace forge::interop
