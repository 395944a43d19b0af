// Sharded safetensors (write, read, lying indexes) and export_hf. Oracles: HF's own names and
// schema (the lists below are transcribed from transformers' configuration_gpt2.py,
// configuration_llama.py and the module trees of modeling_gpt2.py / modeling_llama.py), the
// loader reading the folder back to identical logits, and tools/golden/hf_load_check.py
// --names-only (pure Python) reading the files. The folders are left in
// build/hf_check/<case>/ with forge_logits.safetensors for the full transformers check.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <forge/core/error.h>
#include <forge/formats/hf_export.h>
#include <forge/formats/safetensors.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>
#include <forge/train/tokenizer_spec.h>

namespace forge {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& tag)
        : path(fs::temp_directory_path() / ("forge_hf_" + tag + std::to_string(::getpid()))) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() { fs::remove_all(path); }
};

json read_json(const fs::path& p) {
    std::ifstream in(p);
    return json::parse(in);
}

TEST(SafetensorsShards, SplitsLikeHfAndReadsBack) {
    TempDir tmp("shards");
    std::map<std::string, Tensor> in;
    in["a"] = Tensor::randn({10}, 1);             // 40 bytes
    in["b"] = Tensor::randn({20}, 2);             // 80
    in["c"] = Tensor::randn({40}, 3);             // 160: larger than the limit, alone
    in["d"] = Tensor::randn({5}, 4).to(DType::bf16); // 10
    in["e"] = Tensor::randn({6}, 5).to(DType::f16);  // 12
    auto files = formats::save_safetensors_sharded(tmp.path, in, {.max_shard_bytes = 128},
                                                   {{"format", "pt"}});
    // a+b = 120 fits; c alone; d+e.
    ASSERT_EQ(files.size(), 4u);
    EXPECT_EQ(files[0].filename(), "model-00001-of-00003.safetensors");
    EXPECT_EQ(files[2].filename(), "model-00003-of-00003.safetensors");
    EXPECT_EQ(files[3].filename(), "model.safetensors.index.json");
    const json idx = read_json(files[3]);
    EXPECT_EQ(idx["metadata"]["total_size"], 40 + 80 + 160 + 10 + 12);
    EXPECT_EQ(idx["weight_map"]["a"], "model-00001-of-00003.safetensors");
    EXPECT_EQ(idx["weight_map"]["b"], "model-00001-of-00003.safetensors");
    EXPECT_EQ(idx["weight_map"]["c"], "model-00002-of-00003.safetensors");
    EXPECT_EQ(idx["weight_map"]["e"], "model-00003-of-00003.safetensors");
    EXPECT_EQ(formats::safetensors_metadata(files[1]).at("format"), "pt");
    auto out = formats::load_safetensors_dir(tmp.path);
    ASSERT_EQ(out.size(), in.size());
    for (auto& [k, t] : in) {
        EXPECT_EQ(out[k].dtype(), t.dtype()) << k;
        EXPECT_EQ(out[k].to_vector<double>(), t.to_vector<double>()) << k;
    }
    // Rewriting as one file removes the shards and the index.
    files = formats::save_safetensors_sharded(tmp.path, in);
    ASSERT_EQ(files.size(), 1u);
    EXPECT_EQ(files[0].filename(), "model.safetensors");
    EXPECT_FALSE(fs::exists(tmp.path / "model.safetensors.index.json"));
    EXPECT_FALSE(fs::exists(tmp.path / "model-00001-of-00003.safetensors"));
    EXPECT_EQ(formats::load_safetensors_dir(tmp.path).size(), in.size());
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "no error for: " << needle;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

TEST(SafetensorsShards, RejectsLyingIndexes) {
    TempDir tmp("lying");
    formats::save_safetensors(tmp.path / "s1.safetensors", {{"a", Tensor::randn({2}, 1)}});
    formats::save_safetensors(tmp.path / "s2.safetensors", {{"b", Tensor::randn({2}, 2)}});
    auto index = [&](const std::string& text) {
        std::ofstream(tmp.path / "i.json") << text;
        return tmp.path / "i.json";
    };
    auto load = [&](const std::string& text) {
        return [&, text] { formats::load_safetensors_sharded(index(text)); };
    };
    EXPECT_EQ(formats::load_safetensors_sharded(
                  index(R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})"))
                  .size(),
              2u);
    expect_error(load(R"({"weight_map":{"a":"s2.safetensors","b":"s2.safetensors"}})"),
                 "'a' is not in its shard s2.safetensors");
    expect_error(load(R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})"),
                 "'b' is not in its shard");
    expect_error(load(R"({"weight_map":{"b":"s1.safetensors"}})"), "holds tensor 'a'");
    expect_error(load(R"({"weight_map":{"a":"../s1.safetensors"}})"), "not a plain file name");
    expect_error(load(R"({"weight_map":{"a":"nope.safetensors"}})"), "nope.safetensors");
    expect_error(load(R"({"weight_map":[]})"), "no \"weight_map\" object");
    expect_error(load(R"({"metadata":{"total_size":-3},"weight_map":{}})"), "total_size");
    expect_error(load("{"), "not valid JSON");
    expect_error([&] { formats::load_safetensors_dir(tmp.path / "none"); }, "neither");
}

