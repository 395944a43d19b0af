// load_model_dir: a folder written the way `forge train` writes one (model.safetensors with HF
// names, config.json, tokenizer.json) loads into a model that computes what the saved one did;
// missing and corrupt folders give errors naming the file.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "generate/generate_test_util.h"
#include <forge/core/error.h>
#include <forge/formats/safetensors.h>
#include <forge/models/loader.h>
#include <forge/tokenizers/bpe_trainer.h>

namespace forge {
namespace {

namespace fs = std::filesystem;

// 256 bytes + <|endoftext|> (id 0) as an HF byte-level tokenizer.json.
std::string byte_tokenizer_json() {
    TrainedBpe t;
    t.special_tokens = {"<|endoftext|>"};
    t.tokens = {"<|endoftext|>"};
    for (int b = 0; b < 256; ++b)
        t.tokens.push_back(std::string(1, char(b)));
    t.pattern = std::string(BpeTrainerOptions::kGpt2Pattern);
    return t.to_tokenizer_json();
}

void write(const fs::path& p, const std::string& s) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << s;
}

class LoaderTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::path(FORGE_BINARY_DIR) / "generate_loader_test" /
               ::testing::UnitTest::GetInstance()->current_test_info()->name();
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    // Saves `model` as forge train does.
    void save(const Transformer& model, bool with_tokenizer = true) {
        formats::save_safetensors(dir_ / "model.safetensors", model.state_dict());
        write(dir_ / "config.json", model.config().to_hf_json());
        if (with_tokenizer) write(dir_ / "tokenizer.json", byte_tokenizer_json());
    }
    std::string error_of(const fs::path& p) {
        try {
            load_model_dir(p);
        } catch (const Error& e) {
            return e.what();
        }
        return "";
    }
    fs::path dir_;
};

std::vector<float> logits_of(Transformer& m, std::vector<int64_t> ids) {
    NoGradGuard ng;
    return m.forward(Tensor::from_vector(ids, {1, int64_t(ids.size())})).contiguous().to_vector<float>();
}

TEST_F(LoaderTest, RoundTripBothFamilies) {
    for (ModelFamily fam : {ModelFamily::gpt2, ModelFamily::llama}) {
        ModelConfig cfg = testing::small_config(fam, 257, 64);
        Transformer model(cfg, 21);
        save(model);
        LoadedModel lm = load_model_dir(dir_);
        ASSERT_TRUE(lm.tokenizer);
        EXPECT_EQ(lm.tokenizer->vocab_size(), 257u);
        EXPECT_EQ(lm.tokenizer_file.filename(), "tokenizer.json");
        EXPECT_EQ(lm.config.family, fam);
        EXPECT_EQ(logits_of(*lm.model, {5, 6, 7}), logits_of(model, {5, 6, 7}));
        // Same greedy generation from the loaded folder and the original model.
        GenerateOptions o;
        o.max_tokens = 8;
        o.sampling.temperature = 0;
        o.ignore_eos = true;
        auto a = Generator(*lm.model, lm.tokenizer).generate(std::string_view("hey"), o);
        auto b = Generator(model, lm.tokenizer).generate(std::string_view("hey"), o);
        EXPECT_EQ(a.tokens, b.tokens);
    }
}

TEST_F(LoaderTest, AcceptsHfBaseModelNamesAndBuffers) {
    ModelConfig cfg = testing::small_config(ModelFamily::gpt2, 257, 64);
    Transformer model(cfg, 4);
    std::map<std::string, Tensor> sd;
    for (auto& [name, t] : model.state_dict()) // GPT2Model names: no "transformer." prefix
        sd[name.substr(std::string("transformer.").size())] = t;
    sd["h.0.attn.bias"] = Tensor::ones({1, 1, 64, 64});      // HF's causal-mask buffer
    sd["lm_head.weight"] = model.state_dict().at("transformer.wte.weight"); // tied copy
    formats::save_safetensors(dir_ / "model.safetensors", sd);
    write(dir_ / "config.json", cfg.to_hf_json());
    write(dir_ / "tokenizer.json", byte_tokenizer_json());
    LoadedModel lm = load_model_dir(dir_);
    EXPECT_EQ(logits_of(*lm.model, {1, 2}), logits_of(model, {1, 2}));
}

TEST_F(LoaderTest, MissingFolderAndFiles) {
    EXPECT_THROW(load_model_dir(dir_ / "nope"), NotFound);
    EXPECT_NE(error_of(dir_ / "nope").find("does not exist"), std::string::npos);
    EXPECT_NE(error_of(dir_).find("config.json"), std::string::npos);

    Transformer model(testing::small_config(ModelFamily::gpt2, 257, 64));
    save(model, /*with_tokenizer=*/false);
    EXPECT_THROW(load_model_dir(dir_), NotFound);
    EXPECT_NE(error_of(dir_).find("tokenizer"), std::string::npos);
    EXPECT_FALSE(load_model_dir(dir_, {.require_tokenizer = false}).tokenizer);

    fs::remove(dir_ / "model.safetensors");
    EXPECT_THROW(load_model_dir(dir_), NotFound);
    EXPECT_NE(error_of(dir_).find("model.safetensors"), std::string::npos);
}

TEST_F(LoaderTest, CorruptFilesNameTheFile) {
    Transformer model(testing::small_config(ModelFamily::llama, 257, 64));
    save(model);
    write(dir_ / "config.json", "{ not json");
    EXPECT_THROW(load_model_dir(dir_), InvalidArgument);
    EXPECT_NE(error_of(dir_).find("config.json"), std::string::npos);

    save(model);
    // Truncated weights.
    {
        std::ifstream in(dir_ / "model.safetensors", std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), {});
        write(dir_ / "model.safetensors", bytes.substr(0, bytes.size() / 2));
    }
    EXPECT_THROW(load_model_dir(dir_), InvalidArgument);
    EXPECT_NE(error_of(dir_).find("model.safetensors"), std::string::npos);

    // A tensor missing.
    auto sd = model.state_dict();
    sd.erase("model.layers.1.mlp.up_proj.weight");
    formats::save_safetensors(dir_ / "model.safetensors", sd);
    EXPECT_NE(error_of(dir_).find("model.layers.1.mlp.up_proj.weight"), std::string::npos);

    // Weights of another shape than config.json says.
    ModelConfig wider = testing::small_config(ModelFamily::llama, 257, 64);
    wider.n_embd = 64;
    Transformer other(wider);
    formats::save_safetensors(dir_ / "model.safetensors", other.state_dict());
    std::string e = error_of(dir_);
    EXPECT_NE(e.find("shape"), std::string::npos) << e;

    // Weights of the other family.
    Transformer gpt2(testing::small_config(ModelFamily::gpt2, 257, 64));
    formats::save_safetensors(dir_ / "model.safetensors", gpt2.state_dict());
    EXPECT_NE(error_of(dir_).find("no place for"), std::string::npos);

    // A tokenizer larger than the model's vocabulary.
    save(model);
    Transformer small_vocab(testing::small_config(ModelFamily::llama, 100, 64));
    save(small_vocab);
    EXPECT_NE(error_of(dir_).find("vocabulary"), std::string::npos);
}

} // namespace
} // namespace forge
