// Transformer/Tokenizer <-> GGUF: exact F32 round trips for both architectures (oracle: the
// original model's weights and logits), f16 and block types against Forge's own Transformer on
// the dequantized weights, the q/k permutation against ggml's adjacent-pair RoPE, tokenizer
// round trips against the original tokenizer, and mapping errors that name the tensor.
#include <forge/formats/gguf_model.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <sentencepiece_trainer.h>

#include <forge/autograd/autograd.h>
#include <forge/core/error.h>
#include <forge/core/ops.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>
#include <forge/tokenizers/bpe_trainer.h>

using namespace forge;
using namespace forge::formats;
using quant::GgmlType;
namespace fs = std::filesystem;

namespace {

const fs::path kData = fs::path(FORGE_SOURCE_DIR) / "../shared/data";

ModelConfig llama_cfg() {
    ModelConfig c;
    c.family = ModelFamily::llama;
    c.vocab_size = 96;
    c.n_ctx = 64;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_head_kv = 2;
    c.n_embd = 64;
    c.n_ff = 96;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.f;
    c.rope_scaling_factor = 8.f; // Llama 3 scaling: rope_freqs.weight
    c.rope_original_max_pos = 16;
    c.tie_embeddings = false;
    return c;
}

ModelConfig gpt2_cfg() {
    ModelConfig c;
    c.family = ModelFamily::gpt2;
    c.vocab_size = 80;
    c.n_ctx = 32;
    c.n_layer = 2;
    c.n_head = 2;
    c.n_head_kv = 2;
    c.n_embd = 48; // not a multiple of 32: block types fall back
    c.n_ff = 192;
    c.tie_embeddings = true;
    return c;
}

Tensor logits(Transformer& m, std::vector<int64_t> ids) {
    NoGradGuard g;
    const int64_t T = int64_t(ids.size());
    return m.forward(Tensor::from_vector(ids, {1, T}, DType::i64));
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
    Tensor d = sub(a, b).contiguous();
    float m = 0;
    for (int64_t i = 0; i < d.numel(); ++i) m = std::max(m, std::abs(d.data<float>()[i]));
    return m;
}

EncodeOptions all_special() {
    EncodeOptions o;
    o.allow_all_special = true;
    return o;
}
EncodeOptions with_bos() {
    EncodeOptions o;
    o.add_special_tokens = true;
    return o;
}

fs::path tmp(const std::string& name) { return fs::temp_directory_path() / ("forge_ggufm_" + name); }

// Forge's own model with every weight replaced by `f(name, weight)`.
void map_weights(Transformer& m, const std::function<Tensor(const std::string&, const Tensor&)>& f) {
    std::map<std::string, Tensor> sd = m.state_dict();
    for (auto& [k, v] : sd) v = f(k, v);
    m.load_state_dict(sd, true);
}

} // namespace

TEST(GgufModel, F32RoundTripIsExactForBothArchitectures) {
    for (const ModelConfig& cfg : {llama_cfg(), gpt2_cfg()}) {
        Transformer m(cfg, 7);
        m.eval();
        const fs::path p = tmp("f32.gguf");
        save_gguf(m, nullptr, p, GgmlType::f32);
        LoadedModel l = load_gguf_model(p);
        EXPECT_FALSE(l.tokenizer);
        EXPECT_EQ(l.config.family, cfg.family);
        EXPECT_EQ(l.config.n_head_kv, cfg.n_head_kv);
        EXPECT_EQ(l.config.tie_embeddings, cfg.tie_embeddings);
        EXPECT_EQ(l.config.rope_scaling_factor, cfg.rope_scaling_factor);
        EXPECT_EQ(l.config.rope_original_max_pos, cfg.rope_original_max_pos);
        const auto a = m.state_dict(), b = l.model->state_dict();
        ASSERT_EQ(a.size(), b.size());
        for (const auto& [k, v] : a) EXPECT_EQ(max_abs_diff(v, b.at(k)), 0.f) << k;
        EXPECT_EQ(max_abs_diff(logits(m, {1, 5, 9, 2}), logits(*l.model, {1, 5, 9, 2})), 0.f);
        fs::remove(p);
    }
}

