// `forge quantize IN.gguf OUT.gguf TYPE`: re-quantizes every 2-D weight of a GGUF file to TYPE
// (through f32), keeping all metadata and updating general.file_type. Norms, biases and other
// 1-D tensors keep their type; rows that do not fit TYPE's blocks fall back (docs/formats.md).
#include <cstdio>
#include <string>

#include "command.h"
#include <forge/core/error.h>
#include <forge/formats/gguf_model.h>

namespace forge::cli {

namespace {

struct QuantizeOptions {
    std::string in, out, type;
};

void run_quantize(const QuantizeOptions& o) {
    const quant::GgmlType type = quant::parse_type(o.type);
    FORGE_CHECK(o.in != o.out, "IN and OUT are the same file; write to another path");
    formats::requantize_gguf(o.in, o.out, type);
    std::fprintf(stderr, "[quantize] %s -> %s (%s)\n", o.in.c_str(), o.out.c_str(),
                 std::string(quant::type_info(type).name).c_str());
}

} // namespace

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<QuantizeOptions>();
    auto* cmd = root.add_subcommand("quantize", "Re-quantize the weights of a .gguf file");
    cmd->add_option("IN", o->in, "input .gguf")->required();
    cmd->add_option("OUT", o->out, "output .gguf")->required();
    cmd->add_option("TYPE", o->type, "f32, f16, bf16, q8_0, q4_0 or q4_k")->required();
    cmd->callback([o] { run_quantize(*o); });
});

} // namespace forge::cli
