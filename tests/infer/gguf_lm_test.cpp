// QuantLM::from_gguf on a file written by GgufWriter in llama.cpp's layout (the converter's
// names, (out, in) rows, Llama Q/K rows permuted, Conv1D weights transposed): the logits equal
// forge::Transformer's on the same weights.
#include <forge/infer/quant_lm.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <unistd.h>

#include <gtest/gtest.h>

#include <forge/core/error.h>
#include <forge/core/tensor.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>
#include <forge/models/transformer.h>

using namespace forge;
using forge::formats::GgufValue;
using forge::quant::GgmlType;

namespace {

std::vector<uint8_t> bytes_of(const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
}

std::vector<float> values(const Tensor& t) {
    Tensor c = t.contiguous();
    return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

// Writes m as llama.cpp's converter would (F32 everywhere).
void write_gguf(Transformer& m, const std::filesystem::path& path) {
    const ModelConfig& c = m.config();
    const bool gpt2 = c.family == ModelFamily::gpt2;
    const std::string arch = gpt2 ? "gpt2" : "llama";
    formats::GgufWriter w;
    w.set("general.architecture", GgufValue::str(arch));
    w.set(arch + ".context_length", GgufValue::u32(uint32_t(c.n_ctx)));
    w.set(arch + ".embedding_length", GgufValue::u32(uint32_t(c.n_embd)));
    w.set(arch + ".block_count", GgufValue::u32(uint32_t(c.n_layer)));
    w.set(arch + ".feed_forward_length", GgufValue::u32(uint32_t(c.n_ff)));
    w.set(arch + ".attention.head_count", GgufValue::u32(uint32_t(c.n_head)));
    w.set(arch + ".attention.head_count_kv", GgufValue::u32(uint32_t(c.n_head_kv)));
    w.set(arch + (gpt2 ? ".attention.layer_norm_epsilon" : ".attention.layer_norm_rms_epsilon"),
          GgufValue::f32(c.norm_eps));
    w.set(arch + ".rope.freq_base", GgufValue::f32(c.rope_theta));
    auto sd = m.state_dict();
    const int64_t D = c.dim_head();
    auto put = [&](const std::string& name, const std::string& hf, int mode, int64_t heads = 0) {
        Tensor t = sd.at(hf);
        std::vector<float> v = values(t);
        if (t.dim() == 1) return w.add_tensor(name, {t.size(0)}, GgmlType::f32, bytes_of(v));
        int64_t rows = t.size(0), cols = t.size(1);
        if (mode == 1) { // Conv1D (in, out) -> (out, in)
            std::vector<float> o(v.size());
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t k = 0; k < cols; ++k) o[size_t(k * rows + r)] = v[size_t(r * cols + k)];
            v = o;
            std::swap(rows, cols);
        } else if (mode == 2) { // permute Q/K rows: per head [half 0; half 1] -> interleaved
            std::vector<float> o(v.size());
            for (int64_t h = 0; h < heads; ++h)
                for (int64_t i = 0; i < D / 2; ++i)
                    for (int64_t s = 0; s < 2; ++s)
                        std::memcpy(&o[size_t((h * D + 2 * i + s) * cols)],
                                    &v[size_t((h * D + s * (D / 2) + i) * cols)], size_t(cols) * 4);
            v = o;
        }
        w.add_tensor(name, {cols, rows}, GgmlType::f32, bytes_of(v));
    };
    if (gpt2) {
        put("token_embd.weight", "transformer.wte.weight", 0);
        put("position_embd.weight", "transformer.wpe.weight", 0);
        for (int64_t l = 0; l < c.n_layer; ++l) {
            const std::string p = "blk." + std::to_string(l) + ".", h = "transformer.h." + std::to_string(l) + ".";
            put(p + "attn_norm.weight", h + "ln_1.weight", 0);
            put(p + "attn_norm.bias", h + "ln_1.bias", 0);
            put(p + "attn_qkv.weight", h + "attn.c_attn.weight", 1);
            put(p + "attn_qkv.bias", h + "attn.c_attn.bias", 0);
            put(p + "attn_output.weight", h + "attn.c_proj.weight", 1);
            put(p + "attn_output.bias", h + "attn.c_proj.bias", 0);
            put(p + "ffn_norm.weight", h + "ln_2.weight", 0);
            put(p + "ffn_norm.bias", h + "ln_2.bias", 0);
            put(p + "ffn_up.weight", h + "mlp.c_fc.weight", 1);
            put(p + "ffn_up.bias", h + "mlp.c_fc.bias", 0);
            put(p + "ffn_down.weight", h + "mlp.c_proj.weight", 1);
            put(p + "ffn_down.bias", h + "mlp.c_proj.bias", 0);
        }
        put("output_norm.weight", "transformer.ln_f.weight", 0);
        put("output_norm.bias", "transformer.ln_f.bias", 0);
    } else {
        put("token_embd.weight", "model.embed_tokens.weight", 0);
        for (int64_t l = 0; l < c.n_layer; ++l) {
            const std::string p = "blk." + std::to_string(l) + ".", h = "model.layers." + std::to_string(l) + ".";
            put(p + "attn_norm.weight", h + "input_layernorm.weight", 0);
            put(p + "attn_q.weight", h + "self_attn.q_proj.weight", 2, c.n_head);
            put(p + "attn_k.weight", h + "self_attn.k_proj.weight", 2, c.n_head_kv);
            put(p + "attn_v.weight", h + "self_attn.v_proj.weight", 0);
            put(p + "attn_output.weight", h + "self_attn.o_proj.weight", 0);
            put(p + "ffn_norm.weight", h + "post_attention_layernorm.weight", 0);
            put(p + "ffn_gate.weight", h + "mlp.gate_proj.weight", 0);
            put(p + "ffn_up.weight", h + "mlp.up_proj.weight", 0);
            put(p + "ffn_down.weight", h + "mlp.down_proj.weight", 0);
        }
        put("output_norm.weight", "model.norm.weight", 0);
        put("output.weight", "lm_head.weight", 0);
    }
    w.write(path);
}

} // namespace

