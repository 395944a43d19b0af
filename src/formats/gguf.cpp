// GGUF reader (GgufFile) and writer (GgufWriter), after the spec in ggml's docs/gguf.md. The
// bytes are untrusted: every count, length, type, offset and size is checked against the bytes
// that remain before it is used, so a truncated or lying file is an InvalidArgument naming the
// file and the byte offset, never an out-of-bounds read or a huge allocation. Not the mapping of
// keys and tensors onto a Transformer: that is gguf_model.cpp.
#include <forge/formats/gguf.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <limits>
#include <unordered_map>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <forge/core/error.h>

namespace forge::formats {

namespace {

static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

constexpr uint32_t kMagic = 0x46554747; // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;        // GGML_MAX_DIMS
constexpr int kMaxNesting = 8;          // arrays of arrays deeper than this are rejected

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

bool valid_type(uint32_t raw) { return raw <= uint32_t(GgufType::f64); }

// Bytes a scalar of this type takes; 0 for string and array (variable).
uint64_t scalar_size(GgufType t) {
    switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
    case GgufType::u16: case GgufType::i16: return 2;
    case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
    case GgufType::u64: case GgufType::i64: case GgufType::f64: return 8;
    default: return 0;
    }
}

// The fewest bytes one element of this type can take (caps counts before allocating).
uint64_t min_size(GgufType t) {
    if (t == GgufType::string) return 8;     // its length
    if (t == GgufType::array) return 4 + 8;  // element type + count
    return scalar_size(t);
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Bounds-checked little-endian reads over the file's bytes.
class Cursor {
  public:
    Cursor(const uint8_t* p, uint64_t n, const std::string& origin) : p_(p), n_(n), origin_(origin) {}

    [[noreturn]] void fail(uint64_t at, const std::string& what) const {
        throw InvalidArgument(origin_ + ": at byte " + std::to_string(at) + ": " + what,
                              "the file is truncated or not a GGUF file Forge can read");
    }
    uint64_t pos() const { return pos_; }
    uint64_t left() const { return n_ - pos_; }
    void need(uint64_t k, const char* what) const {
        if (k > left())
            fail(pos_, std::string("file ends inside ") + what + " (" + std::to_string(k) +
                           " bytes needed, " + std::to_string(left()) + " left)");
    }
    template <typename T> T get(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, p_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string str(const char* what) {
        const uint64_t at = pos_;
        uint64_t len = get<uint64_t>(what);
        if (len > left())
            fail(at, std::string(what) + ": string length " + std::to_string(len) +
                         " runs past the end of the file (" + std::to_string(left()) + " bytes left)");
        std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
        pos_ += len;
        return s;
    }

  private:
    const uint8_t* p_;
    uint64_t n_;
    uint64_t pos_ = 0;
    const std::string& origin_;
};

GgufValue read_value(Cursor& c, GgufType t, int depth, const std::string& key);

GgufValue read_scalar(Cursor& c, GgufType t, const std::string& key) {
    GgufValue v;
    v.type = t;
    const uint64_t at = c.pos();
    switch (t) {
    case GgufType::u8: v.v = uint64_t(c.get<uint8_t>("a u8 value")); break;
    case GgufType::i8: v.v = int64_t(c.get<int8_t>("an i8 value")); break;
    case GgufType::u16: v.v = uint64_t(c.get<uint16_t>("a u16 value")); break;
    case GgufType::i16: v.v = int64_t(c.get<int16_t>("an i16 value")); break;
    case GgufType::u32: v.v = uint64_t(c.get<uint32_t>("a u32 value")); break;
    case GgufType::i32: v.v = int64_t(c.get<int32_t>("an i32 value")); break;
    case GgufType::u64: v.v = c.get<uint64_t>("a u64 value"); break;
    case GgufType::i64: v.v = c.get<int64_t>("an i64 value"); break;
    case GgufType::f32: v.v = double(c.get<float>("an f32 value")); break;
    case GgufType::f64: v.v = c.get<double>("an f64 value"); break;
    case GgufType::boolean: {
        uint8_t b = c.get<uint8_t>("a bool value");
        if (b > 1)
            c.fail(at, "key '" + key + "': bool value is " + std::to_string(b) + ", not 0 or 1");
        v.v = b == 1;
        break;
    }
    case GgufType::string: v.v = c.str("a string value"); break;
    case GgufType::array: break; // read_value handles arrays
    }
    return v;
}

GgufValue read_value(Cursor& c, GgufType t, int depth, const std::string& key) {
    if (t != GgufType::array) return read_scalar(c, t, key);
    const uint64_t at = c.pos();
    if (depth >= kMaxNesting)
        c.fail(at, "key '" + key + "': arrays nested deeper than " + std::to_string(kMaxNesting));
    uint32_t raw = c.get<uint32_t>("an array's element type");
    if (!valid_type(raw))
        c.fail(at, "key '" + key + "': unknown array element type " + std::to_string(raw));
    const GgufType elem = GgufType(raw);
    uint64_t n = c.get<uint64_t>("an array's length");
    if (n > c.left() / min_size(elem))
        c.fail(at, "key '" + key + "': array of " + std::to_string(n) + " " + type_name(elem) +
                       " values cannot fit in the " + std::to_string(c.left()) +
                       " bytes left in the file");
    auto arr = std::make_shared<GgufArray>();
    arr->elem = elem;
    arr->items.reserve(size_t(n));
    for (uint64_t i = 0; i < n; ++i)
        arr->items.push_back(read_value(c, elem, depth + 1, key));
    GgufValue v;
    v.type = GgufType::array;
    v.v = std::move(arr);
    return v;
}

[[noreturn]] void wrong_kind(const GgufValue& v, const char* want) {
    throw InvalidArgument(std::string("[gguf] expected ") + want + " value, got " + type_name(v.type));
}

// Checks that a value (to be written) is what its type tag says, recursively.
void check_value(const GgufValue& v, const std::string& key) {
    auto bad = [&](const std::string& why) {
        throw InvalidArgument("[gguf writer] key '" + key + "': " + why);
    };
    auto uint_in = [&](uint64_t max) {
        if (!std::holds_alternative<uint64_t>(v.v)) bad(std::string(type_name(v.type)) + " value does not hold an unsigned integer");
        if (std::get<uint64_t>(v.v) > max) bad("value " + std::to_string(std::get<uint64_t>(v.v)) + " does not fit " + type_name(v.type));
    };
    auto int_in = [&](int64_t lo, int64_t hi) {
        if (!std::holds_alternative<int64_t>(v.v)) bad(std::string(type_name(v.type)) + " value does not hold a signed integer");
        int64_t x = std::get<int64_t>(v.v);
        if (x < lo || x > hi) bad("value " + std::to_string(x) + " does not fit " + type_name(v.type));
    };
    switch (v.type) {
    case GgufType::u8: uint_in(UINT8_MAX); break;
    case GgufType::u16: uint_in(UINT16_MAX); break;
    case GgufType::u32: uint_in(UINT32_MAX); break;
    case GgufType::u64: uint_in(UINT64_MAX); break;
    case GgufType::i8: int_in(INT8_MIN, INT8_MAX); break;
    case GgufType::i16: int_in(INT16_MIN, INT16_MAX); break;
    case GgufType::i32: int_in(INT32_MIN, INT32_MAX); break;
    case GgufType::i64: int_in(INT64_MIN, INT64_MAX); break;
    case GgufType::f32:
    case GgufType::f64:
        if (!std::holds_alternative<double>(v.v)) bad("float value does not hold a double");
        break;
    case GgufType::boolean:
        if (!std::holds_alternative<bool>(v.v)) bad("bool value does not hold a bool");
        break;
    case GgufType::string:
        if (!std::holds_alternative<std::string>(v.v)) bad("string value does not hold a string");
        break;
    case GgufType::array: {
        if (!std::holds_alternative<std::shared_ptr<GgufArray>>(v.v) || !std::get<std::shared_ptr<GgufArray>>(v.v))
            bad("array value does not hold an array");
        const GgufArray& a = *std::get<std::shared_ptr<GgufArray>>(v.v);
        if (!valid_type(uint32_t(a.elem))) bad("array element type " + std::to_string(uint32_t(a.elem)) + " is unknown");
        for (const auto& item : a.items) {
            if (item.type != a.elem)
                bad(std::string("array of ") + type_name(a.elem) + " holds a " + type_name(item.type));
            check_value(item, key);
        }
        break;
    }
    default: bad("unknown value type " + std::to_string(uint32_t(v.type)));
    }
}

// Serializes to a byte sink (a file stream or a vector).
template <typename Put> void put_value(const GgufValue& v, Put& put) {
    auto raw = [&](const auto& x) { put(&x, sizeof(x)); };
    switch (v.type) {
    case GgufType::u8: raw(uint8_t(std::get<uint64_t>(v.v))); break;
    case GgufType::u16: raw(uint16_t(std::get<uint64_t>(v.v))); break;
    case GgufType::u32: raw(uint32_t(std::get<uint64_t>(v.v))); break;
    case GgufType::u64: raw(std::get<uint64_t>(v.v)); break;
    case GgufType::i8: raw(int8_t(std::get<int64_t>(v.v))); break;
    case GgufType::i16: raw(int16_t(std::get<int64_t>(v.v))); break;
    case GgufType::i32: raw(int32_t(std::get<int64_t>(v.v))); break;
    case GgufType::i64: raw(std::get<int64_t>(v.v)); break;
    case GgufType::f32: raw(float(std::get<double>(v.v))); break;
    case GgufType::f64: raw(std::get<double>(v.v)); break;
    case GgufType::boolean: raw(uint8_t(std::get<bool>(v.v) ? 1 : 0)); break;
    case GgufType::string: {
        const std::string& s = std::get<std::string>(v.v);
        raw(uint64_t(s.size()));
        put(s.data(), s.size());
        break;
    }
    case GgufType::array: {
        const GgufArray& a = *std::get<std::shared_ptr<GgufArray>>(v.v);
        raw(uint32_t(a.elem));
        raw(uint64_t(a.items.size()));
        for (const auto& item : a.items) put_value(item, put);
        break;
    }
    }
}

} // namespace

// ------------------------------------------------------------------------------ GgufValue

int64_t GgufValue::as_int() const {
    if (auto* i = std::get_if<int64_t>(&v)) return *i;
    if (auto* u = std::get_if<uint64_t>(&v)) {
        if (*u > uint64_t(std::numeric_limits<int64_t>::max()))
            throw InvalidArgument("[gguf] value " + std::to_string(*u) + " does not fit an int64");
        return int64_t(*u);
    }
    wrong_kind(*this, "an integer");
}

uint64_t GgufValue::as_uint() const {
    if (auto* u = std::get_if<uint64_t>(&v)) return *u;
    if (auto* i = std::get_if<int64_t>(&v)) {
        if (*i < 0) throw InvalidArgument("[gguf] value " + std::to_string(*i) + " is negative");
        return uint64_t(*i);
    }
    wrong_kind(*this, "an unsigned integer");
}

double GgufValue::as_float() const {
    if (auto* d = std::get_if<double>(&v)) return *d;
    wrong_kind(*this, "a float");
}

bool GgufValue::as_bool() const {
    if (auto* b = std::get_if<bool>(&v)) return *b;
    wrong_kind(*this, "a bool");
}

const std::string& GgufValue::as_string() const {
    if (auto* s = std::get_if<std::string>(&v)) return *s;
    wrong_kind(*this, "a string");
}

const GgufArray& GgufValue::as_array() const {
    if (auto* a = std::get_if<std::shared_ptr<GgufArray>>(&v); a && *a) return **a;
    wrong_kind(*this, "an array");
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
    std::vector<uint8_t> owned; // parse(): a copy of the bytes
    void* map = nullptr;        // open(): the mapping
    size_t map_len = 0;
    const uint8_t* base = nullptr;
    uint64_t size = 0;

    uint32_t version = 0;
    uint64_t alignment = kDefaultAlignment;
    std::vector<std::pair<std::string, GgufValue>> metadata;
    std::unordered_map<std::string, size_t> key_index;
    std::vector<GgufTensorInfo> tensors;
    std::unordered_map<std::string, size_t> tensor_index;

    ~Impl() {
        if (map) munmap(map, map_len);
    }
    void parse();
};

void GgufFile::Impl::parse() {
    Cursor c(base, size, origin);
    if (size < 4 || c.get<uint32_t>("the magic") != kMagic)
        c.fail(0, "not a GGUF file (the first 4 bytes are not \"GGUF\")");
    version = c.get<uint32_t>("the version");
    if (version != 2 && version != 3)
        c.fail(4, "GGUF version " + std::to_string(version) +
                      (version == 1 ? " (v1, 32-bit counts) is not supported; re-convert the model"
                                    : " is not supported (Forge reads v2 and v3, little-endian)"));
    const uint64_t n_tensors = c.get<uint64_t>("the tensor count");
    const uint64_t n_kv = c.get<uint64_t>("the metadata count");
    // Each key/value takes at least 13 bytes, each tensor info at least 24: cap before reserving.
    if (n_kv > c.left() / 13)
        c.fail(16, "metadata count " + std::to_string(n_kv) + " cannot fit in the " +
                       std::to_string(size) + "-byte file");
    if (n_tensors > c.left() / 24)
        c.fail(8, "tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
                      std::to_string(size) + "-byte file");

    metadata.reserve(size_t(n_kv));
    for (uint64_t i = 0; i < n_kv; ++i) {
        const uint64_t at = c.pos();
        std::string key = c.str("a metadata key");
        const uint64_t type_at = c.pos();
        uint32_t raw = c.get<uint32_t>("a metadata value type");
        if (!valid_type(raw))
            c.fail(type_at, "key '" + key + "' has unknown value type " + std::to_string(raw));
        GgufValue v = read_value(c, GgufType(raw), 0, key);
        if (!key_index.emplace(key, metadata.size()).second)
            c.fail(at, "duplicate metadata key '" + key + "'");
        if (key == "general.alignment") {
            if (v.type != GgufType::u32)
                c.fail(type_at, std::string("general.alignment must be a u32, not ") + type_name(v.type));
            uint64_t a = std::get<uint64_t>(v.v);
            if (a == 0 || (a & (a - 1)) != 0)
                c.fail(type_at, "general.alignment " + std::to_string(a) + " is not a power of two");
            alignment = a;
        }
        metadata.emplace_back(std::move(key), std::move(v));
    }

    tensors.reserve(size_t(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        const uint64_t at = c.pos();
        GgufTensorInfo t;
        t.name = c.str("a tensor name");
        const uint32_t n_dims = c.get<uint32_t>("a tensor's dimension count");
        if (n_dims > kMaxDims)
            c.fail(at, "tensor '" + t.name + "' has " + std::to_string(n_dims) +
                           " dimensions (at most 4)");
        uint64_t numel = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            int64_t n = c.get<int64_t>("a tensor's shape");
            if (n < 0) c.fail(at, "tensor '" + t.name + "' has a negative dimension " + std::to_string(n));
            if (n != 0 && numel > uint64_t(std::numeric_limits<int64_t>::max()) / uint64_t(n))
                c.fail(at, "tensor '" + t.name + "': element count overflows");
            numel *= uint64_t(n);
            t.ne.push_back(n);
        }
        const uint64_t type_at = c.pos();
        const uint32_t raw = c.get<uint32_t>("a tensor's type");
        if (!quant::is_known_type(raw))
            c.fail(type_at, "tensor '" + t.name + "' has ggml type " + std::to_string(raw) +
                                ", which Forge does not read (F32, F16, BF16, Q8_0, Q4_0, Q4_1, "
                                "Q4_K, Q5_K, Q6_K)");
        t.type = quant::GgmlType(raw);
        t.offset = c.get<uint64_t>("a tensor's offset");
        const auto& info = quant::type_info(t.type);
        const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
        if (ne0 % info.block_size != 0)
            c.fail(at, "tensor '" + t.name + "' of type " + std::string(info.name) + " has rows of " +
                           std::to_string(ne0) + " values, not a multiple of its block size " +
                           std::to_string(info.block_size));
        // numel <= 2^63 and bytes per value <= 4, but guard the product anyway.
        const uint64_t blocks = numel / uint64_t(info.block_size);
        if (blocks > std::numeric_limits<uint64_t>::max() / uint64_t(info.block_bytes))
            c.fail(at, "tensor '" + t.name + "': byte size overflows");
        t.nbytes = blocks * uint64_t(info.block_bytes);
        if (!tensor_index.emplace(t.name, tensors.size()).second)
            c.fail(at, "duplicate tensor name '" + t.name + "'");
        tensors.push_back(std::move(t));
    }

    const uint64_t data_start = align_up(c.pos(), alignment);
    if (data_start > size && !tensors.empty())
        c.fail(c.pos(), "the data section (aligned to " + std::to_string(alignment) +
                            ") starts past the end of the file");
    const uint64_t data_len = data_start <= size ? size - data_start : 0;
    for (auto& t : tensors) {
        if (t.offset % alignment != 0)
            c.fail(data_start, "tensor '" + t.name + "' has offset " + std::to_string(t.offset) +
                                   ", not a multiple of the alignment " + std::to_string(alignment));
        if (t.offset > data_len || t.nbytes > data_len - t.offset)
            c.fail(data_start, "tensor '" + t.name + "' needs bytes [" + std::to_string(t.offset) +
                                   ", " + std::to_string(t.offset) + " + " + std::to_string(t.nbytes) +
                                   ") of the " + std::to_string(data_len) +
                                   "-byte data section (the file is truncated or lies)");
        t.data = base + data_start + t.offset;
    }
}

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

GgufFile GgufFile::open(const std::filesystem::path& path) {
    auto impl = std::make_unique<Impl>();
    impl->origin = path.string();
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw NotFound("cannot open GGUF file '" + path.string() + "'");
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw InvalidArgument("'" + path.string() + "' is not a regular file");
    }
    impl->size = uint64_t(st.st_size);
    if (impl->size > 0) {
        void* m = mmap(nullptr, size_t(impl->size), PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            ::close(fd);
            throw InvalidArgument("cannot memory-map '" + path.string() + "'");
        }
        impl->map = m;
        impl->map_len = size_t(impl->size);
        impl->base = static_cast<const uint8_t*>(m);
    }
    ::close(fd);
    static const uint8_t kEmpty = 0;
    if (!impl->base) impl->base = &kEmpty;
    impl->parse();
    return GgufFile(std::move(impl));
}

GgufFile GgufFile::parse(std::span<const uint8_t> bytes, std::string origin) {
    auto impl = std::make_unique<Impl>();
    impl->origin = std::move(origin);
    // One spare byte keeps base valid (and non-null) for an empty input.
    impl->owned.reserve(bytes.size() + 1);
    impl->owned.assign(bytes.begin(), bytes.end());
    impl->base = impl->owned.data();
    impl->size = bytes.size();
    impl->parse();
    return GgufFile(std::move(impl));
}

uint32_t GgufFile::version() const { return impl_->version; }
uint64_t GgufFile::alignment() const { return impl_->alignment; }
const std::vector<std::pair<std::string, GgufValue>>& GgufFile::metadata() const {
    return impl_->metadata;
}
const GgufValue* GgufFile::find(std::string_view key) const {
    auto it = impl_->key_index.find(std::string(key));
    return it == impl_->key_index.end() ? nullptr : &impl_->metadata[it->second].second;
}
const GgufValue& GgufFile::at(std::string_view key) const {
    if (const GgufValue* v = find(key)) return *v;
    throw InvalidArgument(impl_->origin + ": required metadata key '" + std::string(key) +
                          "' is missing");
}
const std::vector<GgufTensorInfo>& GgufFile::tensors() const { return impl_->tensors; }
const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
    auto it = impl_->tensor_index.find(std::string(name));
    return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}
