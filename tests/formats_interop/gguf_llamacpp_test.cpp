// Interop with llama.cpp itself (label slow): Forge writes GGUFs of small deterministic llama and
// gpt2 models with real vocabularies, llama.cpp (node-llama-cpp 3.21.1's prebuilt CPU binary,
// tools/llamacpp/greedy.mjs) decodes greedily from the same prompt, and its tokens must equal
// Forge's greedy tokens on the weights it loads back from the same file (so quantized types are
// compared on the same quantized weights): F32 and F16 exactly, quantized types up to a
// rounding tie (llamacpp_interop.h, kRoundingTie). llama.cpp's tokenization of a text prompt must equal
// Forge's tokenizer loaded from the GGUF. Installs the npm package when missing; skips (77) when
// npm or node is unavailable.
#include <cmath>
#include <iostream>

#include <gtest/gtest.h>

#include <forge/formats/gguf_model.h>

#include "formats_interop/llamacpp_interop.h"

using namespace forge;
using namespace forge::formats;
using namespace forge::interop;
using quant::GgmlType;

namespace {

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
        const std::string& text = kPromptText;
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
            const std::vector<int64_t> want = forge_expected(back, prompt);
            LlamaCpp by_ids = llamacpp_greedy(p, "--ids", join(prompt));
            std::cout << "[interop] " << tag << " " << tname << ": llama.cpp " << join(by_ids.tokens)
                      << (by_ids.tokens == want ? " == " : " != ") << "forge " << join(want) << "\n";
            if (type == GgmlType::f32 || type == GgmlType::f16) {
                EXPECT_EQ(by_ids.tokens, want);
                continue;
            }
            // Quantized weights: llama.cpp also rounds the activations (Q8_0 / Q8_K), Forge's
            // reference does not, so the runs may part only where the reference's two logits
            // are tied within that rounding.
            const auto eos = back.tokenizer->eos_id();
            ASSERT_TRUE(eos);
            if (const auto part = parting(*back.model, prompt, want, by_ids.tokens, *eos)) {
                std::cout << "[interop]   parts at token " << part->at << ", logit margin "
                          << part->margin << "\n";
                EXPECT_LE(std::fabs(part->margin), kRoundingTie)
                    << "llama.cpp parts from Forge at token " << part->at
                    << " where the reference's logits are not tied";
            }
        }
    }
};

} // namespace

TEST_F(GgufLlamaCpp, Gpt2WithByteLevelBpe) {
    InteropModel m = gpt2_model();
    check(*m.model, m.tok, "gpt2");
}

TEST_F(GgufLlamaCpp, LlamaWithSentencePiece) {
    InteropModel m = llama_model();
    check(*m.model, m.tok, "llama");
}
