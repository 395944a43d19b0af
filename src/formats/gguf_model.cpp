// Transformer + Tokenizer <-> GGUF with llama.cpp's names (gguf-py's constants for the `llama`
// and `gpt2` architectures). Layout differences are undone exactly: GPT-2's Conv1D weights are
// (in, out) in Forge and (out, in) rows in GGUF; Llama's q/k rows are permuted in GGUF so that
// ggml's adjacent-pair RoPE equals the HF rotate-half RoPE Forge runs. Not the GGUF byte format
// (gguf.cpp) nor the quantized engine (src/infer).
#include <forge/formats/gguf_model.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>
#include <forge/models/transformer.h>

#include "tokenizers/bpe.h"
#include "tokenizers/impl.h"
#include "tokenizers/pre_tokenizers.h"
#include "tokenizers/unicode.h"

namespace forge::formats {

namespace fs = std::filesystem;
using quant::GgmlType;

namespace {

// Token types of tokenizer.ggml.token_type (llama.cpp's, the same numbers as SentencePiece's).
enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// How a Forge tensor's data becomes the GGUF tensor's rows.
enum class Layout { same, transpose, permute_heads };

struct TensorMap {
    std::string forge, gguf;
    Layout layout = Layout::same;
    int64_t n_heads = 0; // permute_heads
};

const char* arch_name(ModelFamily f) { return f == ModelFamily::llama ? "llama" : "gpt2"; }

// Forge's (HF's) parameter name -> llama.cpp's, for every parameter of `cfg`'s model.
std::vector<TensorMap> tensor_maps(const ModelConfig& cfg, const std::map<std::string, Tensor>& sd) {
    std::vector<TensorMap> out;
    const bool llama = cfg.family == ModelFamily::llama;
    const std::string layers = llama ? "model.layers." : "transformer.h.";
    static const std::vector<std::tuple<const char*, const char*, Layout>> kLlamaBlock = {
        {"input_layernorm.weight", "attn_norm.weight", Layout::same},
        {"self_attn.q_proj.weight", "attn_q.weight", Layout::permute_heads},
        {"self_attn.k_proj.weight", "attn_k.weight", Layout::permute_heads},
        {"self_attn.v_proj.weight", "attn_v.weight", Layout::same},
        {"self_attn.o_proj.weight", "attn_output.weight", Layout::same},
        {"post_attention_layernorm.weight", "ffn_norm.weight", Layout::same},
        {"mlp.gate_proj.weight", "ffn_gate.weight", Layout::same},
        {"mlp.up_proj.weight", "ffn_up.weight", Layout::same},
        {"mlp.down_proj.weight", "ffn_down.weight", Layout::same},
    };
    static const std::vector<std::tuple<const char*, const char*, Layout>> kGpt2Block = {
        {"ln_1.weight", "attn_norm.weight", Layout::same},
        {"ln_1.bias", "attn_norm.bias", Layout::same},
        {"attn.c_attn.weight", "attn_qkv.weight", Layout::transpose},
        {"attn.c_attn.bias", "attn_qkv.bias", Layout::same},
        {"attn.c_proj.weight", "attn_output.weight", Layout::transpose},
        {"attn.c_proj.bias", "attn_output.bias", Layout::same},
        {"ln_2.weight", "ffn_norm.weight", Layout::same},
        {"ln_2.bias", "ffn_norm.bias", Layout::same},
        {"mlp.c_fc.weight", "ffn_up.weight", Layout::transpose},
        {"mlp.c_fc.bias", "ffn_up.bias", Layout::same},
        {"mlp.c_proj.weight", "ffn_down.weight", Layout::transpose},
        {"mlp.c_proj.bias", "ffn_down.bias", Layout::same},
    };
    static const std::map<std::string, std::string> kGlobal = {
        {"model.embed_tokens.weight", "token_embd.weight"},
        {"model.norm.weight", "output_norm.weight"},
        {"transformer.wte.weight", "token_embd.weight"},
        {"transformer.wpe.weight", "position_embd.weight"},
        {"transformer.ln_f.weight", "output_norm.weight"},
        {"transformer.ln_f.bias", "output_norm.bias"},
        {"lm_head.weight", "output.weight"},
    };
    for (const auto& [name, t] : sd) {
        if (auto it = kGlobal.find(name); it != kGlobal.end()) {
            out.push_back({name, it->second});
            continue;
        }
        FORGE_ASSERT(name.rfind(layers, 0) == 0);
        const size_t dot = name.find('.', layers.size());
        const std::string layer = name.substr(layers.size(), dot - layers.size());
        const std::string rest = name.substr(dot + 1);
        bool found = false;
        for (const auto& [hf, gg, lay] : llama ? kLlamaBlock : kGpt2Block)
            if (rest == hf) {
                TensorMap m{name, "blk." + layer + "." + gg, lay};
                if (lay == Layout::permute_heads)
                    m.n_heads = rest.find("q_proj") != std::string::npos ? cfg.n_head : cfg.n_head_kv;
                out.push_back(m);
                found = true;
            }
        FORGE_ASSERT(found);
    }
    return out;
}

// Row-major (R, C) f32 in Forge's layout -> the GGUF tensor's rows, and back.
std::vector<float> to_gguf_layout(const TensorMap& m, const float* x, int64_t R, int64_t C) {
    std::vector<float> y(size_t(R * C));
    if (m.layout == Layout::same) {
        std::memcpy(y.data(), x, y.size() * sizeof(float));
    } else if (m.layout == Layout::transpose) { // (in=R, out=C) -> (out, in)
        for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < C; ++c) y[size_t(c * R + r)] = x[r * C + c];
    } else { // rows (h, j, i) with j in {0,1}, i < D/2 -> (h, i, j)
        const int64_t D = R / m.n_heads, half = D / 2;
        for (int64_t h = 0; h < m.n_heads; ++h)
            for (int64_t j = 0; j < 2; ++j)
                for (int64_t i = 0; i < half; ++i)
                    std::memcpy(&y[size_t((h * D + i * 2 + j) * C)], x + (h * D + j * half + i) * C,
                                size_t(C) * sizeof(float));
    }
    return y;
}

void from_gguf_layout(const TensorMap& m, const float* y, float* x, int64_t R, int64_t C) {
    if (m.layout == Layout::same) {
        std::memcpy(x, y, size_t(R * C) * sizeof(float));
    } else if (m.layout == Layout::transpose) {
        for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < C; ++c) x[r * C + c] = y[c * R + r];
    } else {
        const int64_t D = R / m.n_heads, half = D / 2;
        for (int64_t h = 0; h < m.n_heads; ++h)
            for (int64_t j = 0; j < 2; ++j)
                for (int64_t i = 0; i < half; ++i)
                    std::memcpy(x + (h * D + j * half + i) * C, &y[size_t((h * D + i * 2 + j) * C)],
                                size_t(C) * sizeof(float));
    }
}

