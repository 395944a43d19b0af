// `forge convert IN OUT [--type T]`: a model folder (Forge's or an HF one: config.json +
// model.safetensors + tokenizer) <-> a .gguf file. Folder -> .gguf writes llama.cpp's names with
// 2-D weights as T (default f16); .gguf -> folder writes config.json, model.safetensors (f32,
// dequantized) and the tokenizer (tokenizer.json, or tokenizer.model for SentencePiece).
// ONNX export is not part of this command in this build.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "command.h"
#include <forge/core/error.h>
#include <forge/formats/gguf_model.h>
#include <forge/formats/safetensors.h>
#include <forge/models/loader.h>
#include <forge/models/transformer.h>

namespace forge::cli {

namespace {

namespace fs = std::filesystem;

struct ConvertOptions {
    std::string in, out, type = "f16";
};

void write_text(const fs::path& p, const std::string& s) {
    std::ofstream o(p, std::ios::binary | std::ios::trunc);
    o.write(s.data(), std::streamsize(s.size()));
    if (!o) throw InvalidArgument("cannot write '" + p.string() + "'");
}

void gguf_to_folder(const fs::path& in, const fs::path& out) {
    const formats::GgufFile f = formats::GgufFile::open(in);
    LoadedModel lm = formats::gguf_to_model(f);
    std::error_code ec;
    fs::create_directories(out, ec);
    FORGE_CHECK(fs::is_directory(out), "cannot create the folder '", out.string(), "'");
    write_text(out / "config.json", lm.config.to_hf_json());
    formats::save_safetensors(out / "model.safetensors", lm.model->state_dict());
    if (auto tok = formats::gguf_tokenizer_file(f)) write_text(out / tok->name, tok->bytes);
    std::fprintf(stderr, "[convert] %s -> %s (config.json, model.safetensors%s)\n",
                 in.string().c_str(), out.string().c_str(),
                 formats::gguf_tokenizer_file(f) ? ", tokenizer" : ", no tokenizer in the file");
}

void run_convert(const ConvertOptions& o) {
    const fs::path in = o.in, out = o.out;
    const quant::GgmlType type = quant::parse_type(o.type); // flags first
    const bool in_gguf = in.extension() == ".gguf", out_gguf = out.extension() == ".gguf";
    if (in_gguf && !out_gguf) {
        FORGE_CHECK(out.extension().empty(), "unsupported output extension '", out.extension().string(),
                    "' (convert writes a .gguf file or a model folder)");
        gguf_to_folder(in, out);
        return;
    }
    FORGE_CHECK(!in_gguf, "both IN and OUT are .gguf files; use `forge quantize IN OUT TYPE` to "
                          "change the type of a GGUF file");
    FORGE_CHECK(out_gguf, "unsupported output extension '", out.extension().string(),
                "' (convert writes a .gguf file or, from a .gguf, a model folder)");
    LoadedModel lm = load_model_dir(in, {.require_tokenizer = false});
    formats::save_gguf(*lm.model, lm.tokenizer ? &*lm.tokenizer : nullptr, out, type,
                       in.filename().string());
    std::fprintf(stderr, "[convert] %s -> %s (%s%s)\n", in.string().c_str(), out.string().c_str(),
                 std::string(quant::type_info(type).name).c_str(),
                 lm.tokenizer ? "" : ", no tokenizer in the folder");
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<ConvertOptions>();
    auto* cmd = root.add_subcommand("convert", "Convert a model folder <-> a .gguf file");
    cmd->add_option("IN", o->in, "model folder or .gguf file")->required();
    cmd->add_option("OUT", o->out, ".gguf file (from a folder) or model folder (from a .gguf)")
        ->required();
    cmd->add_option("--type", o->type, "GGUF weight type: f32, f16, bf16, q8_0, q4_0, q4_k")
        ->capture_default_str();
    cmd->callback([o] { run_convert(*o); });
});

} // namespace forge::cli
