// GGUF fuzzing: any bytes must parse or fail with forge::Error (never crash, read out of bounds
// or allocate absurdly), and a parsed file's metadata -> ModelConfig and tokenizer.ggml.* ->
// Tokenizer mappings, and the dequantization of its (small) tensors, must do the same.
//   ./build-fuzz/tests/fuzz/gguf_fuzz -max_total_time=180 tests/fuzz/corpus/gguf
#include <cstddef>
#include <cstdint>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>

#include "formats/gguf_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace forge::formats;
    try {
        GgufFile f = GgufFile::parse({data, size}, "fuzz");
        for (const auto& t : f.tensors())
            if (t.nbytes <= (1u << 20)) (void)gguf_detail::dequantize(t);
        try {
            (void)gguf_config(f);
        } catch (const forge::Error&) {
        }
        if (auto tok = gguf_tokenizer(f)) {
            auto ids = tok->encode("Hello world, it's 42!");
            (void)tok->decode(ids);
        }
    } catch (const forge::Error&) {
    }
    return 0;
}
