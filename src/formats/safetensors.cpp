// safetensors reader/writer. The header is untrusted: every offset, shape and dtype is checked
// against the file before any data is read, and overflow in size arithmetic is rejected.
#include <forge/formats/safetensors.h>

#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include <forge/core/error.h>

namespace forge::formats {

using json = nlohmann::json;

namespace {

// Headers beyond this are rejected before allocation (the format's reference uses 100 MB).
constexpr uint64_t kMaxHeader = 100ull << 20;

DType dtype_from(const std::string& s, const std::string& origin, const std::string& name) {
    if (s == "F32") return DType::f32;
    if (s == "F64") return DType::f64;
    if (s == "F16") return DType::f16;
    if (s == "BF16") return DType::bf16;
    if (s == "I32") return DType::i32;
    if (s == "I64") return DType::i64;
    if (s == "U8" || s == "BOOL") return DType::u8;
    throw InvalidArgument(origin + ": tensor '" + name + "' has unsupported dtype '" + s + "'");
}

const char* dtype_tag(DType t) {
    switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
    }
    return "?";
}

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw NotFound("cannot open safetensors file '" + path.string() + "'");
    return std::string((std::istreambuf_iterator<char>(in)), {});
}

struct Header {
    json j;
    uint64_t data_start;
};

Header parse_header(const std::string& bytes, const std::string& origin) {
    FORGE_CHECK(bytes.size() >= 8, origin, ": file is ", bytes.size(),
                " bytes, too short for a safetensors header");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i)
        n = (n << 8) | uint8_t(bytes[size_t(i)]);
    FORGE_CHECK(n <= kMaxHeader, origin, ": header length ", n, " exceeds the 100 MB limit");
    FORGE_CHECK(n <= bytes.size() - 8, origin, ": header length ", n, " runs past the end of the ",
                bytes.size(), "-byte file");
    Header h;
    try {
        h.j = json::parse(bytes.begin() + 8, bytes.begin() + 8 + long(n));
    } catch (const json::exception& e) {
        throw InvalidArgument(origin + ": header is not valid JSON (" + e.what() + ")");
    }
    FORGE_CHECK(h.j.is_object(), origin, ": header must be a JSON object");
    h.data_start = 8 + n;
    return h;
}

} // namespace

std::map<std::string, Tensor> parse_safetensors(const std::string& bytes, const std::string& origin) {
    Header h = parse_header(bytes, origin);
    const uint64_t data_len = bytes.size() - h.data_start;
    std::map<std::string, Tensor> out;
    for (auto& [name, info] : h.j.items()) {
        if (name == "__metadata__") continue;
        FORGE_CHECK(info.is_object() && info.contains("dtype") && info.contains("shape") &&
                        info.contains("data_offsets"),
                    origin, ": tensor '", name, "' needs dtype, shape and data_offsets");
        FORGE_CHECK(info["dtype"].is_string(), origin, ": tensor '", name, "': dtype must be a string");
        DType dt = dtype_from(info["dtype"].get<std::string>(), origin, name);
        const json& js = info["shape"];
        const json& jo = info["data_offsets"];
        FORGE_CHECK(js.is_array() && js.size() <= 8, origin, ": tensor '", name,
                    "': shape must be an array of at most 8 dims");
        FORGE_CHECK(jo.is_array() && jo.size() == 2 && jo[0].is_number_unsigned() &&
                        jo[1].is_number_unsigned(),
                    origin, ": tensor '", name, "': data_offsets must be two unsigned integers");
        Shape shape;
        uint64_t numel = 1;
        for (auto& d : js) {
            FORGE_CHECK(d.is_number_unsigned(), origin, ": tensor '", name,
                        "': shape entries must be unsigned integers");
            uint64_t v = d.get<uint64_t>();
            FORGE_CHECK(v == 0 || numel <= (uint64_t(1) << 62) / v, origin, ": tensor '", name,
                        "': shape overflows");
            numel *= v;
            shape.push_back(int64_t(v));
        }
        uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
        FORGE_CHECK(begin <= end && end <= data_len, origin, ": tensor '", name, "': bytes [",
                    begin, ", ", end, ") lie outside the ", data_len, "-byte data section");
        FORGE_CHECK(end - begin == numel * dtype_size(dt), origin, ": tensor '", name, "' of shape ",
                    shape_str(shape), " needs ", numel * dtype_size(dt), " bytes but its range has ",
                    end - begin);
        Tensor t = Tensor::empty(shape, dt);
        if (numel) std::memcpy(t.data_ptr(), bytes.data() + h.data_start + begin, end - begin);
        out.emplace(name, t);
    }
    return out;
}

std::map<std::string, Tensor> load_safetensors(const std::filesystem::path& path) {
    return parse_safetensors(read_file(path), path.string());
}

std::map<std::string, std::string> safetensors_metadata(const std::filesystem::path& path) {
    std::string bytes = read_file(path);
    Header h = parse_header(bytes, path.string());
    std::map<std::string, std::string> meta;
    if (h.j.contains("__metadata__") && h.j["__metadata__"].is_object())
        for (auto& [k, v] : h.j["__metadata__"].items())
            if (v.is_string()) meta[k] = v.get<std::string>();
    return meta;
}

void save_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<Tensor> data;
    uint64_t offset = 0;
    for (auto& [name, t] : tensors) {
        FORGE_CHECK(t.defined(), "[save_safetensors] tensor '", name, "' is undefined");
        Tensor c = t.detach().to(Device::cpu()).contiguous();
        header[name] = {{"dtype", dtype_tag(c.dtype())},
                        {"shape", c.shape()},
                        {"data_offsets", {offset, offset + c.nbytes()}}};
        offset += c.nbytes();
        data.push_back(c);
    }
    std::string hs = header.dump();
    hs.append((8 - hs.size() % 8) % 8, ' '); // pad so the data section starts 8-byte aligned
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw InvalidArgument("cannot write '" + tmp.string() + "'");
        uint64_t n = hs.size();
        char len[8];
        for (int i = 0; i < 8; ++i)
            len[i] = char((n >> (8 * i)) & 0xff);
        out.write(len, 8);
        out.write(hs.data(), long(hs.size()));
        for (auto& c : data)
            out.write(static_cast<const char*>(c.data_ptr()), long(c.nbytes()));
        if (!out) throw InvalidArgument("failed writing '" + tmp.string() + "' (disk full?)");
    }
    std::filesystem::rename(tmp, path);
}

} // namespace forge::formats
