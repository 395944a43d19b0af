// load_model_dir (include/forge/models/loader.h): folder -> config -> Transformer -> weights ->
// tokenizer, each failure named with the file it is about.
#include <forge/models/loader.h>

#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>
#include <forge/formats/gguf_model.h>
#include <forge/formats/safetensors.h>
#include <forge/models/transformer.h>

namespace forge {

namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    if (!in) throw NotFound("[load] cannot read '" + p.string() + "'");
    return std::string((std::istreambuf_iterator<char>(in)), {});
}

bool ends_with(const std::string& s, std::string_view tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// HF buffers that are recomputed, not learned: skipped when a file carries them.
bool ignorable_buffer(const std::string& name) {
    return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
           ends_with(name, "rotary_emb.inv_freq");
}

// Every tensor of the folder's weights: model.safetensors, or the shards an HF
// model.safetensors.index.json names.
std::map<std::string, Tensor> read_weights(const fs::path& dir) {
    const fs::path single = dir / "model.safetensors";
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(single)) return formats::load_safetensors(single);
    if (!fs::exists(index))
        throw NotFound("[load] " + dir.string() + " has no model.safetensors",
                       "a model folder holds model.safetensors, config.json and tokenizer.json "
                       "(forge train --out DIR writes one)");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(read_text(index));
    } catch (const nlohmann::json::exception& e) {
        throw InvalidArgument("[load] " + index.string() + ": not valid JSON: " + e.what());
    }
    FORGE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                "[load] ", index.string(), ": no \"weight_map\" object");
    std::set<std::string> shards;
    for (auto& [name, file] : j["weight_map"].items()) {
        FORGE_CHECK(file.is_string(), "[load] ", index.string(), ": weight_map[\"", name,
                    "\"] is not a file name");
        const std::string f = file.get<std::string>();
        FORGE_CHECK(f.find('/') == std::string::npos && f.find('\\') == std::string::npos,
                    "[load] ", index.string(), ": shard '", f, "' is not a plain file name");
        shards.insert(f);
    }
    std::map<std::string, Tensor> all;
    for (const std::string& f : shards)
        for (auto& [name, t] : formats::load_safetensors(dir / f))
            all[name] = t;
    return all;
}

// Maps the file's names onto the model's, checking names and shapes.
std::map<std::string, Tensor> match_weights(const std::map<std::string, Tensor>& file,
                                            const std::map<std::string, Tensor>& want,
                                            const ModelConfig& cfg, const std::string& origin) {
    std::map<std::string, Tensor> out;
    std::vector<std::string> unexpected;
    for (const auto& [name, t] : file) {
        std::string target = name;
        if (!want.count(target) && want.count("transformer." + name))
            target = "transformer." + name; // HF GPT2Model (no LM head wrapper) names
        if (!want.count(target)) {
            if (ignorable_buffer(name)) continue;
            if (name == "lm_head.weight" && cfg.tie_embeddings) continue; // tied: same as wte
            unexpected.push_back(name);
            continue;
        }
        const Tensor& w = want.at(target);
        FORGE_CHECK(t.shape() == w.shape(), "[load] ", origin, ": tensor '", name, "' has shape ",
                    shape_str(t.shape()), " but the config.json model needs ",
                    shape_str(w.shape()));
        FORGE_CHECK(is_floating(t.dtype()), "[load] ", origin, ": tensor '", name,
                    "' has dtype ", dtype_name(t.dtype()), "; weights must be floating point");
        out[target] = t;
    }
    auto list = [](const std::vector<std::string>& names) {
        std::string s;
        for (size_t i = 0; i < names.size() && i < 5; ++i)
            s += (i ? ", " : "") + names[i];
        if (names.size() > 5) s += ", ... (" + std::to_string(names.size()) + " in all)";
        return s;
    };
    if (!unexpected.empty())
        throw InvalidArgument("[load] " + origin + " has tensors the config.json model has no "
                                                   "place for: " + list(unexpected),
                              "config.json and the weights must come from the same model");
    std::vector<std::string> missing;
    for (const auto& [name, t] : want)
        if (!out.count(name)) missing.push_back(name);
    if (!missing.empty())
        throw InvalidArgument("[load] " + origin + " lacks tensors the config.json model needs: " +
                                  list(missing),
                              "config.json and the weights must come from the same model");
    return out;
}

} // namespace

std::optional<fs::path> find_tokenizer_file(const fs::path& dir) {
    if (fs::exists(dir / "tokenizer.json")) return dir / "tokenizer.json";
    std::vector<fs::path> tiktoken;
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file() && e.path().extension() == ".tiktoken") tiktoken.push_back(e.path());
    if (tiktoken.size() == 1) return tiktoken[0];
    if (fs::exists(dir / "tokenizer.model")) return dir / "tokenizer.model";
    if (fs::exists(dir / "encoder.json") && fs::exists(dir / "vocab.bpe")) return dir;
    return std::nullopt;
}

LoadedModel load_model_dir(const fs::path& dir, const LoadModelOptions& opts) {
    const std::string where = dir.string();
    std::error_code ec;
    if (!fs::exists(dir, ec))
        throw NotFound("[load] model folder '" + where + "' does not exist",
                       "pass the folder `forge train --out DIR` wrote");
    // A single .gguf file (llama.cpp's format) holds config, weights and tokenizer.
    if (dir.extension() == ".gguf" && fs::is_regular_file(dir, ec)) {
        LoadedModel g = formats::load_gguf_model(dir);
        if (!g.tokenizer && opts.require_tokenizer)
            throw NotFound("[load] " + where + " has no tokenizer (no tokenizer.ggml.* metadata)");
        return g;
    }
    FORGE_CHECK(fs::is_directory(dir, ec), "[load] '", where,
                "' is not a folder (a model folder holds model.safetensors, config.json and "
                "tokenizer.json)");

    LoadedModel out;
    out.dir = dir;
    const fs::path config_path = dir / "config.json";
    if (!fs::exists(config_path))
        throw NotFound("[load] " + where + " has no config.json",
                       "a model folder holds model.safetensors, config.json and tokenizer.json "
                       "(forge train --out DIR writes one)");
    try {
        out.config = ModelConfig::from_hf_json(read_text(config_path));
        out.config.validate();
    } catch (const InvalidArgument& e) {
        throw InvalidArgument("[load] " + config_path.string() + ": " + e.what(), e.hint());
    }
    // The model is also what it wants: its state_dict names the tensors and their shapes.
    // Random init here is wasted work (~1 s for 124M params) but keeps one constructor.
    out.model = std::make_shared<Transformer>(out.config);
    const std::map<std::string, Tensor> file = read_weights(dir);
    out.model->load_state_dict(match_weights(file, out.model->state_dict(), out.config, where),
                               /*strict=*/true);
    out.model->requires_grad(false);
    out.model->eval();

    auto tok_file = find_tokenizer_file(dir);
    if (!tok_file) {
        if (opts.require_tokenizer)
            throw NotFound("[load] " + where + " has no tokenizer (tokenizer.json, *.tiktoken, "
                                               "tokenizer.model or encoder.json + vocab.bpe)",
                           "copy the tokenizer file the model was trained with into the folder");
        return out;
    }
    out.tokenizer_file = *tok_file;
    out.tokenizer = Tokenizer::load(*tok_file);
    const int64_t n_tok = int64_t(out.tokenizer->vocab_size());
    FORGE_CHECK(n_tok <= out.config.vocab_size, "[load] ", out.tokenizer_file.string(), " has ",
                n_tok, " tokens but the model's vocabulary (config.json vocab_size) is ",
                out.config.vocab_size);
    return out;
}

} // namespace forge