TEST(GgufLM, LogitsMatchTransformer) {
    for (ModelFamily fam : {ModelFamily::llama, ModelFamily::gpt2}) {
        ModelConfig c;
        c.family = fam;
        c.vocab_size = 80;
        c.n_ctx = 32;
        c.n_layer = 2;
        c.n_embd = 32;
        c.n_head = 4;
        c.n_head_kv = fam == ModelFamily::llama ? 2 : 4;
        c.n_ff = 64;
        c.tie_embeddings = fam == ModelFamily::gpt2;
        Transformer m(c, 3);
        std::mt19937 rng(4);
        std::normal_distribution<float> d(0.f, 0.05f);
        for (auto& [name, t] : m.named_parameters())
            for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] += d(rng);
        const auto path = std::filesystem::temp_directory_path() /
                          ("forge_gguf_lm_" + std::to_string(::getpid()) + "_" +
                           std::to_string(int(fam)) + ".gguf");
        write_gguf(m, path);
        auto lm = infer::QuantLM::from_gguf(path, {.n_threads = 2});
        EXPECT_EQ(lm->config().n_head_kv, c.n_head_kv);
        EXPECT_EQ(lm->config().tie_embeddings, c.tie_embeddings);
        const std::vector<int64_t> ids = {1, 5, 79, 0, 33, 12, 12, 40};
        const auto want = values(m.forward(Tensor::from_vector(ids, {1, 8})));
        auto st = lm->new_state(16);
        std::vector<TokenId> tids(ids.begin(), ids.end());
        std::vector<float> got;
        lm->eval_all(*st, tids, got);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i)
            ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i]))) << i;
        lm.reset();
        std::filesystem::remove(path);
    }
}

TEST(GgufLM, RejectsUnknownArchitecture) {
    formats::GgufWriter w;
    w.set("general.architecture", GgufValue::str("mamba"));
    const auto path = std::filesystem::temp_directory_path() /
                      ("forge_gguf_lm_mamba_" + std::to_string(::getpid()) + ".gguf");
    w.write(path);
    try {
        infer::QuantLM::from_gguf(path);
        FAIL();
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("mamba"), std::string::npos);
    }
    std::filesystem::remove(path);
}

