// GGUF Q8_0 / Q4_0 weights on the GPU (decode_kernels' quantized GEMVs, quant_gemv.cuh, and
// CudaLM over GGUF tensors): the GEMV on random blocks, as the file's blocks and split, against
// the CPU's dequantizer (f32 path) and against a CPU emulation of the int8 input rounding (dp4a
// path), for K not a multiple of 256 and odd row counts; whole-model logits and greedy tokens of
// random GPT-2 and Llama models against QuantLM on the CPU over the same GGUF bytes, per-op and
// persistent; the persistent step against the per-op one over 150 positions; clear errors for
// bad files and tensors.
#include "cuda/cuda_test_util.h"
#include "cuda/decode_test_util.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/decode_kernels.h"
#include <forge/core/dtype.h>
#include <forge/core/error.h>
#include <forge/formats/gguf_model.h>
#include <forge/generate/cuda_lm.h>
#include <forge/infer/quant_lm.h>
#include <forge/models/transformer.h>
#include <forge/quant/ggml_types.h>

namespace forge::test {
namespace {

namespace dk = cuda::decode;
using quant::GgmlType;

// ---------------------------------------------------------------- the GEMV

struct GemvCase {
    GgmlType type;
    int64_t n, k;
};

std::string type_name(GgmlType t) {
    return t == GgmlType::q8_0 ? "q8_0" : "q4_0";
}

// x rounded as the GPU's dp4a path rounds it (quant_gemv.cuh quantize_input): per 32 values
// q = round-to-even(x * (127 / amax)), scale amax / 127.
void quantize_input(const std::vector<float>& x, std::vector<int>& q, std::vector<float>& d) {
    const size_t K = x.size();
    q.assign(K, 0), d.assign(K / 32, 0.f);
    for (size_t b = 0; b < K / 32; ++b) {
        float amax = 0.f;
        for (size_t j = 0; j < 32; ++j)
            amax = std::max(amax, std::fabs(x[32 * b + j]));
        const float id = amax != 0.f ? 127.f / amax : 0.f;
        for (size_t j = 0; j < 32; ++j)
            q[32 * b + j] = int(std::nearbyint(x[32 * b + j] * id));
        d[b] = amax / 127.f;
    }
}

class CudaQuantGemv : public ::testing::TestWithParam<GemvCase> {};

// y = W x for W random blocks (random f32 rows quantized with llama.cpp's rounding, scales of
// several magnitudes). Errors are measured against sum |w_i x_i| of the row (the scale an f32
// accumulation's rounding is relative to).
TEST_P(CudaQuantGemv, MatchesCpuDequantizedAndInt8Emulation) {
    const auto [type, N, K] = GetParam();
    const int64_t rb = quant::row_bytes(type, K);
    std::mt19937 rng(uint32_t(N * 7 + K));
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<uint8_t> w(static_cast<size_t>(N * rb));
    std::vector<float> row(static_cast<size_t>(K)), x(static_cast<size_t>(K));
    for (int64_t r = 0; r < N; ++r) {
        const float scale = std::pow(10.f, float(r % 5) - 3.f); // 1e-3 .. 10
        for (float& v : row)
            v = g(rng) * scale;
        quant::quantize_row(type, row.data(), w.data() + r * rb, K);
    }
    for (float& v : x)
        v = g(rng);
    std::vector<int> xq;
    std::vector<float> xd;
    quantize_input(x, xq, xd);

    // Oracles in f64: the dequantized row times x; the int8 emulation block by block.
    const size_t n_rows = static_cast<size_t>(N);
    std::vector<double> ref_f32(n_rows), mag_f32(n_rows), ref_i8(n_rows), mag_i8(n_rows);
    std::vector<float> deq(static_cast<size_t>(K));
    for (int64_t r = 0; r < N; ++r) {
        quant::dequantize_row(type, w.data() + r * rb, deq.data(), K);
        double s = 0, m = 0;
        for (int64_t i = 0; i < K; ++i)
            s += double(deq[size_t(i)]) * x[size_t(i)],
                m += std::abs(double(deq[size_t(i)]) * x[size_t(i)]);
        ref_f32[size_t(r)] = s, mag_f32[size_t(r)] = m;
        // Per block: the integer dot of its values (the block dequantized with its f16 scale
        // replaced by 1.0) with xq, times the two scales.
        s = 0, m = 0;
        const int64_t bb = quant::type_info(type).block_bytes;
        std::vector<uint8_t> blk(static_cast<size_t>(bb));
        std::vector<float> ints(32);
        for (int64_t b = 0; b < K / 32; ++b) {
            std::memcpy(blk.data(), w.data() + r * rb + b * bb, size_t(bb));
            uint16_t d16;
            std::memcpy(&d16, blk.data(), 2);
            const uint16_t one = 0x3c00; // f16 1.0
            std::memcpy(blk.data(), &one, 2);
            quant::dequantize_row(type, blk.data(), ints.data(), 32);
            int64_t sumi = 0;
            for (int j = 0; j < 32; ++j)
                sumi += int64_t(ints[size_t(j)]) * xq[size_t(32 * b + j)];
            const double term = double(sumi) * double(xd[size_t(b)]) * double(f16_to_f32(d16));
            s += term, m += std::abs(term);
        }
        ref_i8[size_t(r)] = s, mag_i8[size_t(r)] = m;
    }

    // The file's blocks, and the same bytes split into values | scales (what CudaLM uploads).
    const bool q8 = type == GgmlType::q8_0;
    const dk::WeightFormat split = q8 ? dk::WeightFormat::q8_0_split : dk::WeightFormat::q4_0_split;
    std::vector<uint8_t> ws(w.size());
    dk::split_blocks(split, w.data(), N, K, ws.data());
    Tensor wd = Tensor::from_blob(w.data(), {int64_t(w.size())}, DType::u8, nullptr).to(kCuda);
    Tensor wsd = Tensor::from_blob(ws.data(), {int64_t(ws.size())}, DType::u8, nullptr).to(kCuda);
    Tensor xdev = Tensor::from_vector(x, {K}).to(kCuda);
    for (bool is_split : {false, true})
        for (bool i8 : {false, true}) {
            Tensor y = Tensor::full({N}, NAN, DType::f32, kCuda); // poisoned: every row written
            dk::gemv({.w = is_split ? wsd.data_ptr() : wd.data_ptr(),
                      .n = int(N),
                      .k = int(K),
                      .format = is_split ? split
                                : q8     ? dk::WeightFormat::q8_0
                                         : dk::WeightFormat::q4_0,
                      .int8_dot = i8,
                      .x = xdev.data<float>(),
                      .out = y.data<float>()},
                     cuda::context(0).stream);
            cuda::synchronize(0);
            const std::vector<float> got = y.to(Device::cpu()).to_vector<float>();
            const auto& ref = i8 ? ref_i8 : ref_f32;
            const auto& mag = i8 ? mag_i8 : mag_f32;
            double worst = 0;
            for (int64_t r = 0; r < N; ++r) {
                ASSERT_TRUE(std::isfinite(got[size_t(r)])) << "row " << r;
                worst = std::max(worst, std::abs(got[size_t(r)] - ref[size_t(r)]) /
                                            std::max(mag[size_t(r)], 1e-30));
            }
            const std::string what =
                std::string(is_split ? "split " : "blocks ") + (i8 ? "int8 (dp4a)" : "f32");
            // f32 sums of K products: ~sqrt(K) * 2^-24 of the magnitudes; 1e-5 leaves 10x room.
            EXPECT_LE(worst, 1e-5) << what;
            std::printf("[gemv %s %lldx%lld %s] max err / sum|wx| = %.3g\n",
                        type_name(type).c_str(), (long long)N, (long long)K, what.c_str(), worst);
        }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaQuantGemv,
    ::testing::Values(GemvCase{GgmlType::q8_0, 1, 32}, GemvCase{GgmlType::q8_0, 7, 96},
                      GemvCase{GgmlType::q8_0, 33, 800}, GemvCase{GgmlType::q8_0, 2305, 768},
                      GemvCase{GgmlType::q8_0, 769, 3104}, GemvCase{GgmlType::q8_0, 50257, 768},
                      GemvCase{GgmlType::q4_0, 1, 32}, GemvCase{GgmlType::q4_0, 7, 96},
                      GemvCase{GgmlType::q4_0, 33, 800}, GemvCase{GgmlType::q4_0, 2305, 768},
                      GemvCase{GgmlType::q4_0, 769, 3104}, GemvCase{GgmlType::q4_0, 50257, 768}),
    [](const auto& info) {
        return type_name(info.param.type) + "_N" + std::to_string(info.param.n) + "_K" +
               std::to_string(info.param.k);
    });

// ---------------------------------------------------------------- whole models


struct QuantModelCase {
    ModelFamily family;
    GgmlType type;
    bool int8_dot;
    bool persistent; // CudaLM::Options::persistent (the step as one kernel)
};

std::string case_name(const QuantModelCase& c) {
    return std::string(c.family == ModelFamily::gpt2 ? "gpt2" : "llama") + "_" + type_name(c.type) +
           (c.int8_dot ? "_dp4a" : "_f32dot") + (c.persistent ? "_persistent" : "_per_op");
}

// The persistent step takes one format for every matrix: its Llama cases use n_ff = 704 (whole
// blocks), the per-op ones keep 688 (ffn_down F16 in the file, bf16 on the GPU: mixed formats).
ModelConfig model_of(const QuantModelCase& c) {
    ModelConfig cfg = small_decode_config(c.family);
    if (c.family == ModelFamily::llama && c.persistent)
        cfg.n_ff = 704;
    return cfg;
}

class CudaQuantModel : public ::testing::TestWithParam<QuantModelCase> {};

// Teacher forcing over the same GGUF tensors (formats::gguf_writer's bytes): QuantLM on the CPU
// and CudaLM on the GPU get QuantLM's greedy tokens; a prompt, 24 steps, a second prompt after
// decode, 16 more steps. Both multiply the same Q8_0 / Q4_0 blocks by int8-rounded activations
// (QuantLM always; the GPU with int8_dot); they differ by the GPU's bf16 KV cache (2^-9 relative
// per value, as the bf16 CudaLM test's 2e-2 bound covers), f32 summation order, and an
// activation landing on the other side of an int8 rounding boundary now and then (one step is
// 1/254 of its block's range). The f32-dot path skips the activation rounding, so it differs by
// the whole int8 error of QuantLM's activations (~0.5% per value): a wider bound. Prompts run as
// decode steps here, so every eval goes through these kernels; gguf_prefill_test.cpp covers the
// batched prefill.
TEST_P(CudaQuantModel, LogitsAndArgmaxMatchQuantLmOnCpu) {
    const auto [family, type, i8, persistent] = GetParam();
    const ModelConfig cfg = model_of(GetParam());
    Transformer m(cfg, 31);
    auto ref = infer::QuantLM::from_transformer(m, type, {.n_threads = 2});
    auto lm = CudaLM::from_transformer(
        m, type, {.persistent = persistent, .int8_dot = i8, .gguf_batched_prefill = false});
    EXPECT_TRUE(lm->graph_active());
    EXPECT_EQ(lm->persistent_active(), persistent);
    const bool mixed = family == ModelFamily::llama && !persistent;
    EXPECT_EQ(lm->weight_format(), mixed ? "mixed" : type_name(type));
    auto rs = ref->new_state(150), gs = lm->new_state(150);
    const LogitAgreement r = teacher_forced_logits(*ref, *rs, *lm, *gs, i8 ? 2e-2 : 4e-2);
    std::printf("[%s] max rel logit diff %.3g, argmax decided on %d of 42 evals, %d agreed\n",
                case_name(GetParam()).c_str(), r.worst, r.decided, r.agreed);
    EXPECT_GE(r.decided, 16) << "too few steps with a clear argmax to test anything";
    EXPECT_EQ(r.agreed, r.decided);
}

// greedy() (argmax and feedback on the device, 40 steps) against QuantLM fed the same tokens: a
// token may differ from QuantLM's argmax only where QuantLM's top two logits are within twice
// the logits' max difference (the tie margin; tests/formats_interop's `parting` rule).
TEST_P(CudaQuantModel, GreedyOnDeviceMatchesQuantLm) {
    const auto [family, type, i8, persistent] = GetParam();
    const ModelConfig cfg = model_of(GetParam());
    Transformer m(cfg, 32);
    auto ref = infer::QuantLM::from_transformer(m, type, {.n_threads = 2});
    auto lm = CudaLM::from_transformer(
        m, type, {.persistent = persistent, .int8_dot = i8, .gguf_batched_prefill = false});
    EXPECT_EQ(lm->persistent_active(), persistent);
    const std::vector<TokenId> prompt = {1, 2, 3, 4, 5, 6};
    auto gs = lm->new_state(64), rs = ref->new_state(64);
    std::vector<float> lg, lr;
    lm->eval(*gs, prompt, lg);
    ref->eval(*rs, prompt, lr);
    const TokenId first = TokenId(argmax(lg));
    const std::vector<TokenId> toks = lm->greedy(*gs, first, 40);
    ASSERT_EQ(toks.size(), 40u);
    EXPECT_EQ(gs->length(), int64_t(prompt.size()) + 40);
    // The device's argmax is that of the logits eval returns (graph replays, same kernels).
    auto es = lm->new_state(64);
    lm->eval(*es, prompt, lg);
    EXPECT_GE(check_greedy_tokens(*lm, *es, *ref, *rs, first, toks), 16);
}

INSTANTIATE_TEST_SUITE_P(
    Models, CudaQuantModel,
    ::testing::Values(QuantModelCase{ModelFamily::gpt2, GgmlType::q8_0, true, false},
                      QuantModelCase{ModelFamily::gpt2, GgmlType::q4_0, true, false},
                      QuantModelCase{ModelFamily::llama, GgmlType::q8_0, true, false},
                      QuantModelCase{ModelFamily::llama, GgmlType::q4_0, true, false},
                      QuantModelCase{ModelFamily::gpt2, GgmlType::q8_0, true, true},
                      QuantModelCase{ModelFamily::gpt2, GgmlType::q4_0, true, true},
                      QuantModelCase{ModelFamily::llama, GgmlType::q8_0, true, true},
                      QuantModelCase{ModelFamily::llama, GgmlType::q4_0, true, true},
                      QuantModelCase{ModelFamily::gpt2, GgmlType::q8_0, false, false},
                      QuantModelCase{ModelFamily::llama, GgmlType::q4_0, false, false}),
    [](const auto& info) { return case_name(info.param); });

class CudaQuantSteps : public ::testing::TestWithParam<QuantModelCase> {};

// The persistent step against the kernels per op over the same quantized weights, teacher-forced
// over 150 positions (attention over up to three 64-position chunks, a prompt between decode
// steps). The same GEMV code with different K splits: f32 sums in another order, now and then
// an activation rounded to the neighbouring int8 value, a K/V value to the neighbouring bf16.
TEST_P(CudaQuantSteps, PersistentMatchesPerOpKernels) {
    const QuantModelCase c = GetParam();
    const ModelConfig cfg = model_of(c);
    Transformer m(cfg, 35);
    auto fused = CudaLM::from_transformer(m, c.type, {.gguf_batched_prefill = false});
    auto per_op =
        CudaLM::from_transformer(m, c.type, {.persistent = false, .gguf_batched_prefill = false});
    ASSERT_TRUE(fused->persistent_active());
    ASSERT_FALSE(per_op->persistent_active());
    auto fs = fused->new_state(cfg.n_ctx), ps = per_op->new_state(cfg.n_ctx);
    const LogitAgreement r =
        teacher_forced_logits(*per_op, *ps, *fused, *fs, 1e-2, kLongScript);
    EXPECT_EQ(fs->length(), 149);
    std::printf("[%s] persistent vs per-op: max rel logit diff %.3g, %d of 142 decided\n",
                case_name(c).c_str(), r.worst, r.decided);
    EXPECT_GE(r.decided, 60);
}

INSTANTIATE_TEST_SUITE_P(
    Models, CudaQuantSteps,
    ::testing::Values(QuantModelCase{ModelFamily::gpt2, GgmlType::q8_0, true, true},
                      QuantModelCase{ModelFamily::llama, GgmlType::q4_0, true, true}),
    [](const auto& info) { return case_name(info.param); });

// A GGUF file on disk, as `forge convert` writes it, through from_gguf: the same logits as
// from_transformer's in-memory bytes; then the file truncated, and one that is not there.
TEST(CudaQuantGguf, FileLoadsAndBadFilesThrowClearly) {
    const ModelConfig cfg = small_decode_config(ModelFamily::gpt2);
    Transformer m(cfg, 33);
    const auto dir = std::filesystem::temp_directory_path() / "forge_cuda_quant_test";
    std::filesystem::create_directories(dir);
    const auto path = dir / "m.gguf";
    formats::save_gguf(m, nullptr, path, GgmlType::q4_0, "test");
    auto a = CudaLM::from_gguf(path), b = CudaLM::from_transformer(m, GgmlType::q4_0);
    auto sa = a->new_state(8), sb = b->new_state(8);
    std::vector<float> la, lb;
    a->eval(*sa, std::vector<TokenId>{3, 4, 5}, la);
    b->eval(*sb, std::vector<TokenId>{3, 4, 5}, lb);
    EXPECT_EQ(la, lb);

    const auto cut = dir / "cut.gguf";
    std::filesystem::copy_file(path, cut, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(cut, std::filesystem::file_size(path) / 2);
    try {
        CudaLM::from_gguf(cut);
        ADD_FAILURE() << "a truncated file loaded";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("cut.gguf"), std::string::npos) << e.what();
    }
    EXPECT_THROW(CudaLM::from_gguf(dir / "missing.gguf"), Error);
    std::filesystem::remove_all(dir);
}

// Tensors the kernels cannot take, through the Lookup constructor: named in the message.
TEST(CudaQuantGguf, MissingOrMisshapenTensorsAreNamed) {
    const ModelConfig cfg = small_decode_config(ModelFamily::gpt2);
    Transformer m(cfg, 34);
    const std::vector<uint8_t> bytes = formats::gguf_writer(m, nullptr, GgmlType::q8_0).bytes();
    const formats::GgufFile file = formats::GgufFile::parse(bytes, "<test>");
    auto lookup = [&](const std::string& drop, bool reshape) {
        return [&file, drop, reshape](const std::string& name) -> std::optional<infer::TensorRef> {
            const formats::GgufTensorInfo* t = file.find_tensor(name);
            if (!t || (name == drop && !reshape))
                return std::nullopt;
            infer::TensorRef r{t->type, t->ne, t->data, false};
            if (name == drop) // same bytes, claimed as a different shape
                r.ne = {r.ne[0] / 2, r.ne[1] * 2};
            return r;
        };
    };
    auto message = [&](const infer::QuantLM::Lookup& l) {
        try {
            CudaLM lm(cfg, l, CudaLM::Options{});
        } catch (const InvalidArgument& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_NE(message(lookup("blk.1.ffn_up.weight", false)).find("'blk.1.ffn_up.weight'"),
              std::string::npos);
    const std::string shape = message(lookup("blk.2.attn_qkv.weight", true));
    EXPECT_NE(shape.find("blk.2.attn_qkv.weight has shape [128, 1536]"), std::string::npos)
        << shape;
}

} // namespace
} // namespace forge::test
