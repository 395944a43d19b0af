// GGUF v3 reader and writer. The file is untrusted: a Cursor reads every field with a bounds
// check, counts are capped before anything is allocated, and tensor extents are checked against
// the data section (overflow included) before a pointer into the mapping is handed out.
#include <forge/formats/gguf.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <forge/core/error.h>

namespace forge::formats {

namespace {

constexpr uint32_t kMagic = 0x46554747; // "GGUF" little-endian
// Caps that no real model approaches; they stop a lying count from allocating the machine away.
constexpr uint64_t kMaxTensors = 1u << 20;
constexpr uint64_t kMaxKeys = 1u << 20;
constexpr uint64_t kMaxStringBytes = 1u << 30;
constexpr uint64_t kMaxArrayItems = 1u << 28;
constexpr uint32_t kMaxDims = 4; // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;

const char* type_name(GgufType t) {
    switch (t) {
    case GgufType::u8: return "u8";
    case GgufType::i8: return "i8";
    case GgufType::u16: return "u16";
    case GgufType::i16: return "i16";
    case GgufType::u32: return "u32";
    case GgufType::i32: return "i32";
    case GgufType::f32: return "f32";
    case GgufType::boolean: return "bool";
    case GgufType::string: return "string";
    case GgufType::array: return "array";
    case GgufType::u64: return "u64";
    case GgufType::i64: return "i64";
    case GgufType::f64: return "f64";
    }
    return "?";
}

bool is_unsigned(GgufType t) {
    return t == GgufType::u8 || t == GgufType::u16 || t == GgufType::u32 || t == GgufType::u64;
}
bool is_signed(GgufType t) {
    return t == GgufType::i8 || t == GgufType::i16 || t == GgufType::i32 || t == GgufType::i64;
}

// Reads little-endian fields from [data, data + size); every read is bounds-checked and a
// failure names the origin, the byte offset and what was being read.
class Cursor {
  public:
    Cursor(const uint8_t* data, uint64_t size, const std::string& origin)
        : data_(data), size_(size), origin_(origin) {}

    uint64_t pos() const { return pos_; }
    [[noreturn]] void fail(const std::string& what) const {
        throw InvalidArgument(origin_ + ": at byte " + std::to_string(pos_) + ": " + what);
    }
    void need(uint64_t n, const char* what) const {
        if (n > size_ - pos_)
            fail(std::string("file ends inside ") + what + " (" + std::to_string(n) +
                 " bytes needed, " + std::to_string(size_ - pos_) + " left)");
    }
    template <typename T> T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, data_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string string(const char* what) {
        const uint64_t n = read<uint64_t>(what);
        if (n > kMaxStringBytes) fail(std::string(what) + " length " + std::to_string(n) + " is absurd");
        need(n, what);
        std::string s(reinterpret_cast<const char*>(data_ + pos_), size_t(n));
        pos_ += n;
        return s;
    }

