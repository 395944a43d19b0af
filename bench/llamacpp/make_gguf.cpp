// Writes a Llama-architecture GGUF with random weights (uniform, std 0.02; norms 1) for the
// side-by-side speed comparison with llama.cpp: every matrix (token_embd and output included)
// in one type, as `llama-quantize --pure` would leave it, llama.cpp's metadata keys, and a
// placeholder SentencePiece vocabulary (<unk>, <s>, </s>, the 256 byte tokens, then filler) so
// llama.cpp loads it. Usage: quant_make_gguf SHAPE TYPE OUT.gguf   (SHAPE: llama-120m |
// llama-320m; TYPE: f32 f16 q8_0 q4_0 q4_k ...). Not a test fixture: the files are large.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>
#include <forge/quant/ggml_types.h>

using namespace forge;
using forge::formats::GgufType;
using forge::formats::GgufValue;
using forge::quant::GgmlType;

namespace {

struct Shape {
    int64_t n_layer, n_embd, n_head, n_ff, vocab = 32000, n_ctx = 2048;
};

// llama.cpp's general.file_type (enum llama_ftype) for an all-one-type file.
uint32_t file_type(GgmlType t) {
    switch (t) {
    case GgmlType::f32: return 0;
    case GgmlType::f16: return 1;
    case GgmlType::q4_0: return 2;
    case GgmlType::q4_1: return 3;
    case GgmlType::q8_0: return 7;
    case GgmlType::q4_k: return 15;
    case GgmlType::q5_k: return 17;
    case GgmlType::q6_k: return 18;
    case GgmlType::bf16: return 32;
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) try {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s llama-120m|llama-320m TYPE OUT.gguf\n", argv[0]);
        return 2;
    }
    const std::string shape_name = argv[1];
    Shape s;
    if (shape_name == "llama-120m") s = {12, 768, 12, 2048};
    else if (shape_name == "llama-320m") s = {20, 1024, 16, 2816};
    else throw InvalidArgument("unknown shape " + shape_name);
    const GgmlType type = quant::parse_type(argv[2]);

    formats::GgufWriter w;
    auto u32 = [&](const std::string& k, uint32_t v) { w.set(k, GgufValue::u32(v)); };
    w.set("general.architecture", GgufValue::str("llama"));
    w.set("general.name", GgufValue::str("forge-bench-" + shape_name));
    u32("general.file_type", file_type(type));
    u32("llama.context_length", uint32_t(s.n_ctx));
    u32("llama.embedding_length", uint32_t(s.n_embd));
    u32("llama.block_count", uint32_t(s.n_layer));
    u32("llama.feed_forward_length", uint32_t(s.n_ff));
    u32("llama.attention.head_count", uint32_t(s.n_head));
    u32("llama.attention.head_count_kv", uint32_t(s.n_head));
    u32("llama.rope.dimension_count", uint32_t(s.n_embd / s.n_head));
    u32("llama.vocab_size", uint32_t(s.vocab));
    w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(1e-5f));
    w.set("llama.rope.freq_base", GgufValue::f32(10000.f));
    std::vector<GgufValue> toks, scores, types;
    for (int64_t i = 0; i < s.vocab; ++i) {
        std::string t;
        int32_t ty = 1; // normal
        if (i == 0) t = "<unk>", ty = 2;
        else if (i == 1) t = "<s>", ty = 3;
        else if (i == 2) t = "</s>", ty = 3;
        else if (i < 3 + 256) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "<0x%02X>", unsigned(i - 3));
            t = buf, ty = 6; // byte
        } else {
            t = "\xE2\x96\x81t" + std::to_string(i); // "▁t<i>"
        }
        toks.push_back(GgufValue::str(t));
        scores.push_back(GgufValue::f32(-float(i)));
        types.push_back(GgufValue::i32(ty));
    }
    w.set("tokenizer.ggml.model", GgufValue::str("llama"));
    w.set("tokenizer.ggml.tokens", GgufValue::array(GgufType::string, std::move(toks)));
    w.set("tokenizer.ggml.scores", GgufValue::array(GgufType::f32, std::move(scores)));
    w.set("tokenizer.ggml.token_type", GgufValue::array(GgufType::i32, std::move(types)));
    u32("tokenizer.ggml.bos_token_id", 1);
    u32("tokenizer.ggml.eos_token_id", 2);
    u32("tokenizer.ggml.unknown_token_id", 0);

    uint64_t seed = 1;
    auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
        const int64_t rb = quant::row_bytes(type, cols);
        std::vector<uint8_t> data(size_t(rows * rb));
        std::vector<float> row(static_cast<size_t>(cols));
        for (int64_t r = 0; r < rows; ++r) {
            uint64_t x = ++seed * 0x9E3779B97F4A7C15ull + 1;
            for (auto& f : row) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                f = (float(x >> 40) * 0x1p-24f * 2.f - 1.f) * 0.0346f;
            }
            quant::quantize_row(type, row.data(), data.data() + r * rb, cols);
        }
        w.add_tensor(name, {cols, rows}, type, data);
    };
    auto ones = [&](const std::string& name, int64_t n) {
        std::vector<float> v(static_cast<size_t>(n), 1.f);
        std::vector<uint8_t> data(size_t(n) * 4);
        std::memcpy(data.data(), v.data(), data.size());
        w.add_tensor(name, {n}, GgmlType::f32, data);
    };
    const int64_t C = s.n_embd;
    mat("token_embd.weight", s.vocab, C);
    for (int64_t l = 0; l < s.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        ones(p + "attn_norm.weight", C);
        mat(p + "attn_q.weight", C, C);
        mat(p + "attn_k.weight", C, C);
        mat(p + "attn_v.weight", C, C);
        mat(p + "attn_output.weight", C, C);
        ones(p + "ffn_norm.weight", C);
        mat(p + "ffn_gate.weight", s.n_ff, C);
        mat(p + "ffn_up.weight", s.n_ff, C);
        mat(p + "ffn_down.weight", C, s.n_ff);
    }
    ones("output_norm.weight", C);
    mat("output.weight", s.vocab, C);
    w.write(argv[3]);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
}