TEST(GgufModel, NamesLayoutsAndKeysAreLlamaCpps) {
    Transformer g(gpt2_cfg(), 3);
    GgufFile f = GgufFile::parse(gguf_writer(g, nullptr, GgmlType::f32).bytes());
    EXPECT_EQ(f.at("general.architecture").as_string(), "gpt2");
    EXPECT_EQ(f.at("gpt2.embedding_length").as_int(), 48);
    EXPECT_EQ(f.at("gpt2.attention.layer_norm_epsilon").as_float(), double(1e-5f));
    for (const char* n : {"token_embd.weight", "position_embd.weight", "output_norm.bias",
                          "blk.1.attn_qkv.bias", "blk.0.ffn_down.weight"})
        EXPECT_NE(f.find_tensor(n), nullptr) << n;
    EXPECT_EQ(f.find_tensor("output.weight"), nullptr); // tied
    // Conv1D (in=48, out=144) is stored as 144 rows of 48: element [r][c] of Forge's weight is
    // row c, column r.
    const GgufTensorInfo* qkv = f.find_tensor("blk.0.attn_qkv.weight");
    EXPECT_EQ(qkv->ne, (std::vector<int64_t>{48, 144}));
    Tensor w = g.state_dict().at("transformer.h.0.attn.c_attn.weight").contiguous();
    const float* rows = reinterpret_cast<const float*>(qkv->data);
    EXPECT_EQ(rows[7 * 48 + 5], w.data<float>()[5 * 144 + 7]);

    // Llama: the q/k permutation makes ggml's adjacent-pair RoPE equal HF's rotate-half RoPE:
    // q.k scores of a head agree between (HF rows, neox) and (GGUF rows, interleaved).
    ModelConfig lc = llama_cfg();
    lc.rope_scaling_factor = 0;
    Transformer l(lc, 5);
    GgufFile lf = GgufFile::parse(gguf_writer(l, nullptr, GgmlType::f32).bytes());
    EXPECT_EQ(lf.at("llama.attention.head_count_kv").as_int(), 2);
    EXPECT_EQ(lf.at("llama.rope.dimension_count").as_int(), 16);
    const int64_t D = 16, C = 64;
    auto ggml_rows = [&](const char* name, int64_t R) {
        const GgufTensorInfo* t = lf.find_tensor(name);
        std::vector<float> v(size_t(R * C));
        std::memcpy(v.data(), t->data, v.size() * 4);
        return Tensor::from_vector(v, {R, C});
    };
    const auto sd = l.state_dict();
    Tensor x = Tensor::randn({1, 1, 3, C}, 11); // (B, H=1, T, C)
    auto scores = [&](const Tensor& wq, const Tensor& wk, RopeLayout lay) {
        Tensor q = matmul(x, wq.transpose(0, 1)).narrow(3, 0, D); // head 0
        Tensor k = matmul(x, wk.transpose(0, 1)).narrow(3, 0, D);
        RopeOptions ro{.theta = 10000.f, .layout = lay};
        return matmul(rope(q.contiguous(), ro), rope(k.contiguous(), ro).transpose(2, 3));
    };
    Tensor hf = scores(sd.at("model.layers.0.self_attn.q_proj.weight"),
                       sd.at("model.layers.0.self_attn.k_proj.weight"), RopeLayout::neox);
    Tensor gg = scores(ggml_rows("blk.0.attn_q.weight", 64), ggml_rows("blk.0.attn_k.weight", 32),
                       RopeLayout::interleaved);
    EXPECT_LT(max_abs_diff(hf, gg), 1e-5f);
}

