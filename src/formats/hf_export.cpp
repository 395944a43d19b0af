// export_hf (include/forge/formats/hf_export.h): config.json from ModelConfig::to_hf_json with
// the dtype and special-token ids filled in, state_dict() (already HF-named) through
// save_safetensors_sharded, and the tokenizer's definition file under HF's names.
#include <forge/formats/hf_export.h>

#include <charconv>
#include <fstream>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>
#include <forge/formats/safetensors.h>
#include <forge/models/transformer.h>
#include <forge/tokenizers/tokenizer.h>

namespace forge::formats {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ModelConfig keeps eps/theta as float: 1e-5f would print as 9.999999747378752e-06. Numbers
// that are exactly a float are rewritten as that float's shortest decimal (1e-05).
void tidy_floats(json& j) {
    if (j.is_structured()) {
        for (auto& v : j)
            tidy_floats(v);
    } else if (j.is_number_float()) {
        const double d = j.get<double>();
        const float f = float(d);
        if (double(f) != d) return;
        char buf[32];
        auto r = std::to_chars(buf, buf + sizeof buf, f);
        j = std::stod(std::string(buf, r.ptr));
    }
}

void write_text(const fs::path& path, const std::string& text) {
    fs::path tmp = path;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        FORGE_CHECK(bool(out), "[export_hf] cannot write '", tmp.string(), "'");
        out << text;
        FORGE_CHECK(bool(out), "[export_hf] failed writing '", tmp.string(), "' (disk full?)");
    }
    fs::rename(tmp, path);
}

const char* torch_dtype(DType t) {
    switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    default: break;
    }
    throw InvalidArgument("[export_hf] dtype must be f32, f16 or bf16, got " +
                          std::string(dtype_name(t)));
}

// The tokenizer's files in HF's names: (source, name in the folder) pairs and the
// tokenizer_class AutoTokenizer should use for them.
struct TokenizerFiles {
    std::vector<std::pair<fs::path, std::string>> copies;
    std::string tokenizer_class;
};

TokenizerFiles tokenizer_files(const fs::path& src) {
    if (!fs::exists(src))
        throw NotFound("[export_hf] tokenizer file '" + src.string() + "' does not exist");
    if (fs::is_directory(src)) {
        if (fs::exists(src / "tokenizer.json")) return tokenizer_files(src / "tokenizer.json");
        if (fs::exists(src / "encoder.json") && fs::exists(src / "vocab.bpe"))
            // GPT-2's original files are HF's slow GPT2Tokenizer files under other names.
            return {{{src / "encoder.json", "vocab.json"}, {src / "vocab.bpe", "merges.txt"}},
                    "GPT2Tokenizer"};
        throw InvalidArgument("[export_hf] folder '" + src.string() +
                              "' has no tokenizer.json and no encoder.json + vocab.bpe");
    }
    const std::string ext = src.extension().string();
    // PreTrainedTokenizerFast runs tokenizer.json exactly as written (LlamaTokenizerFast would
    // rewrite its post-processor to add BOS).
    if (ext == ".json") return {{{src, "tokenizer.json"}}, "PreTrainedTokenizerFast"};
    if (ext == ".model") return {{{src, "tokenizer.model"}}, "LlamaTokenizer"};
    throw InvalidArgument("[export_hf] HF transformers cannot load tokenizer file '" +
                              src.string() + "'",
                          "export from a model whose tokenizer is a tokenizer.json, a "
                          "SentencePiece .model or a GPT-2 encoder.json + vocab.bpe folder");
}

} // namespace

void export_hf(const Transformer& model, const Tokenizer* tok, const fs::path& dir,
               const HfExportOptions& opts) {
    const ModelConfig& c = model.config();
    json cfg = json::parse(c.to_hf_json());
    tidy_floats(cfg);
    cfg["torch_dtype"] = torch_dtype(opts.dtype);

    TokenizerFiles tf;
    if (tok) {
        FORGE_CHECK(!opts.tokenizer_file.empty(),
                    "[export_hf] a tokenizer was given without HfExportOptions::tokenizer_file",
                    "pass the file it was loaded from (LoadedModel::tokenizer_file)");
        tf = tokenizer_files(opts.tokenizer_file);
        const Tokenizer check = Tokenizer::load(opts.tokenizer_file);
        FORGE_CHECK(check.vocab_size() == tok->vocab_size(), "[export_hf] ",
                    opts.tokenizer_file.string(), " holds ", check.vocab_size(),
                    " tokens but the tokenizer given has ", tok->vocab_size(),
                    ": it is not that tokenizer's file");
        FORGE_CHECK(int64_t(tok->vocab_size()) <= c.vocab_size, "[export_hf] the tokenizer has ",
                    tok->vocab_size(), " tokens, more than the model's vocabulary of ",
                    c.vocab_size);
        cfg["bos_token_id"] = tok->bos_id() ? json(*tok->bos_id()) : json(nullptr);
        cfg["eos_token_id"] = tok->eos_id() ? json(*tok->eos_id()) : json(nullptr);
    }

    // Weights: HF names already; a tied head is left out (HF re-ties lm_head to the embedding,
    // and its save_pretrained drops the duplicate the same way).
    std::map<std::string, Tensor> sd;
    for (const auto& [name, t] : model.state_dict())
        sd[name] = t.detach().to(Device::cpu()).to(opts.dtype);
    save_safetensors_sharded(dir, sd, {.max_shard_bytes = opts.max_shard_bytes},
                             {{"format", "pt"}}); // transformers refuses files without it
    write_text(dir / "config.json", cfg.dump(2) + "\n");

    if (!tok) return;
    for (const auto& [src, name] : tf.copies)
        fs::copy_file(src, dir / name, fs::copy_options::overwrite_existing);
    json tc = {{"tokenizer_class", tf.tokenizer_class},
               {"model_max_length", c.n_ctx},
               {"clean_up_tokenization_spaces", false}};
    if (tok->bos_id()) tc["bos_token"] = tok->token(*tok->bos_id());
    if (tok->eos_id()) tc["eos_token"] = tok->token(*tok->eos_id());
    if (tok->pad_id()) tc["pad_token"] = tok->token(*tok->pad_id());
    if (tok->unk_id()) tc["unk_token"] = tok->token(*tok->unk_id());
    write_text(dir / "tokenizer_config.json", tc.dump(2) + "\n");
    json gen = {{"_from_model_config", true},
                {"bos_token_id", cfg["bos_token_id"]},
                {"eos_token_id", cfg["eos_token_id"]}};
    write_text(dir / "generation_config.json", gen.dump(2) + "\n");
}

} // namespace forge::formats