  private:
    const uint8_t* data_;
    uint64_t size_;
    uint64_t pos_ = 0;
    const std::string& origin_;
};

GgufValue read_value(Cursor& c, GgufType type, int depth);

GgufType read_type(Cursor& c, const char* what) {
    const uint32_t raw = c.read<uint32_t>(what);
    if (raw > uint32_t(GgufType::f64)) c.fail(std::string("unknown value type ") + std::to_string(raw));
    return GgufType(raw);
}

GgufValue read_value(Cursor& c, GgufType type, int depth) {
    GgufValue v;
    v.type = type;
    switch (type) {
    case GgufType::u8: v.v = uint64_t(c.read<uint8_t>("a u8 value")); break;
    case GgufType::i8: v.v = int64_t(c.read<int8_t>("an i8 value")); break;
    case GgufType::u16: v.v = uint64_t(c.read<uint16_t>("a u16 value")); break;
    case GgufType::i16: v.v = int64_t(c.read<int16_t>("an i16 value")); break;
    case GgufType::u32: v.v = uint64_t(c.read<uint32_t>("a u32 value")); break;
    case GgufType::i32: v.v = int64_t(c.read<int32_t>("an i32 value")); break;
    case GgufType::u64: v.v = c.read<uint64_t>("a u64 value"); break;
    case GgufType::i64: v.v = c.read<int64_t>("an i64 value"); break;
    case GgufType::f32: v.v = double(c.read<float>("an f32 value")); break;
    case GgufType::f64: v.v = c.read<double>("an f64 value"); break;
    case GgufType::boolean: {
        const uint8_t b = c.read<uint8_t>("a bool value");
        if (b > 1) c.fail("bool value " + std::to_string(b) + " is neither 0 nor 1");
        v.v = b == 1;
        break;
    }
    case GgufType::string: v.v = c.string("a string value"); break;
    case GgufType::array: {
        if (depth >= kMaxArrayDepth) c.fail("arrays nested deeper than 8 levels");
        auto arr = std::make_shared<GgufArray>();
        arr->elem = read_type(c, "an array's element type");
        const uint64_t n = c.read<uint64_t>("an array's length");
        if (n > kMaxArrayItems) c.fail("array length " + std::to_string(n) + " is absurd");
        // Each element takes at least one byte: a length beyond the bytes left is a lie.
        c.need(n, "an array's elements");
        arr->items.reserve(size_t(n));
        for (uint64_t i = 0; i < n; ++i) arr->items.push_back(read_value(c, arr->elem, depth + 1));
        v.v = std::move(arr);
        break;
    }
    }
    return v;
}

void put_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
}
template <typename T> void put(std::vector<uint8_t>& out, T v) { put_bytes(out, &v, sizeof v); }
void put_string(std::vector<uint8_t>& out, const std::string& s) {
    put<uint64_t>(out, s.size());
    put_bytes(out, s.data(), s.size());
}

void write_value(std::vector<uint8_t>& out, const GgufValue& v) {
    switch (v.type) {
    case GgufType::u8: put<uint8_t>(out, uint8_t(v.as_uint())); break;
    case GgufType::i8: put<int8_t>(out, int8_t(v.as_int())); break;
    case GgufType::u16: put<uint16_t>(out, uint16_t(v.as_uint())); break;
    case GgufType::i16: put<int16_t>(out, int16_t(v.as_int())); break;
    case GgufType::u32: put<uint32_t>(out, uint32_t(v.as_uint())); break;
    case GgufType::i32: put<int32_t>(out, int32_t(v.as_int())); break;
    case GgufType::u64: put<uint64_t>(out, v.as_uint()); break;
    case GgufType::i64: put<int64_t>(out, v.as_int()); break;
    case GgufType::f32: put<float>(out, float(v.as_float())); break;
    case GgufType::f64: put<double>(out, v.as_float()); break;
    case GgufType::boolean: put<uint8_t>(out, v.as_bool() ? 1 : 0); break;
    case GgufType::string: put_string(out, v.as_string()); break;
    case GgufType::array: {
        const GgufArray& a = v.as_array();
        put<uint32_t>(out, uint32_t(a.elem));
        put<uint64_t>(out, a.items.size());
        for (const GgufValue& item : a.items) {
            FORGE_CHECK(item.type == a.elem, "[gguf] array of ", type_name(a.elem),
                        " holds a ", type_name(item.type), " element");
            write_value(out, item);
        }
        break;
    }
    }
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

} // namespace

// ------------------------------------------------------------------------------ GgufValue

[[noreturn]] static void wrong_kind(GgufType have, const char* want) {
    throw InvalidArgument(std::string("[gguf] expected a ") + want + " value, found " +
                          type_name(have));
}

int64_t GgufValue::as_int() const {
    if (is_signed(type)) return std::get<int64_t>(v);
    if (is_unsigned(type)) {
        const uint64_t u = std::get<uint64_t>(v);
        if (u > uint64_t(std::numeric_limits<int64_t>::max()))
            throw InvalidArgument("[gguf] value " + std::to_string(u) + " does not fit an int64");
        return int64_t(u);
    }
    wrong_kind(type, "integer");
}
uint64_t GgufValue::as_uint() const {
    if (is_unsigned(type)) return std::get<uint64_t>(v);
    if (is_signed(type)) {
        const int64_t i = std::get<int64_t>(v);
        if (i < 0) throw InvalidArgument("[gguf] negative value " + std::to_string(i) + " where an unsigned one is needed");
        return uint64_t(i);
    }
    wrong_kind(type, "integer");
}
double GgufValue::as_float() const {
    if (type == GgufType::f32 || type == GgufType::f64) return std::get<double>(v);
    if (is_signed(type)) return double(std::get<int64_t>(v));
    if (is_unsigned(type)) return double(std::get<uint64_t>(v));
    wrong_kind(type, "number");
}
bool GgufValue::as_bool() const {
    if (type != GgufType::boolean) wrong_kind(type, "bool");
    return std::get<bool>(v);
}
const std::string& GgufValue::as_string() const {
    if (type != GgufType::string) wrong_kind(type, "string");
    return std::get<std::string>(v);
}
const GgufArray& GgufValue::as_array() const {
    if (type != GgufType::array) wrong_kind(type, "array");
    return *std::get<std::shared_ptr<GgufArray>>(v);
}

GgufValue GgufValue::u32(uint32_t x) { return {GgufType::u32, uint64_t(x)}; }
GgufValue GgufValue::i32(int32_t x) { return {GgufType::i32, int64_t(x)}; }
GgufValue GgufValue::u64(uint64_t x) { return {GgufType::u64, x}; }
GgufValue GgufValue::f32(float x) { return {GgufType::f32, double(x)}; }
GgufValue GgufValue::boolean(bool x) { return {GgufType::boolean, x}; }
GgufValue GgufValue::str(std::string s) { return {GgufType::string, std::move(s)}; }
GgufValue GgufValue::array(GgufType elem, std::vector<GgufValue> items) {
    auto a = std::make_shared<GgufArray>();
    a->elem = elem;
    a->items = std::move(items);
    return {GgufType::array, std::move(a)};
}

int64_t GgufTensorInfo::numel() const {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    return n;
}

// ------------------------------------------------------------------------------ GgufFile

struct GgufFile::Impl {
    std::string origin;
    // The bytes: a read-only mapping of the file, or a private copy (parse()).
    void* map = nullptr;
    size_t map_size = 0;
    std::vector<uint8_t> copy;
    const uint8_t* data = nullptr;
    uint64_t size = 0;