TEST(GgufModel, BlockTypesLoadTheQuantizedWeights) {
    // Oracle: Forge's Transformer whose weights went through quantize_row/dequantize_row of the
    // same type, row by row in GGUF's layout (transposed weights transposed back).
    for (GgmlType type : {GgmlType::f16, GgmlType::bf16, GgmlType::q8_0, GgmlType::q4_0, GgmlType::q4_k}) {
        for (const ModelConfig& cfg : {llama_cfg(), gpt2_cfg()}) {
            Transformer m(cfg, 9);
            GgufFile f = GgufFile::parse(gguf_writer(m, nullptr, type).bytes());
            EXPECT_EQ(f.at("general.file_type").as_uint(), gguf_file_type(type));
            for (const auto& t : f.tensors())
                EXPECT_EQ(t.type, gguf_tensor_type(t.name, t.ne[0], t.ne.size(), type)) << t.name;
            LoadedModel l = gguf_to_model(f);
            map_weights(m, [&](const std::string& name, const Tensor& w) {
                if (w.dim() == 1 || name == "transformer.wpe.weight") return w; // kept F32
                const bool conv1d = cfg.family == ModelFamily::gpt2 && name.find(".h.") != std::string::npos &&
                                    name.find("weight") != std::string::npos && name.find("ln_") == std::string::npos;
                Tensor rows = (conv1d ? w.transpose(0, 1) : w).contiguous();
                const int64_t n = rows.size(1);
                const GgmlType tt = gguf_tensor_type(name, n, 2, type);
                std::vector<uint8_t> q(size_t(quant::row_bytes(tt, n)));
                Tensor out = Tensor::empty(rows.shape());
                for (int64_t r = 0; r < rows.size(0); ++r) {
                    quant::quantize_row(tt, rows.data<float>() + r * n, q.data(), n);
                    quant::dequantize_row(tt, q.data(), out.data<float>() + r * n, n);
                }
                return conv1d ? out.transpose(0, 1).contiguous() : out;
            });
            const auto a = m.state_dict(), b = l.model->state_dict();
            for (const auto& [k, v] : a) EXPECT_EQ(max_abs_diff(v, b.at(k)), 0.f) << k;
            EXPECT_EQ(max_abs_diff(logits(m, {3, 1, 4, 1, 5}), logits(*l.model, {3, 1, 4, 1, 5})), 0.f);
        }
    }
    EXPECT_EQ(gguf_tensor_type("blk.0.ffn_up.weight", 48, 2, GgmlType::q4_k), GgmlType::f16);
    EXPECT_EQ(gguf_tensor_type("blk.0.ffn_up.weight", 96, 2, GgmlType::q4_k), GgmlType::q8_0);
    EXPECT_EQ(gguf_tensor_type("blk.0.ffn_up.weight", 256, 2, GgmlType::q4_k), GgmlType::q4_k);
    EXPECT_EQ(gguf_tensor_type("blk.0.ffn_norm.weight", 256, 1, GgmlType::q4_k), GgmlType::f32);
    EXPECT_EQ(gguf_tensor_type("position_embd.weight", 256, 2, GgmlType::q4_k), GgmlType::f32);
    Transformer m(gpt2_cfg());
    EXPECT_THROW(gguf_writer(m, nullptr, GgmlType::q6_k), InvalidArgument);
}

TEST(GgufModel, RequantizeKeepsMetadataAndUpdatesFileType) {
    Transformer m(llama_cfg(), 2);
    const fs::path a = tmp("rq_a.gguf"), b = tmp("rq_b.gguf"), c = tmp("rq_c.gguf");
    save_gguf(m, nullptr, a, GgmlType::f32, "tiny-llama");
    requantize_gguf(a, b, GgmlType::q8_0);
    GgufFile fa = GgufFile::open(a), fb = GgufFile::open(b);
    EXPECT_EQ(fb.at("general.name").as_string(), "tiny-llama");
    EXPECT_EQ(fb.at("general.file_type").as_uint(), 7u);
    EXPECT_EQ(fb.metadata().size(), fa.metadata().size());
    EXPECT_EQ(fb.find_tensor("blk.0.attn_q.weight")->type, GgmlType::q8_0);
    EXPECT_EQ(fb.find_tensor("blk.0.attn_norm.weight")->type, GgmlType::f32);
    EXPECT_EQ(fb.find_tensor("rope_freqs.weight")->type, GgmlType::f32);
    // Same result as writing Q8_0 directly.
    save_gguf(m, nullptr, c, GgmlType::q8_0, "tiny-llama");
    GgufFile fc = GgufFile::open(c);
    const GgufTensorInfo* tb = fb.find_tensor("blk.1.ffn_down.weight");
    const GgufTensorInfo* tc = fc.find_tensor("blk.1.ffn_down.weight");
    ASSERT_EQ(tb->nbytes, tc->nbytes);
    EXPECT_EQ(std::memcmp(tb->data, tc->data, size_t(tb->nbytes)), 0);
    // load_model_dir takes the file too.
    LoadedModel l = load_model_dir(b, {.require_tokenizer = false});
    EXPECT_EQ(l.config.n_layer, 2);
    EXPECT_THROW(load_model_dir(b), NotFound); // no tokenizer in it
    for (const auto& p : {a, b, c}) fs::remove(p);
}