// ---------------------------------------------------------------------------- tokenizer

constexpr const char* kPreGpt2 = "gpt-2";
constexpr const char* kPreLlama3 = "llama-bpe";

std::vector<std::string> string_array(const GgufFile& f, const char* key) {
    std::vector<std::string> out;
    const GgufArray& a = f.at(key).as_array();
    out.reserve(a.items.size());
    for (const auto& v : a.items) out.push_back(v.as_string());
    return out;
}

std::optional<TokenId> opt_id(const GgufFile& f, const std::string& key, size_t n_tokens) {
    const GgufValue* v = f.find(key);
    if (!v) return std::nullopt;
    const int64_t id = v->as_int();
    if (id < 0) return std::nullopt; // llama.cpp writes -1 (or leaves it out) for "none"
    FORGE_CHECK(uint64_t(id) < n_tokens, f.origin(), ": ", key, " is ", id, " but there are only ",
                n_tokens, " tokens");
    return TokenId(id);
}

bool opt_bool(const GgufFile& f, const std::string& key, bool dflt) {
    const GgufValue* v = f.find(key);
    return v ? v->as_bool() : dflt;
}

// A protobuf message writer: just what a SentencePiece ModelProto needs.
struct Proto {
    std::string b;
    void varint(uint64_t x) {
        while (x >= 0x80) {
            b.push_back(char((x & 0x7f) | 0x80));
            x >>= 7;
        }
        b.push_back(char(x));
    }
    void tag(int field, int wire) { varint(uint64_t(field) << 3 | uint64_t(wire)); }
    void bytes(int field, std::string_view s) {
        tag(field, 2);
        varint(s.size());
        b.append(s);
    }
    void integer(int field, int64_t x) {
        tag(field, 0);
        varint(uint64_t(x)); // negative int32s are 10-byte varints, as protobuf writes them
    }
    void f32(int field, float x) {
        tag(field, 5);
        char tmp[4];
        std::memcpy(tmp, &x, 4);
        b.append(tmp, 4);
    }
};

