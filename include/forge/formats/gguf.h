// GGUF v3 (llama.cpp's model file): a header, typed key/value metadata, tensor infos, then the
// tensor data, each tensor at an offset aligned to `general.alignment` (default 32). Reading
// memory-maps the file and validates every count, length, offset and size against the file
// before anything is read, so a truncated or lying file gives InvalidArgument naming the file,
// the byte offset and what is wrong. Writing produces files llama.cpp loads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <forge/quant/ggml_types.h>

namespace forge::formats {

enum class GgufType : uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
    string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};

/// One metadata value. Arrays hold scalars or strings of one element type (nested arrays are
/// allowed by the spec and kept as GgufArray elements).
struct GgufArray;
struct GgufValue {
    GgufType type = GgufType::u32;
    std::variant<uint64_t, int64_t, double, bool, std::string, std::shared_ptr<GgufArray>> v;

    // Typed accessors: throw InvalidArgument naming the expected and actual type when the
    // value does not hold that kind. Integer accessors accept every integer type in range.
    int64_t as_int() const;
    uint64_t as_uint() const;
    double as_float() const;
    bool as_bool() const;
    const std::string& as_string() const;
    const GgufArray& as_array() const;

    static GgufValue u32(uint32_t x);
    static GgufValue i32(int32_t x);
    static GgufValue u64(uint64_t x);
    static GgufValue f32(float x);
    static GgufValue boolean(bool x);
    static GgufValue str(std::string s);
    static GgufValue array(GgufType elem, std::vector<GgufValue> items);
};
struct GgufArray {
    GgufType elem = GgufType::u32;
    std::vector<GgufValue> items;
};

struct GgufTensorInfo {
    std::string name;
    /// ggml order: ne[0] is the fastest-varying (innermost) dimension, i.e. the reverse of a
    /// row-major shape. A Linear weight (out, in) has ne = {in, out}.
    std::vector<int64_t> ne;
    quant::GgmlType type = quant::GgmlType::f32;
    uint64_t offset = 0;   ///< from the start of the data section
    uint64_t nbytes = 0;
    const uint8_t* data = nullptr; ///< into the mapping (reader) — valid while the file lives

    int64_t numel() const;
};

/// A parsed, memory-mapped GGUF file. Move-only; tensor data pointers stay valid while it lives.
class GgufFile {
  public:
    /// Throws NotFound, or InvalidArgument naming the path, byte offset and problem.
    static GgufFile open(const std::filesystem::path& path);
    /// The same over bytes in memory (copied); `origin` names them in errors (fuzzing, tests).
    static GgufFile parse(std::span<const uint8_t> bytes, std::string origin = "<memory>");

    GgufFile(GgufFile&&) noexcept;
    GgufFile& operator=(GgufFile&&) noexcept;
    ~GgufFile();

    uint32_t version() const;
    uint64_t alignment() const;
    /// Metadata in file order.
    const std::vector<std::pair<std::string, GgufValue>>& metadata() const;
    const GgufValue* find(std::string_view key) const;
    /// The value of a required key; throws InvalidArgument naming the key and the file.
    const GgufValue& at(std::string_view key) const;
    const std::vector<GgufTensorInfo>& tensors() const;
    const GgufTensorInfo* find_tensor(std::string_view name) const;
    const std::string& origin() const;

  private:
    struct Impl;
    explicit GgufFile(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

/// Builds a GGUF v3 file: metadata in insertion order, tensors in insertion order, data aligned.
class GgufWriter {
  public:
    explicit GgufWriter(uint64_t alignment = 32);
    void set(std::string key, GgufValue value); ///< replaces an existing key in place
    /// `data` holds quant::row_bytes(type, ne[0]) * (rows) bytes; it is copied.
    void add_tensor(std::string name, std::vector<int64_t> ne, quant::GgmlType type,
                    std::span<const uint8_t> data);
    /// Writes atomically (temp file + rename).
    void write(const std::filesystem::path& path) const;
    /// The file's bytes (tests, fuzz seeds).
    std::vector<uint8_t> bytes() const;

  private:
    uint64_t alignment_;
    std::vector<std::pair<std::string, GgufValue>> metadata_;
    struct PendingTensor {
        std::string name;
        std::vector<int64_t> ne;
        quant::GgmlType type;
        std::vector<uint8_t> data;
    };
    std::vector<PendingTensor> tensors_;
};

} // namespace forge::formats
