// QuantLM over a GGUF file: the model config from llama.cpp's metadata keys (formats::gguf_config),
// the tensors read from the file's mapping (which stays while the engine lives: token embeddings
// are looked up there; the matrices move into the engine's arena and give their pages back).
#include <forge/infer/quant_lm.h>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>

namespace forge::infer {

namespace {

std::unique_ptr<QuantLM> from_file(std::shared_ptr<formats::GgufFile> file, bool mapped,
                                   EngineOptions opts) {
    const ModelConfig cfg = formats::gguf_config(*file);
    QuantLM::Lookup lookup = [f = file.get(), mapped](const std::string& name) -> std::optional<TensorRef> {
        const formats::GgufTensorInfo* t = f->find_tensor(name);
        if (!t) return std::nullopt;
        return TensorRef{t->type, t->ne, t->data, mapped};
    };
    return std::make_unique<QuantLM>(cfg, lookup, file, opts);
}

} // namespace

std::unique_ptr<QuantLM> QuantLM::from_gguf(const std::filesystem::path& path, EngineOptions opts) {
    return from_file(std::make_shared<formats::GgufFile>(formats::GgufFile::open(path)), true, opts);
}

// The bytes `forge convert` would write (formats::gguf_writer: llama.cpp's names and layouts),
// parsed in memory: one mapping from Forge's tensors to the engine's, shared with the files.
std::unique_ptr<QuantLM> QuantLM::from_transformer(Transformer& model, quant::GgmlType type,
                                                   EngineOptions opts) {
    const std::vector<uint8_t> bytes = formats::gguf_writer(model, nullptr, type).bytes();
    return from_file(std::make_shared<formats::GgufFile>(formats::GgufFile::parse(bytes, "<model>")),
                     false, opts);
}

} // namespace forge::infer