// tokenizer.ggml.model "llama": a SentencePiece BPE model (scores rank the merges; byte pieces
// are the fallback), built as a serialized ModelProto and loaded by the sentencepiece library.
std::string spm_proto(const GgufFile& f) {
    const std::vector<std::string> tokens = string_array(f, "tokenizer.ggml.tokens");
    const size_t n = tokens.size();
    const GgufValue* sv = f.find("tokenizer.ggml.scores");
    const GgufValue* tv = f.find("tokenizer.ggml.token_type");
    FORGE_CHECK(!sv || sv->as_array().items.size() == n, f.origin(),
                ": tokenizer.ggml.scores and tokenizer.ggml.tokens differ in length");
    FORGE_CHECK(!tv || tv->as_array().items.size() == n, f.origin(),
                ": tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length");
    Proto model;
    bool has_unk = false;
    for (size_t i = 0; i < n; ++i) {
        int64_t type = tv ? tv->as_array().items[i].as_int() : int64_t(kNormal);
        FORGE_CHECK(type >= kNormal && type <= kByte, f.origin(), ": token ", i, " has type ", type);
        has_unk |= type == kUnknown;
        Proto piece;
        piece.bytes(1, tokens[i]);
        piece.f32(2, sv ? float(sv->as_array().items[i].as_float()) : 0.f);
        piece.integer(3, type);
        model.bytes(1, piece.b);
    }
    FORGE_CHECK(has_unk, f.origin(), ": a SentencePiece vocabulary needs an unknown token (type 2)");
    const auto bos = opt_id(f, "tokenizer.ggml.bos_token_id", n);
    const auto eos = opt_id(f, "tokenizer.ggml.eos_token_id", n);
    const auto pad = opt_id(f, "tokenizer.ggml.padding_token_id", n);
    const auto unk = opt_id(f, "tokenizer.ggml.unknown_token_id", n);
    Proto trainer;
    trainer.integer(3, 2);   // model_type BPE
    trainer.integer(35, 1);  // byte_fallback
    trainer.integer(40, unk ? *unk : 0);
    trainer.integer(41, bos ? *bos : -1);
    trainer.integer(42, eos ? *eos : -1);
    trainer.integer(43, pad ? *pad : -1);
    if (unk) trainer.bytes(45, tokens[size_t(*unk)]);
    if (bos) trainer.bytes(46, tokens[size_t(*bos)]);
    if (eos) trainer.bytes(47, tokens[size_t(*eos)]);
    if (pad) trainer.bytes(48, tokens[size_t(*pad)]);
    model.bytes(2, trainer.b);
    Proto norm;
    norm.bytes(1, "identity");
    norm.integer(3, opt_bool(f, "tokenizer.ggml.add_space_prefix", true));
    norm.integer(4, 0); // remove_extra_whitespaces
    norm.integer(5, 1); // escape_whitespaces
    model.bytes(3, norm.b);
    return std::move(model.b);
}

