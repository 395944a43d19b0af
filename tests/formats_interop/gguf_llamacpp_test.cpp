// Interop with llama.cpp itself (label slow): Forge writes GGUFs of small deterministic llama and
// gpt2 models with real vocabularies, llama.cpp (node-llama-cpp 3.21.1's prebuilt CPU binary,
// tools/llamacpp/greedy.mjs) decodes greedily from the same prompt, and its tokens must equal
// Forge's greedy tokens on the weights it loads back from the same file (so quantized types are
// compared on the same quantized weights). llama.cpp's tokenization of a text prompt must equal
// Forge's tokenizer loaded from the GGUF. Installs the npm package when missing; skips (77) when
// npm or node is unavailable.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sentencepiece_trainer.h>

#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>
#include <forge/formats/gguf_model.h>
#include <forge/models/transformer.h>
#include <forge/tokenizers/bpe_trainer.h>

using namespace forge;
using namespace forge::formats;
using quant::GgmlType;
namespace fs = std::filesystem;

namespace {

const fs::path kSrc = FORGE_SOURCE_DIR;
const fs::path kTool = kSrc / "tools/llamacpp";
const fs::path kWork = fs::path(FORGE_BINARY_DIR) / "gguf_interop";
constexpr int kTokens = 16;

std::string run(const std::string& cmd, int* rc) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) {
        *rc = -1;
        return out;
    }
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    *rc = pclose(p);
    return out;
}

// node-llama-cpp installed (from the committed package-lock.json), or why not.
std::string ensure_llamacpp() {
    if (fs::exists(kTool / "node_modules/node-llama-cpp/package.json")) return "";
    int rc = 0;
    run("node --version >/dev/null 2>&1", &rc);
    if (rc != 0) return "node is not installed";
    std::string log = run("cd '" + kTool.string() + "' && npm ci --no-audit --no-fund 2>&1", &rc);
    if (rc != 0) return "npm ci failed (is the npm registry reachable?): " + log.substr(0, 400);
    return "";
}

struct LlamaCpp {
    std::vector<int64_t> prompt, tokens;
};

LlamaCpp llamacpp_greedy(const fs::path& gguf, const std::string& mode, const std::string& value) {
    int rc = 0;
    const std::string cmd = "node '" + (kTool / "greedy.mjs").string() + "' '" + gguf.string() + "' " +
                            std::to_string(kTokens) + " " + mode + " '" + value + "' 2>&1";
    std::string out = run(cmd, &rc);
    if (rc != 0) throw std::runtime_error("llama.cpp failed on " + gguf.string() + ":\n" + out);
    // The JSON is the last line (anything else is the binary's logging).
    size_t at = out.rfind("{\"prompt\"");
    if (at == std::string::npos) throw std::runtime_error("no JSON from greedy.mjs:\n" + out);
    auto j = nlohmann::json::parse(out.substr(at));
    return {j["prompt"].get<std::vector<int64_t>>(), j["tokens"].get<std::vector<int64_t>>()};
}

// Forge's greedy continuation (full forward each step: no cache, no sampler, nothing shared
// with llama.cpp but the file).
std::vector<int64_t> forge_greedy(Transformer& m, std::vector<int64_t> ids, int n) {
    NoGradGuard g;
    std::vector<int64_t> out;
    for (int i = 0; i < n; ++i) {
        Tensor logits = m.forward(Tensor::from_vector(ids, {1, int64_t(ids.size())}, DType::i64));
        Tensor last = logits.select(1, int64_t(ids.size()) - 1).contiguous();
        const float* p = last.data<float>();
        int64_t best = 0;
        for (int64_t v = 1; v < last.numel(); ++v)
            if (p[v] > p[best]) best = v;
        out.push_back(best);
        ids.push_back(best);
    }
    return out;
}

// Random weights are nearly uniform; scaling the embeddings and the head makes the next token
// clear, so greedy decoding is decided by the model, not by rounding.
void sharpen(Transformer& m, double embed, double blocks) {
    auto sd = m.state_dict();
    for (auto& [k, v] : sd)
        if (k.find("embed") != std::string::npos || k.find("wte") != std::string::npos ||
            k.find("lm_head") != std::string::npos)
            v = mul(v, Tensor::scalar(embed));
        else if (v.dim() == 2)
            v = mul(v, Tensor::scalar(blocks));
    m.load_state_dict(sd, true);
}

