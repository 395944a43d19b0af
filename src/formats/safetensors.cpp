// safetensors reader/writer. The header is untrusted: every offset, shape and dtype is checked
// against the file before any data is read, and overflow in size arithmetic is rejected.
#include <forge/formats/safetensors.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

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

// ------------------------------------------------------------------------- sharded checkpoints

namespace {

std::string shard_name(const std::string& prefix, size_t i, size_t n) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu.safetensors", i, n);
    return prefix + buf;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw InvalidArgument("cannot write '" + tmp.string() + "'");
        out << text;
        if (!out) throw InvalidArgument("failed writing '" + tmp.string() + "' (disk full?)");
    }
    std::filesystem::rename(tmp, path);
}

} // namespace

std::vector<std::filesystem::path>
save_safetensors_sharded(const std::filesystem::path& dir,
                         const std::map<std::string, Tensor>& tensors,
                         const SafetensorsShardOptions& opts,
                         const std::map<std::string, std::string>& metadata) {
    namespace fs = std::filesystem;
    FORGE_CHECK(opts.max_shard_bytes > 0, "[save_safetensors] max_shard_bytes must be > 0");
    FORGE_CHECK(!opts.prefix.empty() && opts.prefix.find('/') == std::string::npos,
                "[save_safetensors] prefix '", opts.prefix, "' must be a plain file name");
    std::error_code ec;
    fs::create_directories(dir, ec);
    FORGE_CHECK(!ec, "[save_safetensors] cannot create '", dir.string(), "': ", ec.message());
    // HF's split (huggingface_hub split_torch_state_dict_into_shards): fill in order, start a
    // new shard when the next tensor would overflow a non-empty one.
    std::vector<std::map<std::string, Tensor>> shards(1);
    uint64_t in_shard = 0, total = 0;
    for (const auto& [name, t] : tensors) {
        FORGE_CHECK(t.defined(), "[save_safetensors] tensor '", name, "' is undefined");
        const uint64_t n = t.nbytes();
        if (!shards.back().empty() && in_shard + n > opts.max_shard_bytes) {
            shards.emplace_back();
            in_shard = 0;
        }
        shards.back().emplace(name, t);
        in_shard += n;
        total += n;
    }
    const fs::path single = dir / (opts.prefix + ".safetensors");
    const fs::path index = dir / (opts.prefix + ".safetensors.index.json");
    // Remove the other layout's files so a loader never sees two checkpoints.
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string f = e.path().filename().string();
        if (f.rfind(opts.prefix + "-", 0) == 0 && f.size() > 12 &&
            f.compare(f.size() - 12, 12, ".safetensors") == 0 && f.find("-of-") != std::string::npos)
            fs::remove(e.path(), ec);
    }
    fs::remove(index, ec);
    fs::remove(single, ec);
    if (shards.size() == 1) {
        save_safetensors(single, shards[0], metadata);
        return {single};
    }
    std::vector<fs::path> written;
    json weight_map = json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
        const std::string f = shard_name(opts.prefix, i + 1, shards.size());
        save_safetensors(dir / f, shards[i], metadata);
        for (const auto& [name, t] : shards[i])
            weight_map[name] = f;
        written.push_back(dir / f);
    }
    json j = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_text(index, j.dump(2) + "\n");
    written.push_back(index);
    return written;
}

SafetensorsIndex parse_safetensors_index(const std::string& text, const std::string& origin) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        throw InvalidArgument(origin + ": not valid JSON (" + e.what() + ")");
    }
    FORGE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), origin,
                ": no \"weight_map\" object");
    SafetensorsIndex idx;
    if (j.contains("metadata") && !j["metadata"].is_null()) {
        const json& m = j["metadata"];
        FORGE_CHECK(m.is_object(), origin, ": \"metadata\" must be an object");
        if (m.contains("total_size")) {
            FORGE_CHECK(m["total_size"].is_number_unsigned(), origin,
                        ": metadata.total_size must be an unsigned integer");
            idx.total_size = m["total_size"].get<uint64_t>();
        }
    }
    for (const auto& [name, file] : j["weight_map"].items()) {
        FORGE_CHECK(file.is_string(), origin, ": weight_map[\"", name, "\"] is not a file name");
        std::string f = file.get<std::string>();
        FORGE_CHECK(!f.empty() && f != "." && f != ".." && f.find('/') == std::string::npos &&
                        f.find('\\') == std::string::npos && f.find('\0') == std::string::npos,
                    origin, ": shard '", f, "' of tensor '", name, "' is not a plain file name");
        idx.weight_map.emplace(name, std::move(f));
    }
    return idx;
}

std::map<std::string, Tensor> load_safetensors_sharded(const std::filesystem::path& index_file) {
    std::ifstream in(index_file, std::ios::binary);
    if (!in) throw NotFound("cannot open safetensors index '" + index_file.string() + "'");
    const std::string origin = index_file.string();
    const SafetensorsIndex idx =
        parse_safetensors_index(std::string((std::istreambuf_iterator<char>(in)), {}), origin);
    std::set<std::string> shards;
    for (const auto& [name, f] : idx.weight_map)
        shards.insert(f);
    std::map<std::string, Tensor> all;
    for (const std::string& f : shards) {
        const std::filesystem::path p = index_file.parent_path() / f;
        for (auto& [name, t] : load_safetensors(p)) {
            auto it = idx.weight_map.find(name);
            FORGE_CHECK(it != idx.weight_map.end() && it->second == f, origin, ": shard ", f,
                        " holds tensor '", name, "', which the index ",
                        it == idx.weight_map.end() ? std::string("does not list")
                                                   : "places in " + it->second);
            all.emplace(name, std::move(t));
        }
    }
    for (const auto& [name, f] : idx.weight_map)
        FORGE_CHECK(all.count(name), origin, ": tensor '", name, "' is not in its shard ", f);
    return all;
}

std::map<std::string, Tensor> load_safetensors_dir(const std::filesystem::path& dir) {
    const std::filesystem::path single = dir / "model.safetensors";
    const std::filesystem::path index = dir / "model.safetensors.index.json";
    if (std::filesystem::exists(single)) return load_safetensors(single);
    if (std::filesystem::exists(index)) return load_safetensors_sharded(index);
    throw NotFound(dir.string() + " has neither model.safetensors nor model.safetensors.index.json");
}

} // namespace forge::formats