// Files from the formats layer's own writer (save_gguf: llama.cpp's converter conventions) run
// on the engine with the Transformer's logits, F32 exactly and Q8_0 within activation rounding.
TEST(GgufLM, SaveGgufFilesMatchTransformer) {
    for (ModelFamily fam : {ModelFamily::llama, ModelFamily::gpt2}) {
        ModelConfig c;
        c.family = fam;
        c.vocab_size = 64;
        c.n_ctx = 32;
        c.n_layer = 2;
        c.n_embd = 64;
        c.n_head = 4;
        c.n_head_kv = fam == ModelFamily::llama ? 2 : 4;
        c.n_ff = 128;
        c.tie_embeddings = fam == ModelFamily::gpt2;
        Transformer m(c, 5);
        const std::vector<int64_t> ids = {1, 5, 63, 0, 33, 12};
        const auto want = values(m.forward(Tensor::from_vector(ids, {1, 6})));
        const auto path = std::filesystem::temp_directory_path() /
                          ("forge_gguf_lm_save_" + std::to_string(::getpid()) + "_" +
                           std::to_string(int(fam)) + ".gguf");
        formats::save_gguf(m, nullptr, path, GgmlType::f32);
        auto lm = infer::QuantLM::from_gguf(path, {.n_threads = 1});
        auto st = lm->new_state(8);
        std::vector<TokenId> tids(ids.begin(), ids.end());
        std::vector<float> got;
        lm->eval_all(*st, tids, got);
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i)
            ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i]))) << i;
        lm.reset();
        std::filesystem::remove(path);
    }
}

// A GGUF whose rope_freqs.weight is not exactly Llama 3's rule (llama.cpp applies the stored
// factors; gguf_config accepts them within 1e-3 of the rule): formats::gguf_to_model's
// Transformer applies the stored factors too, so its logits match QuantLM's over the same file
// (F32, 1e-4) at every position; with the rule's factors (the file as written, unpatched) the
// same Transformer weights are measurably off.
TEST(GgufLM, StoredRopeFactorsReachTheTransformer) {
    ModelConfig c;
    c.family = ModelFamily::llama;
    c.vocab_size = 64;
    c.n_ctx = 64;
    c.n_layer = 2;
    c.n_embd = 64;
    c.n_head = 4;
    c.n_head_kv = 2;
    c.n_ff = 128;
    c.tie_embeddings = false;
    c.rope_scaling_factor = 8.f;
    c.rope_original_max_pos = 16;
    Transformer m(c, 6);
    std::vector<uint8_t> bytes = formats::gguf_writer(m, nullptr, GgmlType::f32).bytes();
    { // the stored factors scaled by 1 + 5e-4, in place in the file's bytes
        const formats::GgufFile f = formats::GgufFile::parse(bytes);
        const formats::GgufTensorInfo* rf = f.find_tensor("rope_freqs.weight");
        ASSERT_TRUE(rf);
        const std::vector<uint8_t> stored(rf->data, rf->data + rf->nbytes);
        auto at = std::search(bytes.begin(), bytes.end(), stored.begin(), stored.end());
        ASSERT_NE(at, bytes.end());
        for (size_t i = 0; i < stored.size() / 4; ++i) {
            float x;
            std::memcpy(&x, &*at + 4 * i, 4);
            x *= 1.0005f;
            std::memcpy(&*at + 4 * i, &x, 4);
        }
    }
    const auto path = std::filesystem::temp_directory_path() /
                      ("forge_gguf_lm_ropefreqs_" + std::to_string(::getpid()) + ".gguf");
    {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    }
    auto lm = infer::QuantLM::from_gguf(path, {.n_threads = 1});
    std::vector<int64_t> ids;
    for (int64_t i = 0; i < 48; ++i) ids.push_back((i * 37 + 5) % 64);
    const std::vector<TokenId> tids(ids.begin(), ids.end());
    auto st = lm->new_state(48);
    std::vector<float> want;
    lm->eval_all(*st, tids, want);
    auto max_rel = [&](const std::vector<float>& got) {
        double m = 0;
        for (size_t i = 0; i < got.size(); ++i)
            m = std::max(m, std::fabs(double(got[i]) - want[i]) / (1 + std::fabs(want[i])));
        return m;
    };
    LoadedModel stored = formats::gguf_to_model(formats::GgufFile::open(path));
    const Tensor batch = Tensor::from_vector(ids, {1, 48});
    const double d_stored = max_rel(values(stored.model->forward(batch)));
    const double d_rule = max_rel(values(m.forward(batch)));
    EXPECT_LE(d_stored, 1e-4);
    EXPECT_GT(d_rule, 5 * d_stored) << "the patch did not change the logits enough to test";
    std::printf("stored factors: max rel diff %.3g; the rule's: %.3g\n", d_stored, d_rule);
    lm.reset();
    std::filesystem::remove(path);
}