TEST(GgufModel, MappingErrorsNameTheTensorOrKey) {
    Transformer m(llama_cfg(), 2);
    auto expect_error = [](GgufWriter w, const std::string& needle) {
        try {
            gguf_to_model(GgufFile::parse(w.bytes(), "bad.gguf"));
            ADD_FAILURE() << "loaded; expected '" << needle << "'";
        } catch (const InvalidArgument& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    const GgufFile good = GgufFile::parse(gguf_writer(m, nullptr, GgmlType::f32).bytes());
    auto rebuild = [&](const std::string& drop_tensor, const std::string& key, GgufValue v) {
        GgufWriter w;
        for (const auto& [k, val] : good.metadata()) w.set(k, k == key ? v : val);
        for (const auto& t : good.tensors())
            if (t.name != drop_tensor) w.add_tensor(t.name, t.ne, t.type, {t.data, size_t(t.nbytes)});
        return w;
    };
    expect_error(rebuild("blk.1.ffn_up.weight", "", {}), "tensor 'blk.1.ffn_up.weight' is missing");
    expect_error(rebuild("", "general.architecture", GgufValue::str("mamba")), "architecture 'mamba'");
    expect_error(rebuild("", "llama.block_count", GgufValue::u32(3)), "blk.2.attn_norm.weight");
    expect_error(rebuild("", "llama.block_count", GgufValue::u32(1)), "tensor 'blk.1.");
    expect_error(rebuild("", "llama.feed_forward_length", GgufValue::u32(64)), "ffn_down.weight' has 2-D shape ne=[96, 64]");
    expect_error(rebuild("", "llama.embedding_length", GgufValue::u32(0)), "llama.embedding_length is 0");
    expect_error(rebuild("", "llama.context_length", GgufValue::str("x")), "key 'llama.context_length': [gguf] expected an integer");
    {
        GgufWriter w = rebuild("", "", {});
        w.set("tokenizer.ggml.model", GgufValue::str("bert"));
        expect_error(w, "tokenizer.ggml.model 'bert'");
    }
}

TEST(GgufModel, ByteLevelBpeTokenizerRoundTrips) {
    const fs::path gpt2 = kData / "tokenizers/gpt2";
    if (!fs::exists(gpt2 / "tokenizer.json")) GTEST_SKIP() << "../shared/data/tokenizers is absent";
    const Tokenizer tok = Tokenizer::load(gpt2 / "tokenizer.json");
    ModelConfig cfg = gpt2_cfg();
    cfg.vocab_size = 50304; // padded: ids past the tokenizer are [PAD] tokens
    cfg.n_embd = 32;
    cfg.n_ff = 32;
    cfg.n_layer = 1;
    Transformer m(cfg, 1);
    GgufFile f = GgufFile::parse(gguf_writer(m, &tok, GgmlType::f16).bytes(), "tok.gguf");
    EXPECT_EQ(f.at("tokenizer.ggml.model").as_string(), "gpt2");
    EXPECT_EQ(f.at("tokenizer.ggml.pre").as_string(), "gpt-2");
    EXPECT_EQ(f.at("tokenizer.ggml.tokens").as_array().items.size(), 50304u);
    EXPECT_EQ(f.at("tokenizer.ggml.tokens").as_array().items[50256].as_string(), "<|endoftext|>");
    EXPECT_EQ(f.at("tokenizer.ggml.token_type").as_array().items[50256].as_int(), 3);
    EXPECT_EQ(f.at("tokenizer.ggml.merges").as_array().items[0].as_string(), "\xC4\xA0 t"); // "Ġ t"
    std::optional<Tokenizer> back = gguf_tokenizer(f);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->eos_id(), tok.eos_id());
    for (const std::string text : {"Hello world, it's 2024!\n\n  indented  \xF0\x9F\x98\x80 caf\xC3\xA9",
                                   "<|endoftext|>ROMEO: What say'st thou?"}) {
        const auto ids = tok.encode(text, all_special());
        EXPECT_EQ(back->encode(text, all_special()), ids) << text;
        EXPECT_EQ(back->decode(ids), text);
    }
}

TEST(GgufModel, SentencePieceBpeTokenizerRoundTrips) {
    // A SentencePiece BPE model trained here, configured as Llama's (byte fallback, no
    // normalization, whitespace kept): what llama.cpp's "llama" vocabulary means.
    const fs::path corpus = fs::path(FORGE_SOURCE_DIR) / "data/tinyshakespeare.txt", prefix = tmp("spm");
    auto st = sentencepiece::SentencePieceTrainer::Train(
        "--input=" + corpus.string() + " --model_prefix=" + prefix.string() +
        " --model_type=bpe --vocab_size=400 --byte_fallback=true --character_coverage=1.0 "
        "--minloglevel=2 --num_threads=1 --input_sentence_size=2000 "
        "--normalization_rule_name=identity --remove_extra_whitespaces=false");
    ASSERT_TRUE(st.ok()) << st.ToString();
    const Tokenizer tok = Tokenizer::load(prefix.string() + ".model");
    ModelConfig cfg = llama_cfg();
    cfg.vocab_size = 404;
    Transformer m(cfg, 1);
    GgufFile f = GgufFile::parse(gguf_writer(m, &tok, GgmlType::f32).bytes(), "spm.gguf");
    EXPECT_EQ(f.at("tokenizer.ggml.model").as_string(), "llama");
    EXPECT_EQ(f.at("tokenizer.ggml.scores").as_array().items.size(), 404u);
    EXPECT_TRUE(f.at("tokenizer.ggml.add_bos_token").as_bool());
    const auto& types = f.at("tokenizer.ggml.token_type").as_array().items;
    EXPECT_EQ(types[0].as_int(), 2); // <unk>
    EXPECT_EQ(types[1].as_int(), 3); // <s>
    EXPECT_EQ(types[3].as_int(), 6); // <0x00>
    std::optional<Tokenizer> back = gguf_tokenizer(f);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->bos_id(), tok.bos_id());
    EXPECT_EQ(back->eos_id(), tok.eos_id());
    for (const std::string text : {"The lazy fox jumps", " two  spaces and \xE2\x82\xAC uncommon \xF0\x9F\x98\x80 ",
                                   "ROMEO"}) {
        const auto ids = tok.encode(text, with_bos());
        EXPECT_EQ(back->encode(text, with_bos()), ids) << text;
        EXPECT_EQ(back->decode(ids), tok.decode(ids));
    }
    // A Unigram model has no llama.cpp "llama" form.
    const fs::path albert = kData / "tokenizers/sentencepiece/albert-30k-clean.model";
    if (fs::exists(albert)) {
        const Tokenizer uni = Tokenizer::load(albert);
        ModelConfig big = cfg;
        big.vocab_size = 30000;
        big.n_layer = 1;
        Transformer mb(big, 1);
        EXPECT_THROW(gguf_writer(mb, &uni, GgmlType::f32), InvalidArgument);
    }
    for (const auto& p : {fs::path(prefix.string() + ".model"), fs::path(prefix.string() + ".vocab")})
        fs::remove(p);
}