    uint32_t version = 0;
    uint64_t alignment = 32;
    std::vector<std::pair<std::string, GgufValue>> metadata;
    std::vector<GgufTensorInfo> tensors;

    ~Impl() {
        if (map) ::munmap(map, map_size);
    }
    void parse();
};

void GgufFile::Impl::parse() {
    Cursor c(data, size, origin);
    if (c.read<uint32_t>("the magic number") != kMagic) {
        throw InvalidArgument(origin + ": not a GGUF file (the first 4 bytes are not \"GGUF\")");
    }
    version = c.read<uint32_t>("the version");
    if (version != 2 && version != 3)
        c.fail("GGUF version " + std::to_string(version) + " is not supported (2 and 3 are)");
    const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
    const uint64_t n_kv = c.read<uint64_t>("the metadata count");
    if (n_tensors > kMaxTensors) c.fail("tensor count " + std::to_string(n_tensors) + " is absurd");
    if (n_kv > kMaxKeys) c.fail("metadata count " + std::to_string(n_kv) + " is absurd");

    std::set<std::string, std::less<>> keys;
    for (uint64_t i = 0; i < n_kv; ++i) {
        std::string key = c.string("a metadata key");
        if (!keys.insert(key).second) c.fail("metadata key '" + key + "' appears twice");
        const GgufType t = read_type(c, "a metadata value type");
        metadata.emplace_back(std::move(key), read_value(c, t, 0));
    }
    if (const auto it = keys.find("general.alignment"); it != keys.end()) {
        for (auto& [k, v] : metadata)
            if (k == "general.alignment") {
                if (v.type != GgufType::u32) c.fail("general.alignment must be a u32");
                alignment = v.as_uint();
            }
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            c.fail("general.alignment " + std::to_string(alignment) + " is not a power of two");
    }

    std::set<std::string, std::less<>> names;
    tensors.reserve(size_t(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        GgufTensorInfo t;
        t.name = c.string("a tensor name");
        if (!names.insert(t.name).second) c.fail("tensor '" + t.name + "' appears twice");
        const uint32_t n_dims = c.read<uint32_t>("a tensor's dimension count");
        if (n_dims == 0 || n_dims > kMaxDims)
            c.fail("tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
        uint64_t numel = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t ne = c.read<uint64_t>("a tensor dimension");
            if (ne == 0 || ne > (uint64_t(1) << 40) || numel > (uint64_t(1) << 50) / ne)
                c.fail("tensor '" + t.name + "' has an impossible shape (dimension " + std::to_string(ne) + ")");
            numel *= ne;
            t.ne.push_back(int64_t(ne));
        }
        const uint32_t raw_type = c.read<uint32_t>("a tensor type");
        if (!quant::is_known_type(raw_type))
            c.fail("tensor '" + t.name + "' has ggml type " + std::to_string(raw_type) +
                   ", which Forge does not read");
        t.type = quant::GgmlType(raw_type);
        const quant::GgmlTypeInfo& info = quant::type_info(t.type);
        if (t.ne[0] % info.block_size != 0)
            c.fail("tensor '" + t.name + "': row length " + std::to_string(t.ne[0]) +
                   " is not a multiple of " + std::string(info.name) + "'s block of " +
                   std::to_string(info.block_size));
        t.nbytes = numel / uint64_t(info.block_size) * uint64_t(info.block_bytes);
        t.offset = c.read<uint64_t>("a tensor offset");
        if (t.offset % alignment != 0)
            c.fail("tensor '" + t.name + "' offset " + std::to_string(t.offset) +
                   " is not a multiple of the alignment " + std::to_string(alignment));
        tensors.push_back(std::move(t));
    }

    const uint64_t data_start = align_up(c.pos(), alignment);
    if (data_start > size && n_tensors > 0)
        c.fail("the data section would start at byte " + std::to_string(data_start) +
               ", past the end of the " + std::to_string(size) + "-byte file");
    const uint64_t data_len = data_start <= size ? size - data_start : 0;
    for (GgufTensorInfo& t : tensors) {
        if (t.offset > data_len || t.nbytes > data_len - t.offset)
            throw InvalidArgument(origin + ": tensor '" + t.name + "' (" + std::to_string(t.nbytes) +
                                  " bytes at data offset " + std::to_string(t.offset) +
                                  ") runs past the end of the file (data section is " +
                                  std::to_string(data_len) + " bytes): truncated?");
        t.data = data + data_start + t.offset;
    }
}

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

GgufFile GgufFile::open(const std::filesystem::path& path) {
    auto impl = std::make_unique<Impl>();
    impl->origin = path.string();
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw NotFound("cannot open GGUF file '" + path.string() + "': " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw InvalidArgument("'" + path.string() + "' is not a regular file");
    }
    impl->size = uint64_t(st.st_size);
    if (impl->size > 0) {
        void* m = ::mmap(nullptr, size_t(impl->size), PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            const int err = errno;
            ::close(fd);
            throw InvalidArgument("cannot map '" + path.string() + "': " + std::strerror(err));
        }
        impl->map = m;
        impl->map_size = size_t(impl->size);
        impl->data = static_cast<const uint8_t*>(m);
    }
    ::close(fd); // the mapping stays valid
    impl->parse();
    return GgufFile(std::move(impl));
}

GgufFile GgufFile::parse(std::span<const uint8_t> bytes, std::string origin) {
    auto impl = std::make_unique<Impl>();
    impl->origin = std::move(origin);
    impl->copy.assign(bytes.begin(), bytes.end());
    impl->data = impl->copy.data();
    impl->size = impl->copy.size();
    impl->parse();
    return GgufFile(std::move(impl));
}

uint32_t GgufFile::version() const { return impl_->version; }
uint64_t GgufFile::alignment() const { return impl_->alignment; }
const std::vector<std::pair<std::string, GgufValue>>& GgufFile::metadata() const {
    return impl_->metadata;
}
const GgufValue* GgufFile::find(std::string_view key) const {
    for (const auto& [k, v] : impl_->metadata)
        if (k == key) return &v;
    return nullptr;
}
const GgufValue& GgufFile::at(std::string_view key) const {
    if (const GgufValue* v = find(key)) return *v;
    throw InvalidArgument(impl_->origin + ": required metadata key '" + std::string(key) + "' is missing");
}
const std::vector<GgufTensorInfo>& GgufFile::tensors() const { return impl_->tensors; }
const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
    for (const GgufTensorInfo& t : impl_->tensors)
        if (t.name == name) return &t;
    return nullptr;
}
const std::string& GgufFile::origin() const { return impl_->origin; }

// ------------------------------------------------------------------------------ GgufWriter

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
    FORGE_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0 && alignment <= UINT32_MAX,
                "[gguf] alignment ", alignment, " must be a power of two");
    if (alignment != 32) set("general.alignment", GgufValue::u32(uint32_t(alignment)));
}

