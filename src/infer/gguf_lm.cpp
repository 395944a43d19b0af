// QuantLM over a GGUF file: the model config from llama.cpp's metadata keys (formats::gguf_config),
// the tensors in place in the file's mapping (the file stays mapped while the engine lives).
#include <forge/infer/quant_lm.h>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>

namespace forge::infer {

std::unique_ptr<QuantLM> QuantLM::from_gguf(const std::filesystem::path& path, EngineOptions opts) {
    auto file = std::make_shared<formats::GgufFile>(formats::GgufFile::open(path));
    const ModelConfig cfg = formats::gguf_config(*file);
    Lookup lookup = [f = file.get()](const std::string& name) -> std::optional<TensorRef> {
        const formats::GgufTensorInfo* t = f->find_tensor(name);
        if (!t) return std::nullopt;
        return TensorRef{t->type, t->ne, t->data};
    };
    return std::make_unique<QuantLM>(cfg, lookup, file, opts);
}

} // namespace forge::infer