ModelConfig small(ModelFamily f) {
    ModelConfig c;
    c.family = f;
    c.vocab_size = 300;
    c.n_ctx = 32;
    c.n_layer = 2;
    c.n_embd = 32;
    c.n_head = 4;
    c.n_head_kv = f == ModelFamily::llama ? 2 : 4;
    c.n_ff = 48;
    c.tie_embeddings = f == ModelFamily::gpt2;
    if (f == ModelFamily::llama) {
        c.rope_scaling_factor = 8;
        c.rope_original_max_pos = 16;
    }
    return c;
}

// HF's parameter names for a config, from the module trees of GPT2LMHeadModel and
// LlamaForCausalLM (a tied lm_head.weight is not saved by save_pretrained).
std::set<std::string> hf_names(const ModelConfig& c) {
    std::set<std::string> s;
    if (c.family == ModelFamily::gpt2) {
        s = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
             "transformer.ln_f.bias"};
        for (int64_t l = 0; l < c.n_layer; ++l)
            for (const char* m : {"ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc",
                                  "mlp.c_proj"})
                for (const char* p : {"weight", "bias"})
                    s.insert("transformer.h." + std::to_string(l) + "." + m + "." + p);
    } else {
        s = {"model.embed_tokens.weight", "model.norm.weight"};
        for (int64_t l = 0; l < c.n_layer; ++l)
            for (const char* m : {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                                  "self_attn.v_proj", "self_attn.o_proj",
                                  "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                                  "mlp.down_proj"})
                s.insert("model.layers." + std::to_string(l) + "." + m + ".weight");
    }
    if (!c.tie_embeddings) s.insert("lm_head.weight");
    return s;
}

struct ExportCase {
    std::string name;
    ModelConfig cfg;
    DType dtype;
    uint64_t shard;
};

class HfExport : public ::testing::TestWithParam<ExportCase> {};

TEST_P(HfExport, LoadsBackWithHfNamesAndSchema) {
    const ExportCase& tc = GetParam();
    const fs::path dir = fs::path(FORGE_BINARY_DIR) / "hf_check" / tc.name;
    fs::remove_all(dir);
    Transformer model(tc.cfg, 5);
    model.eval();
    formats::export_hf(model, nullptr, dir, {.dtype = tc.dtype, .max_shard_bytes = tc.shard, .tokenizer_file = {}});

    // config.json: transformers' keys and values.
    const json cfg = read_json(dir / "config.json");
    const char* want_dtype = tc.dtype == DType::f32 ? "float32"
                             : tc.dtype == DType::f16 ? "float16" : "bfloat16";
    EXPECT_EQ(cfg["torch_dtype"], want_dtype);
    EXPECT_EQ(cfg["tie_word_embeddings"], tc.cfg.tie_embeddings);
    if (tc.cfg.family == ModelFamily::gpt2) {
        EXPECT_EQ(cfg["architectures"], json::array({"GPT2LMHeadModel"}));
        EXPECT_EQ(cfg["model_type"], "gpt2");
        for (const char* k : {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                              "activation_function", "layer_norm_epsilon"})
            EXPECT_TRUE(cfg.contains(k)) << k;
        EXPECT_EQ(cfg["n_embd"], 32);
        EXPECT_EQ(cfg["activation_function"], "gelu_new");
        EXPECT_EQ(cfg["layer_norm_epsilon"].get<double>(), 1e-5); // tidied, not 9.99999974e-06
    } else {
        EXPECT_EQ(cfg["architectures"], json::array({"LlamaForCausalLM"}));
        EXPECT_EQ(cfg["model_type"], "llama");
        EXPECT_EQ(cfg["hidden_size"], 32);
        EXPECT_EQ(cfg["num_attention_heads"], 4);
        EXPECT_EQ(cfg["num_key_value_heads"], 2);
        EXPECT_EQ(cfg["intermediate_size"], 48);
        EXPECT_EQ(cfg["hidden_act"], "silu");
        EXPECT_EQ(cfg["rms_norm_eps"].get<double>(), 1e-5);
        EXPECT_EQ(cfg["rope_theta"].get<double>(), 10000.0);
        EXPECT_EQ(cfg["rope_scaling"]["rope_type"], "llama3");
        EXPECT_EQ(cfg["rope_scaling"]["factor"].get<double>(), 8.0);
        EXPECT_EQ(cfg["rope_scaling"]["original_max_position_embeddings"], 16);
    }

    // Weights: HF's names and shapes, the dtype asked for.
    const auto file = formats::load_safetensors_dir(dir);
    std::set<std::string> names;
    for (const auto& [k, t] : file) {
        names.insert(k);
        EXPECT_EQ(t.dtype(), tc.dtype) << k;
    }
    EXPECT_EQ(names, hf_names(tc.cfg));
    EXPECT_EQ(fs::exists(dir / "model.safetensors.index.json"), tc.shard < 100000);

    // Read back by the loader: same weights (rounded to the dtype), same logits at f32.
    LoadedModel back = load_model_dir(dir, {.require_tokenizer = false});
    const auto sd = model.state_dict();
    for (const auto& [k, t] : back.model->state_dict())
        EXPECT_EQ(t.to_vector<float>(), sd.at(k).to(tc.dtype).to(DType::f32).to_vector<float>())
            << k;
    Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 7, 42, 299, 0, 5, 9, 100, 3, 250,
                                                          17, 64},
                                     {2, 6});
    Tensor logits = back.model->forward(ids);
    if (tc.dtype == DType::f32) {
        EXPECT_EQ(logits.to_vector<float>(), model.forward(ids).to_vector<float>());
    }
    // For tools/golden/hf_load_check.py: the ids and the logits HF must reproduce.
    formats::save_safetensors(dir / "forge_logits.safetensors",
                              {{"input_ids", ids}, {"logits", logits}});

    // The pure-Python half of hf_load_check.py: names and shapes against HF's lists.
    const std::string cmd = "python3 " + std::string(FORGE_SOURCE_DIR) +
                            "/tools/golden/hf_load_check.py --names-only " + dir.string() + " 2>&1";
    if (std::system("command -v python3 >/dev/null 2>&1") == 0) {
        FILE* p = ::popen(cmd.c_str(), "r");
        ASSERT_TRUE(p);
        char buf[4096];
        std::string text;
        while (size_t n = fread(buf, 1, sizeof buf, p))
            text.append(buf, n);
        EXPECT_EQ(::pclose(p), 0) << cmd << "\n" << text;
    }
}

