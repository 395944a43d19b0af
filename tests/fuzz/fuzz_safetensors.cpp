// libFuzzer: any bytes as a .safetensors file (formats::parse_safetensors) and as a
// model.safetensors.index.json (formats::parse_safetensors_index) either parse or throw
// forge::Error -- never crash, read out of bounds, hang or throw anything else. A file that
// parses is written back with save_safetensors and must parse to the same tensors.
// Seeds come from save_safetensors itself:
//   FORGE_FUZZ_WRITE_SEEDS=tests/fuzz/corpus/safetensors ./build-fuzz/tests/fuzz/safetensors_fuzz -runs=0
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

#include <forge/core/error.h>
#include <forge/formats/safetensors.h>

namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
}

void write_seeds(const fs::path& dir) {
    using forge::DType;
    using forge::Tensor;
    fs::create_directories(dir);
    namespace F = forge::formats;
    F::save_safetensors(dir / "empty.safetensors", {});
    F::save_safetensors(dir / "one_f32.safetensors", {{"w", Tensor::randn({2, 3}, 1)}},
                        {{"format", "pt"}});
    std::map<std::string, Tensor> all;
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64,
                     DType::u8})
        all[std::string("t_") + std::string(forge::dtype_name(dt))] =
            Tensor::randn({2, 2}, 2).to(dt);
    all["scalar"] = Tensor::scalar(1.5);
    all["zero"] = Tensor::zeros({0, 4});
    F::save_safetensors(dir / "dtypes.safetensors", all);
    // Index seeds: what save_safetensors_sharded writes.
    const fs::path sh = dir / ".shards";
    F::save_safetensors_sharded(sh, {{"a", Tensor::randn({8}, 3)}, {"b", Tensor::randn({8}, 4)}},
                                {.max_shard_bytes = 32, .prefix = "model"});
    std::ofstream(dir / "index.json", std::ios::binary)
        << slurp(sh / "model.safetensors.index.json");
    fs::remove_all(sh);
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    if (const char* dir = std::getenv("FORGE_FUZZ_WRITE_SEEDS")) write_seeds(dir);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    try {
        auto tensors = forge::formats::parse_safetensors(bytes, "fuzz.safetensors");
        // Round trip through the writer (a per-process temp file).
        static const fs::path tmp =
            fs::temp_directory_path() / ("forge_fuzz_st_" + std::to_string(::getpid()));
        forge::formats::save_safetensors(tmp, tensors);
        auto back = forge::formats::parse_safetensors(slurp(tmp), "roundtrip");
        if (back.size() != tensors.size()) std::abort();
        for (const auto& [name, t] : tensors) {
            const auto& u = back.at(name);
            if (u.shape() != t.shape() || u.dtype() != t.dtype() ||
                (t.nbytes() && std::memcmp(u.data_ptr(), t.data_ptr(), t.nbytes()) != 0))
                std::abort();
        }
    } catch (const forge::Error&) {
    }
    try {
        (void)forge::formats::parse_safetensors_index(bytes, "fuzz.index.json");
    } catch (const forge::Error&) {
    }
    return 0;
}