void GgufWriter::set(std::string key, GgufValue value) {
    for (auto& [k, v] : metadata_)
        if (k == key) {
            v = std::move(value);
            return;
        }
    metadata_.emplace_back(std::move(key), std::move(value));
}

void GgufWriter::add_tensor(std::string name, std::vector<int64_t> ne, quant::GgmlType type,
                            std::span<const uint8_t> data) {
    FORGE_CHECK(!ne.empty() && ne.size() <= kMaxDims, "[gguf] tensor '", name, "' has ", ne.size(),
                " dimensions (1 to 4 allowed)");
    for (const PendingTensor& t : tensors_)
        FORGE_CHECK(t.name != name, "[gguf] tensor '", name, "' added twice");
    int64_t rows = 1;
    for (size_t d = 0; d < ne.size(); ++d) {
        FORGE_CHECK(ne[d] > 0, "[gguf] tensor '", name, "' has dimension ", ne[d]);
        if (d > 0) rows *= ne[d];
    }
    const int64_t want = quant::row_bytes(type, ne[0]) * rows;
    FORGE_CHECK(int64_t(data.size()) == want, "[gguf] tensor '", name, "' of type ",
                quant::type_info(type).name, " needs ", want, " bytes, got ", data.size());
    tensors_.push_back({std::move(name), std::move(ne), type, {data.begin(), data.end()}});
}