TEST(GgufModel, WritesFuzzSeeds) {
    // Seeds for tests/fuzz/fuzz_gguf.cpp: small files of both architectures, several types,
    // with and without a vocabulary. Only when FORGE_FUZZ_SEEDS_DIR names a folder.
    const char* dir = std::getenv("FORGE_FUZZ_SEEDS_DIR");
    if (!dir) GTEST_SKIP() << "set FORGE_FUZZ_SEEDS_DIR to write the GGUF fuzz seeds";
    const fs::path gpt2 = kData / "tokenizers/gpt2/tokenizer.json";
    ModelConfig g = gpt2_cfg(), l = llama_cfg();
    g.n_layer = l.n_layer = 1;
    Transformer mg(g, 1), ml(l, 1);
    save_gguf(mg, nullptr, fs::path(dir) / "gpt2-f32.gguf", GgmlType::f32);
    save_gguf(mg, nullptr, fs::path(dir) / "gpt2-q8_0.gguf", GgmlType::q8_0);
    save_gguf(ml, nullptr, fs::path(dir) / "llama-q4_k.gguf", GgmlType::q4_k);
    save_gguf(ml, nullptr, fs::path(dir) / "llama-q4_0.gguf", GgmlType::q4_0);
    // A small byte-level vocabulary (the first 300 ids are bytes and early merges).
    BpeTrainerOptions o;
    o.vocab_size = 300;
    BpeTrainer t(o);
    t.add_text("the quick brown fox jumps over the lazy dog, the end. The THE then there.");
    const Tokenizer tok = Tokenizer::from_tokenizer_json(t.train().to_tokenizer_json());
    g.vocab_size = int64_t(tok.vocab_size());
    Transformer mt(g, 1);
    save_gguf(mt, &tok, fs::path(dir) / "gpt2-bpe-f16.gguf", GgmlType::f16);
}