// tokenizer.ggml.model "gpt2": byte-level BPE, composed as the HF tokenizer.json it came from.
std::string bpe_tokenizer_json(const GgufFile& f) {
    using json = nlohmann::json;
    const std::vector<std::string> tokens = string_array(f, "tokenizer.ggml.tokens");
    const size_t n = tokens.size();
    const GgufValue* tv = f.find("tokenizer.ggml.token_type");
    FORGE_CHECK(!tv || tv->as_array().items.size() == n, f.origin(),
                ": tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length");
    std::string pre = kPreGpt2;
    if (const GgufValue* p = f.find("tokenizer.ggml.pre")) pre = p->as_string();
    json pre_tok;
    bool ignore_merges = false;
    if (pre == kPreGpt2 || pre == "default" || pre == "gpt2") {
        pre_tok = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
    } else if (pre == kPreLlama3 || pre == "llama3" || pre == "llama-v3") {
        pre_tok = {{"type", "Sequence"},
                   {"pretokenizers",
                    {{{"type", "Split"},
                      {"pattern", {{"Regex", Tokenizer::known_pattern("cl100k_base")}}},
                      {"behavior", "Isolated"},
                      {"invert", false}},
                     {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
        ignore_merges = true;
    } else {
        throw InvalidArgument(f.origin() + ": tokenizer.ggml.pre '" + pre +
                              "' is not one Forge knows (gpt-2, default, llama-bpe)");
    }
    json vocab = json::object();
    json added = json::array();
    for (size_t i = 0; i < n; ++i) {
        const int64_t type = tv ? tv->as_array().items[i].as_int() : int64_t(kNormal);
        if (type == kControl || type == kUserDefined)
            added.push_back({{"id", i}, {"content", tokens[i]}, {"special", type == kControl}});
        else if (type != kUnused)
            vocab[tokens[i]] = i;
    }
    json merges = json::array();
    if (f.find("tokenizer.ggml.merges"))
        for (const std::string& m : string_array(f, "tokenizer.ggml.merges")) merges.push_back(m);
    json j = {{"version", "1.0"},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", pre_tok},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model",
               {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"ignore_merges", ignore_merges}}}};
    return j.dump(1);
}

// Writes tok's vocabulary as tokenizer.ggml.* for a model of n_vocab ids.
void put_tokenizer(GgufWriter& w, const Tokenizer& tok, int64_t n_vocab) {
    const Tokenizer::Impl& impl = tok.impl();
    FORGE_CHECK(int64_t(tok.vocab_size()) <= n_vocab, "[save_gguf] the tokenizer has ",
                tok.vocab_size(), " tokens, more than the model's ", n_vocab);
    std::vector<GgufValue> tokens, types;
    auto ids = [&](const char* key, std::optional<TokenId> id) {
        if (id) w.set(key, GgufValue::u32(uint32_t(*id)));
    };
    if (auto sp = tok::sentencepiece_info(impl)) {
        FORGE_CHECK(sp->is_bpe, "[save_gguf] SentencePiece model is not BPE: llama.cpp's \"llama\" "
                                "vocabulary merges by score, which only matches SentencePiece BPE");
        std::vector<GgufValue> scores;
        for (const auto& p : sp->pieces) {
            tokens.push_back(GgufValue::str(p.piece));
            scores.push_back(GgufValue::f32(p.score));
            types.push_back(GgufValue::i32(p.type));
        }
        for (int64_t i = int64_t(sp->pieces.size()); i < n_vocab; ++i) { // padding rows
            tokens.push_back(GgufValue::str("[PAD" + std::to_string(i) + "]"));
            scores.push_back(GgufValue::f32(-1000.f));
            types.push_back(GgufValue::i32(kUnused));
        }
        w.set("tokenizer.ggml.model", GgufValue::str("llama"));
        w.set("tokenizer.ggml.tokens", GgufValue::array(GgufType::string, std::move(tokens)));
        w.set("tokenizer.ggml.scores", GgufValue::array(GgufType::f32, std::move(scores)));
        w.set("tokenizer.ggml.token_type", GgufValue::array(GgufType::i32, std::move(types)));
        w.set("tokenizer.ggml.add_space_prefix", GgufValue::boolean(sp->add_dummy_prefix));
    } else {
        auto* pipe = dynamic_cast<const tok::PipelineImpl*>(&impl);
        auto* bpe = pipe ? dynamic_cast<const tok::BpeModel*>(pipe->model.get()) : nullptr;
        FORGE_CHECK(bpe && bpe->byte_level(), "[save_gguf] tokenizer '", impl.kind,
                    "' has no GGUF form: Forge writes byte-level BPE and SentencePiece vocabularies");
        std::string pre;
        if (impl.split_pattern == tok::kGpt2Pattern) pre = kPreGpt2;
        else if (impl.split_pattern == Tokenizer::known_pattern("cl100k_base")) pre = kPreLlama3;
        FORGE_CHECK(!pre.empty(), "[save_gguf] tokenizer '", impl.kind,
                    "' splits text with a pattern llama.cpp has no name for (GGUF's tokenizer.ggml.pre "
                    "knows GPT-2's and Llama 3's)");
        const tok::Vocab& vocab = bpe->vocab();
        std::map<TokenId, const SpecialToken*> specials;
        for (const auto& s : impl.specials) specials[s.id] = &s;
        for (int64_t i = 0; i < n_vocab; ++i) {
            const TokenId id = TokenId(i);
            if (auto it = specials.find(id); it != specials.end()) {
                tokens.push_back(GgufValue::str(it->second->text));
                types.push_back(GgufValue::i32(it->second->special ? kControl : kUserDefined));
            } else if (vocab.has(id)) {
                tokens.push_back(GgufValue::str(tok::bytes_to_byte_level(vocab.surface(id))));
                types.push_back(GgufValue::i32(kNormal));
            } else {
                tokens.push_back(GgufValue::str("[PAD" + std::to_string(i) + "]"));
                types.push_back(GgufValue::i32(kUnused));
            }
        }
        std::vector<GgufValue> merges;
        for (const auto& [a, b, rank] : bpe->merges())
            merges.push_back(GgufValue::str(tok::bytes_to_byte_level(vocab.surface(a)) + " " +
                                            tok::bytes_to_byte_level(vocab.surface(b))));
        w.set("tokenizer.ggml.model", GgufValue::str("gpt2"));
        w.set("tokenizer.ggml.pre", GgufValue::str(pre));
        w.set("tokenizer.ggml.tokens", GgufValue::array(GgufType::string, std::move(tokens)));
        w.set("tokenizer.ggml.token_type", GgufValue::array(GgufType::i32, std::move(types)));
        w.set("tokenizer.ggml.merges", GgufValue::array(GgufType::string, std::move(merges)));
    }
    ids("tokenizer.ggml.bos_token_id", impl.bos);
    ids("tokenizer.ggml.eos_token_id", impl.eos);
    ids("tokenizer.ggml.unknown_token_id", impl.unk);
    ids("tokenizer.ggml.padding_token_id", impl.pad);
    w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(!impl.post.prefix.empty()));
    w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(!impl.post.suffix.empty()));
}