// Header, metadata, tensor infos and the padding up to the data section.
std::vector<uint8_t> GgufWriter::header() const {
    std::vector<uint8_t> out;
    put<uint32_t>(out, kMagic);
    put<uint32_t>(out, 3);
    put<uint64_t>(out, tensors_.size());
    put<uint64_t>(out, metadata_.size());
    for (const auto& [k, v] : metadata_) {
        put_string(out, k);
        put<uint32_t>(out, uint32_t(v.type));
        write_value(out, v);
    }
    uint64_t offset = 0;
    for (const PendingTensor& t : tensors_) {
        put_string(out, t.name);
        put<uint32_t>(out, uint32_t(t.ne.size()));
        for (int64_t d : t.ne) put<uint64_t>(out, uint64_t(d));
        put<uint32_t>(out, uint32_t(t.type));
        put<uint64_t>(out, offset);
        offset = align_up(offset + t.data.size(), alignment_);
    }
    out.resize(align_up(out.size(), alignment_), 0);
    return out;
}

std::vector<uint8_t> GgufWriter::bytes() const {
    std::vector<uint8_t> out = header();
    for (const PendingTensor& t : tensors_) {
        put_bytes(out, t.data.data(), t.data.size());
        out.resize(align_up(out.size(), alignment_), 0);
    }
    return out;
}

void GgufWriter::write(const std::filesystem::path& path) const {
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw InvalidArgument("cannot write '" + tmp.string() + "'");
        const std::vector<uint8_t> head = header();
        out.write(reinterpret_cast<const char*>(head.data()), std::streamsize(head.size()));
        const std::vector<char> zeros(size_t(alignment_), 0);
        for (const PendingTensor& t : tensors_) {
            out.write(reinterpret_cast<const char*>(t.data.data()), std::streamsize(t.data.size()));
            const uint64_t pad = align_up(t.data.size(), alignment_) - t.data.size();
            out.write(zeros.data(), std::streamsize(pad));
        }
        out.flush();
        if (!out) throw InvalidArgument("failed writing '" + tmp.string() + "' (disk full?)");
    }
    std::filesystem::rename(tmp, path);
}

} // namespace forge::formats