const std::string& GgufFile::origin() const { return impl_->origin; }

// ------------------------------------------------------------------------------ GgufWriter

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
    FORGE_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0 && alignment <= UINT32_MAX,
                "[gguf writer] alignment ", alignment, " is not a power of two");
    if (alignment != kDefaultAlignment) set("general.alignment", GgufValue::u32(uint32_t(alignment)));
}

void GgufWriter::set(std::string key, GgufValue value) {
    check_value(value, key);
    if (key == "general.alignment")
        FORGE_CHECK(value.type == GgufType::u32 && std::get<uint64_t>(value.v) == alignment_,
                    "[gguf writer] general.alignment must be the u32 ", alignment_,
                    " this writer was made with");
    for (auto& [k, v] : metadata_)
        if (k == key) {
            v = std::move(value);
            return;
        }
    metadata_.emplace_back(std::move(key), std::move(value));
}

void GgufWriter::add_tensor(std::string name, std::vector<int64_t> ne, quant::GgmlType type,
                            std::span<const uint8_t> data) {
    FORGE_CHECK(ne.size() <= kMaxDims, "[gguf writer] tensor '", name, "' has ", ne.size(),
                " dimensions (at most 4)");
    for (const auto& t : tensors_)
        FORGE_CHECK(t.name != name, "[gguf writer] duplicate tensor name '", name, "'");
    int64_t rows = 1;
    for (size_t i = 0; i < ne.size(); ++i) {
        FORGE_CHECK(ne[i] >= 0, "[gguf writer] tensor '", name, "' has a negative dimension");
        if (i > 0) rows *= ne[i];
    }
    const int64_t nbytes = quant::row_bytes(type, ne.empty() ? 1 : ne[0]) * rows;
    FORGE_CHECK(uint64_t(nbytes) == data.size(), "[gguf writer] tensor '", name, "' of type ",
                quant::type_info(type).name, " needs ", nbytes, " bytes, got ", data.size());
    tensors_.push_back({std::move(name), std::move(ne), type, {data.begin(), data.end()}});
}