// ---------------------------------------------------------------------------- tensors

// A GGUF tensor's values as f32 rows (ggml order: ne[0] per row).
std::vector<float> dequantize(const GgufTensorInfo& t) {
    const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
    const int64_t rows = ne0 ? t.numel() / ne0 : 0;
    std::vector<float> out(size_t(t.numel()));
    const int64_t rb = quant::row_bytes(t.type, ne0);
    for (int64_t r = 0; r < rows; ++r)
        quant::dequantize_row(t.type, t.data + r * rb, out.data() + r * ne0, ne0);
    return out;
}

std::vector<uint8_t> quantize(const std::vector<float>& x, int64_t ne0, GgmlType type) {
    const int64_t rows = ne0 ? int64_t(x.size()) / ne0 : 0;
    const int64_t rb = quant::row_bytes(type, ne0);
    std::vector<uint8_t> out(size_t(rows * rb));
    for (int64_t r = 0; r < rows; ++r)
        quant::quantize_row(type, x.data() + r * ne0, out.data() + r * rb, ne0);
    return out;
}

void check_writable(GgmlType type) {
    FORGE_CHECK(type == GgmlType::f32 || type == GgmlType::f16 || type == GgmlType::bf16 ||
                    type == GgmlType::q8_0 || type == GgmlType::q4_0 || type == GgmlType::q4_k,
                "[gguf] Forge writes F32, F16, BF16, Q8_0, Q4_0 and Q4_K, not ",
                quant::type_info(type).name);
}

// Typed metadata reads whose errors name the file and the key.
const GgufValue& key_value(const GgufFile& f, const std::string& key) { return f.at(key); }
template <typename F> auto typed(const GgufFile& f, const std::string& key, F get) {
    try {
        return get(key_value(f, key));
    } catch (const InvalidArgument& e) {
        if (std::string(e.what()).rfind(f.origin(), 0) == 0) throw;
        throw InvalidArgument(f.origin() + ": key '" + key + "': " + e.what());
    }
}
int64_t key_int(const GgufFile& f, const std::string& key) {
    return typed(f, key, [](const GgufValue& v) { return v.as_int(); });
}
double key_float(const GgufFile& f, const std::string& key) {
    return typed(f, key, [](const GgufValue& v) {
        return v.type == GgufType::f32 || v.type == GgufType::f64 ? v.as_float() : double(v.as_int());
    });
}
std::string key_string(const GgufFile& f, const std::string& key) {
    return typed(f, key, [](const GgufValue& v) { return v.as_string(); });
}

std::string arch_of(const GgufFile& f) {
    const std::string arch = key_string(f, "general.architecture");
    FORGE_CHECK(arch == "llama" || arch == "gpt2", f.origin(), ": architecture '", arch,
                "' is not supported (Forge reads llama and gpt2)");
    return arch;
}

} // namespace

// ---------------------------------------------------------------------------- public

quant::GgmlType gguf_tensor_type(int64_t ne0, size_t n_dims, GgmlType requested) {
    if (n_dims < 2) return GgmlType::f32;
    const int64_t bs = quant::type_info(requested).block_size;
    if (ne0 % bs == 0) return requested;
    if (requested == GgmlType::q4_k && ne0 % 32 == 0) return GgmlType::q8_0;
    return GgmlType::f16;
}

uint32_t gguf_file_type(GgmlType type) {
    switch (type) {
    case GgmlType::f32: return 0;
    case GgmlType::f16: return 1;
    case GgmlType::q4_0: return 2;
    case GgmlType::q4_1: return 3;
    case GgmlType::q8_0: return 7;
    case GgmlType::q4_k: return 14; // MOSTLY_Q4_K_S: every matrix Q4_K
    case GgmlType::q5_k: return 16;
    case GgmlType::q6_k: return 18;
    case GgmlType::bf16: return 32;
    }
    throw InvalidArgument("[gguf] no file type for ggml type " + std::to_string(uint32_t(type)));
}

