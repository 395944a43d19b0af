// ONNX export against onnxruntime (the npm package onnxruntime-node, pinned in tools/onnx):
// the same ids through Transformer::forward and through the exported graph in onnxruntime
// give the same logits, for GPT-2 and Llama shapes (GQA, Llama 3 RoPE scaling, tied and untied
// heads), two sequence lengths and batch 2 through one session (the dims really are dynamic).
//
// Tolerance: |forge - ort| <= 1e-4 * max(1, max |forge|) per model. Both sides compute in
// float32 with different summation orders (OpenBLAS vs MLAS, flash attention vs softmax then
// matmul, fused vs decomposed norms), so each dot product of length K differs by ~K * 2^-24
// relative; with K <= 96 over a few layers that is ~1e-6 of the logits' scale. 1e-4 leaves
// two orders of magnitude for that and still catches any wrong op (a swapped rotation half, an
// off-by-one mask or a mis-grouped kv head moves logits by 1e-2 or more at these sizes).
//
// The binary installs onnxruntime-node with npm when tools/onnx/node_modules lacks it; when
// that fails (no network) it exits 77, which ctest reports as skipped.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <gtest/gtest.h>
#include <unistd.h>

#include <forge/core/ops.h>
#include <forge/formats/onnx_export.h>
#include <forge/models/transformer.h>