std::string join(const std::vector<int64_t>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s;
}

class GgufLlamaCpp : public ::testing::Test {
  protected:
    void SetUp() override {
        const std::string why = ensure_llamacpp();
        if (!why.empty()) GTEST_SKIP() << "llama.cpp (node-llama-cpp) unavailable: " << why;
        fs::create_directories(kWork);
    }

    // Writes `m` as each type, and checks llama.cpp's greedy tokens (from ids and from text)
    // against Forge's on the weights read back from the file.
    void check(Transformer& m, const Tokenizer& tok, const std::string& tag) {
        const std::string text = "ROMEO: What light through yonder window";
        for (GgmlType type : {GgmlType::f32, GgmlType::f16, GgmlType::q8_0, GgmlType::q4_0, GgmlType::q4_k}) {
            const std::string tname(quant::type_info(type).name);
            SCOPED_TRACE(tag + " " + tname);
            const fs::path p = kWork / (tag + "-" + tname + ".gguf");
            save_gguf(m, &tok, p, type, "forge-interop-" + tag);
            LoadedModel back = load_gguf_model(p);
            ASSERT_TRUE(back.tokenizer);
            const std::vector<TokenId> enc = back.tokenizer->encode(text);
            std::vector<int64_t> prompt(enc.begin(), enc.end());

            LlamaCpp by_text = llamacpp_greedy(p, "--text", text);
            EXPECT_EQ(by_text.prompt, prompt) << "llama.cpp tokenizes the prompt differently";
            std::vector<int64_t> want = forge_greedy(*back.model, prompt, kTokens);
            // llama.cpp's evaluate() stops at an end-of-generation token (and leaves it out).
            if (auto eos = back.tokenizer->eos_id())
                if (auto it = std::find(want.begin(), want.end(), int64_t(*eos)); it != want.end())
                    want.erase(it, want.end());
            LlamaCpp by_ids = llamacpp_greedy(p, "--ids", join(prompt));
            if (type == GgmlType::q4_k) {
                // llama.cpp multiplies Q4_K weights by Q8_K-quantized activations (Forge's
                // reference: f32 activations), so long greedy runs may part where two logits
                // are close; the first token must agree, the rest is reported.
                ASSERT_FALSE(by_ids.tokens.empty());
                EXPECT_EQ(by_ids.tokens[0], want[0]);
            } else {
                EXPECT_EQ(by_ids.tokens, want);
            }
            std::cout << "[interop] " << tag << " " << tname << ": llama.cpp " << join(by_ids.tokens)
                      << (by_ids.tokens == want ? " == " : " != ") << "forge " << join(want) << "\n";
        }
    }
};

} // namespace

TEST_F(GgufLlamaCpp, Gpt2WithByteLevelBpe) {
    BpeTrainerOptions o;
    o.vocab_size = 512;
    o.special_tokens = {"<|endoftext|>"};
    BpeTrainer t(o);
    std::ifstream in(kSrc / "data/tinyshakespeare.txt");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    t.add_text(std::string_view(text).substr(0, 200000));
    const Tokenizer tok = Tokenizer::from_tokenizer_json(t.train().to_tokenizer_json());
    ModelConfig c;
    c.family = ModelFamily::gpt2;
    c.vocab_size = 512;
    c.n_ctx = 128;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_head_kv = 4;
    c.n_embd = 128;
    c.n_ff = 512;
    Transformer m(c, 42);
    sharpen(m, 3.0, 4.0);
    m.eval();
    check(m, tok, "gpt2");
}

TEST_F(GgufLlamaCpp, LlamaWithSentencePiece) {
    const fs::path prefix = kWork / "spm";
    auto st = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + (kSrc / "data/tinyshakespeare.txt").string() + " --model_prefix=" + prefix.string() +
        " --model_type=bpe --vocab_size=512 --byte_fallback=true --character_coverage=1.0 "
        "--minloglevel=2 --num_threads=1 --input_sentence_size=4000 "
        "--normalization_rule_name=identity --remove_extra_whitespaces=false");
    ASSERT_TRUE(st.ok()) << st.ToString();
    const Tokenizer tok = Tokenizer::load(prefix.string() + ".model");
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
    Transformer m(c, 42);
    sharpen(m, 6.0, 1.0);
    m.eval();
    check(m, tok, "llama");
}
