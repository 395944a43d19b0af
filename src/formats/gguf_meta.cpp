// GGUF metadata <-> Forge: the `llama`/`gpt2` keys -> ModelConfig, and the tokenizer.ggml.*
// vocabulary both ways (byte-level BPE as model "gpt2", composed as the HF tokenizer.json it
// stands for; SentencePiece BPE as model "llama", composed as a SentencePiece ModelProto). Needs
// no Transformer, so the GGUF fuzzer covers it; tensors are gguf_model.cpp's.
#include <forge/formats/gguf_model.h>

#include <cmath>
#include <cstring>
#include <map>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>

#include "formats/gguf_internal.h"
#include "tokenizers/bpe.h"
#include "tokenizers/impl.h"
#include "tokenizers/pre_tokenizers.h"
#include "tokenizers/unicode.h"

namespace forge::formats {

using quant::GgmlType;

namespace {

enum TokenType : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

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
        // Byte-level tokens are GPT-2's printable code points: always valid UTF-8.
        FORGE_CHECK(tok::utf8_valid(tokens[i]), f.origin(), ": tokenizer.ggml.tokens[", i,
                    "] is not valid UTF-8");
        const int64_t type = tv ? tv->as_array().items[i].as_int() : int64_t(kNormal);
        if (type == kControl || type == kUserDefined)
            added.push_back({{"id", i}, {"content", tokens[i]}, {"special", type == kControl}});
        else if (type != kUnused)
            vocab[tokens[i]] = i;
    }
    json merges = json::array();
    if (f.find("tokenizer.ggml.merges"))
        for (const std::string& m : string_array(f, "tokenizer.ggml.merges")) {
            FORGE_CHECK(tok::utf8_valid(m), f.origin(), ": a tokenizer.ggml.merges entry is not valid UTF-8");
            merges.push_back(m);
        }
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

} // namespace

namespace gguf_detail {

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
                    type == GgmlType::q8_0 || type == GgmlType::q4_0 || type == GgmlType::q4_1 ||
                    type == GgmlType::q4_k,
                "[gguf] Forge writes F32, F16, BF16, Q8_0, Q4_0, Q4_1 and Q4_K, not ",
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

} // namespace gguf_detail

using namespace gguf_detail;

// ---------------------------------------------------------------------------- public

quant::GgmlType gguf_tensor_type(std::string_view name, int64_t ne0, size_t n_dims,
                                 GgmlType requested) {
    // Position rows are added to every token's embedding: llama.cpp never quantizes them.
    if (n_dims < 2 || name == "position_embd.weight") return GgmlType::f32;
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

} // namespace forge::formats