namespace forge {
namespace {

namespace fs = std::filesystem;

const fs::path kTools = fs::path(FORGE_SOURCE_DIR) / "tools" / "onnx";

int run(const std::string& cmd, std::string* out = nullptr) {
    FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
    if (!p) return -1;
    char buf[4096];
    std::string text;
    while (size_t n = fread(buf, 1, sizeof buf, p))
        text.append(buf, n);
    int rc = ::pclose(p);
    if (out) *out = text;
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

bool runtime_installed() {
    return fs::exists(kTools / "node_modules" / "onnxruntime-node" / "package.json");
}

// Random weights for every parameter, norms and biases included (the constructor sets those to
// 1 and 0, which would hide a mis-wired norm weight or bias).
void randomize(Transformer& m, uint64_t seed) {
    std::map<std::string, Tensor> sd;
    for (const auto& [name, t] : m.named_parameters()) {
        const bool vec = t.dim() == 1;
        const bool norm = vec && (name.find("norm") != std::string::npos ||
                                  name.find("ln_") != std::string::npos) &&
                          name.find("bias") == std::string::npos;
        sd[name] = Tensor::randn(t.shape(), ++seed, DType::f32, norm ? 1.0 : 0.0, vec ? 0.1 : 0.05);
    }
    m.load_state_dict(sd, true);
    m.eval();
}

struct Case {
    std::string name;
    ModelConfig cfg;
    formats::OnnxExportOptions opts = {};
};

std::vector<Case> cases() {
    ModelConfig gpt2;
    gpt2.family = ModelFamily::gpt2;
    gpt2.vocab_size = 97;
    gpt2.n_ctx = 40;
    gpt2.n_layer = 2;
    gpt2.n_embd = 48;
    gpt2.n_head = gpt2.n_head_kv = 4;
    gpt2.n_ff = 96;
    gpt2.tie_embeddings = true;

    ModelConfig gpt2_untied = gpt2;
    gpt2_untied.tie_embeddings = false;

    ModelConfig llama = gpt2;
    llama.family = ModelFamily::llama;
    llama.n_embd = 64;
    llama.n_ff = 80;
    llama.n_head = llama.n_head_kv = 4; // plain multi-head attention
    llama.tie_embeddings = false;
    llama.rope_theta = 500.0f;          // small theta: every pair turns visibly within 16 tokens

    ModelConfig gqa = llama;
    gqa.n_head = 8;                      // head_dim 8
    gqa.n_head_kv = 2;                   // 4 query heads per kv head
    gqa.tie_embeddings = true;

    ModelConfig llama3 = llama;          // Llama 3 scaling: kept, blended and slowed pairs
    llama3.n_head_kv = 2;
    llama3.rope_theta = 10000.0f;
    llama3.rope_scaling_factor = 8.0f;
    llama3.rope_low_freq_factor = 1.0f;
    llama3.rope_high_freq_factor = 4.0f;
    llama3.rope_original_max_pos = 64;   // wavelengths 6..2e4: below 16, 16..64 and above 64

    return {{"gpt2", gpt2}, {"gpt2_untied", gpt2_untied}, {"llama", llama},
            {"llama_gqa_tied", gqa}, {"llama3_rope_scaling", llama3},
            // Weights in model.onnx.data, and the newest opset (ReduceMean's axes as an input).
            {"llama3_external_opset21", llama3,
             {.opset = 21, .external_data = formats::OnnxExternalData::always}}};
}

class OnnxRuntime : public ::testing::TestWithParam<Case> {};

TEST_P(OnnxRuntime, LogitsMatchForge) {
    const Case& tc = GetParam();
    const fs::path dir = fs::temp_directory_path() /
                         ("forge_ort_" + tc.name + "_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    Transformer model(tc.cfg, 11);
    randomize(model, 1000);
    formats::export_onnx(model, dir / "model.onnx", tc.opts);
    ASSERT_EQ(fs::exists(dir / "model.onnx.data"),
              tc.opts.external_data == formats::OnnxExternalData::always);

    const int64_t B = 2;
    std::string args;
    std::vector<std::pair<int64_t, Tensor>> forge_logits;
    for (int64_t T : {5, 16}) {
        Tensor ids = Tensor::rand({B, T}, uint64_t(T), DType::f32, 0, double(tc.cfg.vocab_size - 1))
                         .to(DType::i64);
        const fs::path ids_file = dir / ("ids" + std::to_string(T) + ".bin");
        std::ofstream(ids_file, std::ios::binary)
            .write(static_cast<const char*>(ids.data_ptr()), long(ids.nbytes()));
        forge_logits.emplace_back(T, model.forward(ids));
        args += " " + std::to_string(B) + "," + std::to_string(T) + "," + ids_file.string() + "," +
                (dir / ("out" + std::to_string(T) + ".bin")).string();
    }
    std::string out;
    const std::string cmd = "node " + (kTools / "run.mjs").string() + " " +
                            (dir / "model.onnx").string() + args;
    ASSERT_EQ(run(cmd, &out), 0) << cmd << "\n" << out;

    for (const auto& [T, ref] : forge_logits) {
        const fs::path f = dir / ("out" + std::to_string(T) + ".bin");
        const int64_t n = B * T * tc.cfg.vocab_size;
        ASSERT_EQ(int64_t(fs::file_size(f)), n * 4) << f;
        std::vector<float> ort(static_cast<size_t>(n));
        std::ifstream(f, std::ios::binary).read(reinterpret_cast<char*>(ort.data()), n * 4);
        const std::vector<float> fg = ref.contiguous().to_vector<float>();
        double max_abs = 0, max_ref = 0;
        for (size_t i = 0; i < size_t(n); ++i) {
            max_abs = std::max(max_abs, double(std::fabs(fg[i] - ort[i])));
            max_ref = std::max(max_ref, double(std::fabs(fg[i])));
        }
        std::cout << "[onnxruntime] " << tc.name << " B=" << B << " T=" << T
                  << ": max |forge - ort| = " << max_abs << ", max |logit| = " << max_ref
                  << ", relative to it " << max_abs / max_ref << "\n";
        EXPECT_LE(max_abs, 1e-4 * std::max(1.0, max_ref)) << tc.name << " T=" << T;
        EXPECT_GT(max_ref, 1e-2) << "logits too small to test anything";
    }
    fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Models, OnnxRuntime, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

} // namespace
} // namespace forge

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    using forge::run;
    if (!forge::runtime_installed()) {
        std::cout << "installing onnxruntime-node into " << forge::kTools << " ...\n";
        std::string log;
        // The package's install script fetches optional CUDA binaries from nuget.org: skip it,
        // the CPU runtime ships inside the npm package.
        const int rc = run("cd '" + forge::kTools.string() +
                               "' && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund",
                           &log);
        if (rc != 0 || !forge::runtime_installed()) {
            std::cout << log << "\nSKIPPED: cannot install onnxruntime-node with npm (no network "
                                "or no npm?); run `npm ci` in tools/onnx to enable this test\n";
            return 77;
        }
    }
    return RUN_ALL_TESTS();
}