ModelConfig gguf_config(const GgufFile& f) {
    const std::string arch = arch_of(f);
    const std::string& o = f.origin();
    ModelConfig c;
    c.family = arch == "llama" ? ModelFamily::llama : ModelFamily::gpt2;
    auto key = [&](const std::string& k) { return arch + "." + k; };
    auto count = [&](const std::string& k) {
        const int64_t v = key_int(f, key(k));
        FORGE_CHECK(v > 0 && v <= (int64_t(1) << 24), o, ": ", key(k), " is ", v,
                    ", outside (0, 16777216]");
        return v;
    };
    c.n_ctx = count("context_length");
    c.n_embd = count("embedding_length");
    c.n_layer = count("block_count");
    c.n_ff = count("feed_forward_length");
    c.n_head = count("attention.head_count");
    c.n_head_kv = f.find(key("attention.head_count_kv")) ? count("attention.head_count_kv") : c.n_head;
    const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
    FORGE_CHECK(embd && embd->ne.size() == 2, o, ": tensor 'token_embd.weight' is missing or not 2-D");
    c.vocab_size = embd->ne[1];
    if (f.find(key("vocab_size")))
        FORGE_CHECK(key_int(f, key("vocab_size")) == c.vocab_size, o, ": ", key("vocab_size"), " is ",
                    key_int(f, key("vocab_size")), " but token_embd.weight has ", c.vocab_size, " rows");
    c.tie_embeddings = f.find_tensor("output.weight") == nullptr;
    if (c.family == ModelFamily::llama) {
        c.norm_eps = float(key_float(f, key("attention.layer_norm_rms_epsilon")));
        if (f.find(key("rope.freq_base"))) c.rope_theta = float(key_float(f, key("rope.freq_base")));
        if (f.find(key("attention.key_length"))) c.head_dim = count("attention.key_length");
        if (f.find(key("rope.dimension_count"))) {
            const int64_t n_rot = key_int(f, key("rope.dimension_count"));
            FORGE_CHECK(n_rot == c.dim_head(), o, ": ", key("rope.dimension_count"), " is ", n_rot,
                        "; Forge rotates whole heads of ", c.dim_head());
        }
        if (f.find(key("rope.scaling.type"))) {
            const std::string t = key_string(f, key("rope.scaling.type"));
            FORGE_CHECK(t == "none", o, ": rope scaling '", t, "' is not supported (Llama 3's rope_freqs is)");
        }
        if (const GgufTensorInfo* rf = f.find_tensor("rope_freqs.weight")) {
            // Llama 3 scaling: llama.cpp keeps only the per-pair factors; the rule's parameters
            // come from Forge's own keys when present, else Llama 3's published ones, and must
            // reproduce the factors.
            FORGE_CHECK(rf->type == GgmlType::f32 && rf->ne.size() == 1 && rf->ne[0] * 2 == c.dim_head(),
                        o, ": tensor 'rope_freqs.weight' must be F32 with head_dim/2 values");
            const std::vector<float> want = dequantize(*rf);
            float fmax = 1;
            for (float x : want) fmax = std::max(fmax, x);
            auto num = [&](const char* k, double d) {
                const std::string name = std::string("forge.rope.llama3.") + k;
                return f.find(name) ? key_float(f, name) : d;
            };
            c.rope_scaling_factor = float(num("factor", fmax));
            c.rope_low_freq_factor = float(num("low_freq_factor", 1.0));
            c.rope_high_freq_factor = float(num("high_freq_factor", 4.0));
            c.rope_original_max_pos = int64_t(num("original_context_length", 8192));
            const std::vector<float> got = llama3_rope_factors(c);
            for (size_t i = 0; i < want.size(); ++i)
                FORGE_CHECK(std::abs(got[i] - want[i]) <= 1e-3f * std::abs(want[i]), o,
                            ": rope_freqs.weight[", i, "] is ", want[i],
                            ", which Llama 3's scaling rule does not give (", got[i], ")");
        }
    } else {
        c.norm_eps = float(key_float(f, key("attention.layer_norm_epsilon")));
        c.n_head_kv = c.n_head;
    }
    try {
        c.validate();
    } catch (const InvalidArgument& e) {
        throw InvalidArgument(o + ": " + e.what());
    }
    return c;
}

std::optional<GgufTokenizerFile> gguf_tokenizer_file(const GgufFile& f) {
    const GgufValue* m = f.find("tokenizer.ggml.model");
    if (!m) return std::nullopt;
    const std::string model = key_string(f, "tokenizer.ggml.model");
    if (model == "llama") return GgufTokenizerFile{"tokenizer.model", spm_proto(f)};
    if (model == "gpt2") return GgufTokenizerFile{"tokenizer.json", bpe_tokenizer_json(f)};
    throw InvalidArgument(f.origin() + ": tokenizer.ggml.model '" + model +
                          "' is not supported (Forge reads gpt2 and llama)");
}