namespace {

template <typename Put>
void serialize(uint64_t alignment, const std::vector<std::pair<std::string, GgufValue>>& metadata,
               const auto& tensors, Put& put) {
    uint64_t written = 0;
    auto counted = [&](const void* p, size_t n) {
        put(p, n);
        written += n;
    };
    auto raw = [&](const auto& x) { counted(&x, sizeof(x)); };
    auto str = [&](const std::string& s) {
        raw(uint64_t(s.size()));
        counted(s.data(), s.size());
    };
    static const uint8_t kZeros[256] = {};
    auto pad = [&] {
        uint64_t n = align_up(written, alignment) - written;
        while (n > 0) {
            uint64_t k = std::min<uint64_t>(n, sizeof(kZeros));
            counted(kZeros, size_t(k));
            n -= k;
        }
    };
    raw(kMagic);
    raw(uint32_t(3));
    raw(uint64_t(tensors.size()));
    raw(uint64_t(metadata.size()));
    for (const auto& [k, v] : metadata) {
        str(k);
        raw(uint32_t(v.type));
        put_value(v, counted);
    }
    uint64_t offset = 0;
    for (const auto& t : tensors) {
        str(t.name);
        raw(uint32_t(t.ne.size()));
        for (int64_t d : t.ne) raw(d);
        raw(uint32_t(t.type));
        raw(offset);
        offset = align_up(offset + t.data.size(), alignment);
    }
    pad();
    for (const auto& t : tensors) {
        counted(t.data.data(), t.data.size());
        pad();
    }
}

} // namespace

std::vector<uint8_t> GgufWriter::bytes() const {
    std::vector<uint8_t> out;
    auto put = [&](const void* p, size_t n) {
        auto* b = static_cast<const uint8_t*>(p);
        out.insert(out.end(), b, b + n);
    };
    serialize(alignment_, metadata_, tensors_, put);
    return out;
}

void GgufWriter::write(const std::filesystem::path& path) const {
    std::filesystem::path tmp = path;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw InvalidArgument("cannot write '" + tmp.string() + "'");
        auto put = [&](const void* p, size_t n) { out.write(static_cast<const char*>(p), std::streamsize(n)); };
        serialize(alignment_, metadata_, tensors_, put);
        if (!out) {
            out.close();
            std::filesystem::remove(tmp);
            throw InvalidArgument("failed writing '" + tmp.string() + "' (disk full?)");
        }
    }
    std::filesystem::rename(tmp, path);
}

} // namespace forge::formats