INSTANTIATE_TEST_SUITE_P(
    Models, HfExport,
    ::testing::Values(ExportCase{"gpt2_f32", small(ModelFamily::gpt2), DType::f32, 1 << 30},
                      ExportCase{"gpt2_f16_sharded", small(ModelFamily::gpt2), DType::f16, 20000},
                      ExportCase{"llama_f32_sharded", small(ModelFamily::llama), DType::f32, 30000},
                      ExportCase{"llama_bf16", small(ModelFamily::llama), DType::bf16, 1 << 30}),
    [](const auto& info) { return info.param.name; });

TEST(HfExport, WritesTheTokenizerFiles) {
    TempDir tmp("tok");
    std::ofstream(tmp.path / "tokenizer.json") << byte_tokenizer_json();
    const Tokenizer tok = Tokenizer::load(tmp.path / "tokenizer.json");
    Transformer model(small(ModelFamily::gpt2), 1);
    const fs::path dir = tmp.path / "out";
    formats::export_hf(model, &tok, dir, {.tokenizer_file = tmp.path / "tokenizer.json"});
    EXPECT_TRUE(fs::exists(dir / "tokenizer.json"));
    EXPECT_EQ(read_json(dir / "tokenizer_config.json")["tokenizer_class"],
              "PreTrainedTokenizerFast");
    EXPECT_TRUE(fs::exists(dir / "generation_config.json"));
    LoadedModel back = load_model_dir(dir);
    ASSERT_TRUE(back.tokenizer.has_value());
    EXPECT_EQ(back.tokenizer->encode("hello"), tok.encode("hello"));

    expect_error([&] { formats::export_hf(model, &tok, tmp.path / "x"); }, "tokenizer_file");
    std::ofstream(tmp.path / "a.tiktoken") << "YQ== 0\n";
    expect_error(
        [&] { formats::export_hf(model, &tok, tmp.path / "x", {.tokenizer_file = tmp.path / "a.tiktoken"}); },
        "cannot load");
    expect_error([&] { formats::export_hf(model, nullptr, tmp.path / "x", {.dtype = DType::i32, .max_shard_bytes = 1, .tokenizer_file = {}}); },
                 "f32, f16 or bf16");
    ModelConfig tiny_vocab = small(ModelFamily::gpt2);
    tiny_vocab.vocab_size = 100; // the byte tokenizer has 256 tokens
    Transformer small_model(tiny_vocab, 1);
    expect_error([&] {
        formats::export_hf(small_model, &tok, tmp.path / "x",
                           {.tokenizer_file = tmp.path / "tokenizer.json"});
    }, "more than the model's vocabulary");
}

} // namespace
} // namespace forge