std::optional<Tokenizer> gguf_tokenizer(const GgufFile& f) {
    const auto file = gguf_tokenizer_file(f);
    if (!file) return std::nullopt;
    const std::string origin = f.origin() + " (tokenizer.ggml.*)";
    std::shared_ptr<Tokenizer::Impl> impl =
        file->name == "tokenizer.model" ? tok::load_sentencepiece_proto(file->bytes, origin)
                                        : tok::load_hf_json(file->bytes, origin, "");
    // BOS/EOS/PAD and whether BOS/EOS are added are what GGUF says, not guesses from token text.
    const size_t n = f.at("tokenizer.ggml.tokens").as_array().items.size();
    const bool spm = file->name == "tokenizer.model";
    impl->bos = opt_id(f, "tokenizer.ggml.bos_token_id", n);
    impl->eos = opt_id(f, "tokenizer.ggml.eos_token_id", n);
    impl->pad = opt_id(f, "tokenizer.ggml.padding_token_id", n);
    impl->post = {};
    if (impl->bos && opt_bool(f, "tokenizer.ggml.add_bos_token", spm)) impl->post.prefix = {*impl->bos};
    if (impl->eos && opt_bool(f, "tokenizer.ggml.add_eos_token", false)) impl->post.suffix = {*impl->eos};
    return Tokenizer(std::move(impl));
}

LoadedModel gguf_to_model(const GgufFile& f) {
    const std::string& o = f.origin();
    LoadedModel out;
    out.config = gguf_config(f);
    out.dir = o;
    out.tokenizer_file = o;
    // Forge (HF) tensor shapes come from the model itself.
    out.model = std::make_shared<Transformer>(out.config);
    const std::map<std::string, Tensor> want = out.model->state_dict();
    std::map<std::string, Tensor> loaded;
    std::set<std::string> used;
    for (const TensorMap& m : tensor_maps(out.config, want)) {
        const GgufTensorInfo* t = f.find_tensor(m.gguf);
        FORGE_CHECK(t, o, ": tensor '", m.gguf, "' is missing (Forge's ", m.forge, ")");
        const Tensor& w = want.at(m.forge);
        const int64_t R = w.size(0), C = w.dim() == 2 ? w.size(1) : 1;
        std::vector<int64_t> ne = w.dim() == 2 ? std::vector<int64_t>{C, R} : std::vector<int64_t>{R};
        if (m.layout == Layout::transpose) ne = {R, C};
        FORGE_CHECK(t->ne == ne, o, ": tensor '", m.gguf, "' has ", t->ne.size(), "-D shape ne=[",
                    t->ne.empty() ? 0 : t->ne[0], t->ne.size() > 1 ? ", " + std::to_string(t->ne[1]) : "",
                    "], the model's ", m.forge, " ", shape_str(w.shape()), " needs ne=[", ne[0],
                    ne.size() > 1 ? ", " + std::to_string(ne[1]) : "", "]");
        const std::vector<float> rows = dequantize(*t);
        Tensor x = Tensor::empty(w.shape(), DType::f32);
        if (m.layout == Layout::transpose)
            from_gguf_layout(m, rows.data(), x.data<float>(), R, C);
        else
            from_gguf_layout(m, rows.data(), x.data<float>(), w.dim() == 2 ? R : 1, w.dim() == 2 ? C : R);
        loaded[m.forge] = x;
        used.insert(m.gguf);
    }
    if (f.find_tensor("rope_freqs.weight")) used.insert("rope_freqs.weight");
    for (const auto& t : f.tensors())
        FORGE_CHECK(used.count(t.name), o, ": tensor '", t.name, "' has no place in a ",
                    arch_name(out.config.family), " model of this config");
    out.model->load_state_dict(loaded, /*strict=*/true);
    out.model->requires_grad(false);
    out.model->eval();
    out.tokenizer = gguf_tokenizer(f);
    if (out.tokenizer)
        FORGE_CHECK(int64_t(out.tokenizer->vocab_size()) <= out.config.vocab_size, o, ": the tokenizer has ",
                    out.tokenizer->vocab_size(), " tokens but token_embd.weight only ",
                    out.config.vocab_size, " rows");
    return out;
}

LoadedModel load_gguf_model(const fs::path& path) { return gguf_to_model(GgufFile::open(path)); }

GgufWriter gguf_writer(const Transformer& model, const Tokenizer* tok, GgmlType type,
                       const std::string& name) {
    const ModelConfig& c = model.config();
    check_writable(type);
    const std::string arch = arch_name(c.family);
    GgufWriter w;
    auto key = [&](const std::string& k) { return arch + "." + k; };
    auto u32 = [](int64_t x) { return GgufValue::u32(uint32_t(x)); };
    w.set("general.architecture", GgufValue::str(arch));
    w.set("general.name", GgufValue::str(name));
    w.set("general.file_type", GgufValue::u32(gguf_file_type(type)));
    w.set("general.quantization_version", GgufValue::u32(2));
    w.set(key("vocab_size"), u32(c.vocab_size));
    w.set(key("context_length"), u32(c.n_ctx));
    w.set(key("embedding_length"), u32(c.n_embd));
    w.set(key("block_count"), u32(c.n_layer));
    w.set(key("feed_forward_length"), u32(c.n_ff));
    w.set(key("attention.head_count"), u32(c.n_head));
    if (c.family == ModelFamily::llama) {
        w.set(key("attention.head_count_kv"), u32(c.n_head_kv));
        w.set(key("attention.layer_norm_rms_epsilon"), GgufValue::f32(c.norm_eps));
        w.set(key("rope.freq_base"), GgufValue::f32(c.rope_theta));
        w.set(key("rope.dimension_count"), u32(c.dim_head()));
        if (c.head_dim && c.head_dim * c.n_head != c.n_embd) {
            w.set(key("attention.key_length"), u32(c.head_dim));
            w.set(key("attention.value_length"), u32(c.head_dim));
        }
        if (c.rope_scaling_factor > 0) {
            w.set("forge.rope.llama3.factor", GgufValue::f32(c.rope_scaling_factor));
            w.set("forge.rope.llama3.low_freq_factor", GgufValue::f32(c.rope_low_freq_factor));
            w.set("forge.rope.llama3.high_freq_factor", GgufValue::f32(c.rope_high_freq_factor));
            w.set("forge.rope.llama3.original_context_length", u32(c.rope_original_max_pos));
        }
    } else {
        w.set(key("attention.layer_norm_epsilon"), GgufValue::f32(c.norm_eps));
    }
    if (tok) put_tokenizer(w, *tok, c.vocab_size);

    const std::map<std::string, Tensor> sd = model.state_dict();
    // llama.cpp's order: token_embd, (position_embd,) blocks in order, output_norm, output.
    std::vector<TensorMap> maps = tensor_maps(c, sd);
    auto rank = [](const std::string& g) -> std::pair<int, int> {
        if (g.rfind("token_embd", 0) == 0) return {0, 0};
        if (g.rfind("position_embd", 0) == 0) return {1, 0};
        if (g.rfind("blk.", 0) == 0) return {2, std::stoi(g.substr(4))};
        return {3, 0};
    };
    std::stable_sort(maps.begin(), maps.end(), [&](const TensorMap& a, const TensorMap& b) {
        return std::make_pair(rank(a.gguf), a.gguf) < std::make_pair(rank(b.gguf), b.gguf);
    });
    for (const TensorMap& m : maps) {
        Tensor t = sd.at(m.forge).detach().to(Device::cpu()).to(DType::f32).contiguous();
        const int64_t R = t.size(0), C = t.dim() == 2 ? t.size(1) : 1;
        std::vector<int64_t> ne;
        std::vector<float> rows;
        if (t.dim() == 1) {
            ne = {R};
            rows.assign(t.data<float>(), t.data<float>() + R);
        } else {
            rows = to_gguf_layout(m, t.data<float>(), R, C);
            ne = m.layout == Layout::transpose ? std::vector<int64_t>{R, C} : std::vector<int64_t>{C, R};
        }
        const GgmlType tt = gguf_tensor_type(ne[0], ne.size(), type);
        w.add_tensor(m.gguf, ne, tt, quantize(rows, ne[0], tt));
    }
    if (c.family == ModelFamily::llama && c.rope_scaling_factor > 0) {
        std::vector<float> fac = llama3_rope_factors(c);
        w.add_tensor("rope_freqs.weight", {int64_t(fac.size())}, GgmlType::f32,
                     {reinterpret_cast<const uint8_t*>(fac.data()), fac.size() * sizeof(float)});
    }
    return w;
}

void save_gguf(const Transformer& model, const Tokenizer* tok, const fs::path& path, GgmlType type,
               const std::string& name) {
    gguf_writer(model, tok, type, name).write(path);
}

void requantize_gguf(const fs::path& in, const fs::path& out, GgmlType type) {
    check_writable(type);
    const GgufFile f = GgufFile::open(in);
    (void)arch_of(f);
    GgufWriter w(f.alignment());
    for (const auto& [k, v] : f.metadata()) {
        if (k == "general.alignment") continue; // the writer sets it
        w.set(k, k == "general.file_type" ? GgufValue::u32(gguf_file_type(type)) : v);
    }
    if (!f.find("general.file_type")) w.set("general.file_type", GgufValue::u32(gguf_file_type(type)));
    for (const auto& t : f.tensors()) {
        const bool matrix = t.ne.size() >= 2 && t.name != "rope_freqs.weight";
        const GgmlType tt = matrix ? gguf_tensor_type(t.ne[0], t.ne.size(), type) : t.type;
        if (tt == t.type) {
            w.add_tensor(t.name, t.ne, t.type, {t.data, size_t(t.nbytes)});
            continue;
        }
        w.add_tensor(t.name, t.ne, tt, quantize(dequantize(t), t.ne[0], tt));
    }
    w.write(out);
}

} // namespace forge::formats
