// GgufFile / GgufWriter: round trips of every value type, a file laid out by hand from the spec
// (ggml docs/gguf.md) as the golden bytes, and truncated or lying files at every byte.
#include <forge/formats/gguf.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include <gtest/gtest.h>

#include <forge/core/error.h>

using namespace forge;
using namespace forge::formats;
using quant::GgmlType;

namespace {

// Little-endian byte builder for hand-made files.
struct Bytes {
    std::vector<uint8_t> b;
    template <typename T> Bytes& put(T x) {
        uint8_t tmp[sizeof(T)];
        std::memcpy(tmp, &x, sizeof(T));
        b.insert(b.end(), tmp, tmp + sizeof(T));
        return *this;
    }
    Bytes& str(const std::string& s) {
        put(uint64_t(s.size()));
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    Bytes& pad_to(size_t a) {
        while (b.size() % a) b.push_back(0);
        return *this;
    }
};

std::vector<uint8_t> f32_bytes(std::vector<float> v) {
    std::vector<uint8_t> out(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
    return out;
}

GgufValue scalar(GgufType t, std::variant<uint64_t, int64_t, double, bool, std::string,
                                          std::shared_ptr<GgufArray>> v) {
    return GgufValue{t, std::move(v)};
}

// A writer holding every value type, nested arrays and two tensors.
GgufWriter every_type_writer() {
    GgufWriter w;
    w.set("general.architecture", GgufValue::str("llama"));
    w.set("t.u8", scalar(GgufType::u8, uint64_t(255)));
    w.set("t.i8", scalar(GgufType::i8, int64_t(-128)));
    w.set("t.u16", scalar(GgufType::u16, uint64_t(65535)));
    w.set("t.i16", scalar(GgufType::i16, int64_t(-32768)));
    w.set("t.u32", GgufValue::u32(4000000000u));
    w.set("t.i32", GgufValue::i32(-2000000000));
    w.set("t.f32", GgufValue::f32(1.5f));
    w.set("t.bool", GgufValue::boolean(true));
    w.set("t.string", GgufValue::str(std::string("h\xC3\xA9llo\0x", 8)));
    w.set("t.u64", GgufValue::u64(std::numeric_limits<uint64_t>::max()));
    w.set("t.i64", scalar(GgufType::i64, std::numeric_limits<int64_t>::min()));
    w.set("t.f64", scalar(GgufType::f64, 0.1));
    w.set("t.arr_i32", GgufValue::array(GgufType::i32, {GgufValue::i32(1), GgufValue::i32(-2)}));
    w.set("t.arr_str", GgufValue::array(GgufType::string, {GgufValue::str("a"), GgufValue::str("")}));
    w.set("t.arr_empty", GgufValue::array(GgufType::f32, {}));
    w.set("t.nested",
          GgufValue::array(GgufType::array,
                           {GgufValue::array(GgufType::u8, {scalar(GgufType::u8, uint64_t(1))}),
                            GgufValue::array(GgufType::string, {GgufValue::str("x")})}));
    w.add_tensor("a", {3, 2}, GgmlType::f32, f32_bytes({1, 2, 3, 4, 5, 6}));
    w.add_tensor("b", {2}, GgmlType::f32, f32_bytes({7, 8}));
    return w;
}

} // namespace

TEST(Gguf, RoundTripEveryValueType) {
    std::vector<uint8_t> bytes = every_type_writer().bytes();
    GgufFile f = GgufFile::parse(bytes, "rt");
    EXPECT_EQ(f.version(), 3u);
    EXPECT_EQ(f.alignment(), 32u);
    ASSERT_EQ(f.metadata().size(), 17u);
    EXPECT_EQ(f.metadata()[0].first, "general.architecture"); // file order kept
    EXPECT_EQ(f.at("general.architecture").as_string(), "llama");
    EXPECT_EQ(f.at("t.u8").type, GgufType::u8);
    EXPECT_EQ(f.at("t.u8").as_uint(), 255u);
    EXPECT_EQ(f.at("t.i8").as_int(), -128);
    EXPECT_EQ(f.at("t.u16").as_int(), 65535);
    EXPECT_EQ(f.at("t.i16").as_int(), -32768);
    EXPECT_EQ(f.at("t.u32").as_uint(), 4000000000u);
    EXPECT_EQ(f.at("t.i32").as_int(), -2000000000);
    EXPECT_EQ(f.at("t.f32").as_float(), 1.5);
    EXPECT_TRUE(f.at("t.bool").as_bool());
    EXPECT_EQ(f.at("t.string").as_string(), std::string("h\xC3\xA9llo\0x", 8));
    EXPECT_EQ(f.at("t.u64").as_uint(), std::numeric_limits<uint64_t>::max());
    EXPECT_THROW(f.at("t.u64").as_int(), InvalidArgument); // out of int64 range
    EXPECT_EQ(f.at("t.i64").as_int(), std::numeric_limits<int64_t>::min());
    EXPECT_THROW(f.at("t.i64").as_uint(), InvalidArgument);
    EXPECT_EQ(f.at("t.f64").type, GgufType::f64);
    EXPECT_EQ(f.at("t.f64").as_float(), 0.1);
    const GgufArray& ai = f.at("t.arr_i32").as_array();
    EXPECT_EQ(ai.elem, GgufType::i32);
    ASSERT_EQ(ai.items.size(), 2u);
    EXPECT_EQ(ai.items[1].as_int(), -2);
    EXPECT_EQ(f.at("t.arr_str").as_array().items[0].as_string(), "a");
    EXPECT_EQ(f.at("t.arr_str").as_array().items[1].as_string(), "");
    EXPECT_TRUE(f.at("t.arr_empty").as_array().items.empty());
    const GgufArray& nested = f.at("t.nested").as_array();
    EXPECT_EQ(nested.elem, GgufType::array);
    EXPECT_EQ(nested.items[0].as_array().items[0].as_uint(), 1u);
    EXPECT_EQ(nested.items[1].as_array().items[0].as_string(), "x");
    // Wrong-kind accessors name what was expected.
    EXPECT_THROW(f.at("t.string").as_int(), InvalidArgument);
    EXPECT_THROW(f.at("t.u32").as_string(), InvalidArgument);
    EXPECT_THROW(f.at("t.f32").as_bool(), InvalidArgument);
    EXPECT_THROW(f.at("missing.key"), InvalidArgument);
    EXPECT_EQ(f.find("missing.key"), nullptr);

    ASSERT_EQ(f.tensors().size(), 2u);
    const GgufTensorInfo* a = f.find_tensor("a");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->ne, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(a->numel(), 6);
    EXPECT_EQ(a->nbytes, 24u);
    EXPECT_EQ(a->offset, 0u);
    float got[6];
    std::memcpy(got, a->data, 24);
    EXPECT_EQ(got[5], 6.f);
    const GgufTensorInfo* b = f.find_tensor("b");
    EXPECT_EQ(b->offset, 32u); // next aligned slot
    EXPECT_EQ((b->data - f.tensors()[0].data) % 32, 0);

    // Writing what was read gives the same bytes.
    GgufWriter again;
    for (const auto& [k, v] : f.metadata()) again.set(k, v);
    for (const auto& t : f.tensors())
        again.add_tensor(t.name, t.ne, t.type, {t.data, size_t(t.nbytes)});
    EXPECT_EQ(again.bytes(), bytes);
}

TEST(Gguf, GoldenBytesFromTheSpec) {
    // header: magic, version 3, 1 tensor, 2 key/values; KV: key string, u32 type, value;
    // tensor info: name, n_dims, ne[], ggml type, offset; pad to 32; data (padded to 32).
    Bytes e;
    e.put(uint8_t('G')).put(uint8_t('G')).put(uint8_t('U')).put(uint8_t('F'));
    e.put(uint32_t(3)).put(uint64_t(1)).put(uint64_t(2));
    e.str("general.architecture").put(uint32_t(8)).str("gpt2");
    e.str("n").put(uint32_t(9)).put(uint32_t(5)).put(uint64_t(2)).put(uint32_t(7)).put(int32_t(-1));
    e.str("w").put(uint32_t(2)).put(int64_t(2)).put(int64_t(1)).put(uint32_t(0)).put(uint64_t(0));
    e.pad_to(32);
    e.put(1.0f).put(-2.0f);
    e.pad_to(32);

    GgufWriter w;
    w.set("general.architecture", GgufValue::str("gpt2"));
    w.set("n", GgufValue::array(GgufType::i32, {GgufValue::i32(7), GgufValue::i32(-1)}));
    w.add_tensor("w", {2, 1}, GgmlType::f32, f32_bytes({1, -2}));
    EXPECT_EQ(w.bytes(), e.b);

    GgufFile f = GgufFile::parse(e.b);
    EXPECT_EQ(f.at("n").as_array().items[1].as_int(), -1);
    float x[2];
    std::memcpy(x, f.tensors()[0].data, 8);
    EXPECT_EQ(x[1], -2.f);
}

TEST(Gguf, AlignmentKeyAndVersion2) {
    GgufWriter w(64);
    w.add_tensor("a", {1}, GgmlType::f32, f32_bytes({1}));
    w.add_tensor("b", {1}, GgmlType::f32, f32_bytes({2}));
    std::vector<uint8_t> bytes = w.bytes();
    GgufFile f = GgufFile::parse(bytes);
    EXPECT_EQ(f.alignment(), 64u);
    EXPECT_EQ(f.at("general.alignment").as_uint(), 64u);
    EXPECT_EQ(f.find_tensor("b")->offset, 64u);
    bytes[4] = 2; // v2 has the same little-endian layout
    EXPECT_EQ(GgufFile::parse(bytes).version(), 2u);
    bytes[4] = 1;
    EXPECT_THROW(GgufFile::parse(bytes), InvalidArgument);
    EXPECT_THROW(GgufWriter(48), InvalidArgument);
}

TEST(Gguf, WriterRejectsInconsistentInput) {
    GgufWriter w;
    EXPECT_THROW(w.set("x", scalar(GgufType::u8, uint64_t(256))), InvalidArgument);
    EXPECT_THROW(w.set("x", scalar(GgufType::i8, uint64_t(1))), InvalidArgument);
    EXPECT_THROW(w.set("x", GgufValue::array(GgufType::u32, {GgufValue::i32(1)})), InvalidArgument);
    EXPECT_THROW(w.set("general.alignment", GgufValue::u32(64)), InvalidArgument);
    EXPECT_THROW(w.add_tensor("t", {3}, GgmlType::f32, f32_bytes({1, 2})), InvalidArgument);
    EXPECT_THROW(w.add_tensor("t", {16}, GgmlType::q8_0, std::vector<uint8_t>(17)), InvalidArgument);
    w.add_tensor("t", {1}, GgmlType::f32, f32_bytes({1}));
    EXPECT_THROW(w.add_tensor("t", {1}, GgmlType::f32, f32_bytes({1})), InvalidArgument);
    w.set("k", GgufValue::u32(1));
    w.set("k", GgufValue::u32(2)); // replaced in place
    GgufFile f = GgufFile::parse(w.bytes());
    EXPECT_EQ(f.metadata().size(), 1u);
    EXPECT_EQ(f.at("k").as_uint(), 2u);
}

TEST(Gguf, TruncatedAtEveryByteIsAnError) {
    std::vector<uint8_t> bytes = every_type_writer().bytes();
    // The last tensor's padding is not needed by any tensor; everything before its end is.
    const size_t needed = bytes.size() - 24;
    for (size_t n = 0; n < needed; ++n) {
        std::span<const uint8_t> cut(bytes.data(), n);
        try {
            GgufFile::parse(cut, "cut");
            ADD_FAILURE() << "a file cut to " << n << " bytes parsed";
        } catch (const InvalidArgument& e) {
            ASSERT_NE(std::string(e.what()).find("cut: at byte"), std::string::npos) << e.what();
        }
    }
}

TEST(Gguf, CorruptedBytesNeverCrash) {
    // Every byte of the header and infos replaced by values that make lengths and counts lie:
    // the parse succeeds or throws InvalidArgument (ASan checks there is no bad read).
    std::vector<uint8_t> good = every_type_writer().bytes();
    const size_t header_end = good.size() - 64; // the data section is the last 64 bytes
    uint64_t sum = 0;
    for (size_t i = 0; i < header_end; ++i)
        for (uint8_t v : {uint8_t(0x00), uint8_t(0xFF), uint8_t(0x7F), uint8_t(0x80), uint8_t(0x0D)}) {
            std::vector<uint8_t> bad = good;
            if (bad[i] == v) continue;
            bad[i] = v;
            try {
                GgufFile f = GgufFile::parse(bad);
                for (const auto& t : f.tensors()) // every byte a tensor claims is readable
                    for (uint64_t k = 0; k < t.nbytes; ++k) sum += t.data[k];
            } catch (const InvalidArgument&) {
            }
        }
    EXPECT_GT(sum, 0u);
}

TEST(Gguf, LyingFieldsGiveClearErrors) {
    auto expect_error = [](const std::vector<uint8_t>& b, const std::string& needle) {
        try {
            GgufFile::parse(b, "lie.gguf");
            ADD_FAILURE() << "parsed; expected an error containing '" << needle << "'";
        } catch (const InvalidArgument& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    auto header = [](uint64_t n_tensors, uint64_t n_kv) {
        Bytes b;
        b.put(uint32_t(0x46554747)).put(uint32_t(3)).put(n_tensors).put(n_kv);
        return b;
    };
    expect_error({'G', 'G', 'M', 'L', 3, 0, 0, 0}, "not a GGUF file");
    expect_error(header(0, 1ull << 60).b, "metadata count");
    expect_error(header(1ull << 60, 0).b, "tensor count");
    {
        Bytes b = header(0, 1);
        b.str("k").put(uint32_t(9)).put(uint32_t(6)).put(uint64_t(1) << 62);
        expect_error(b.b, "array of");
    }
    {
        Bytes b = header(0, 1);
        b.put(uint64_t(1) << 40).put(uint64_t(0)).put(uint64_t(0));
        expect_error(b.b, "string length");
    }
    {
        Bytes b = header(0, 1);
        b.str("k").put(uint32_t(13));
        expect_error(b.b, "unknown value type 13");
    }
    {
        Bytes b = header(0, 2);
        b.str("k").put(uint32_t(4)).put(uint32_t(1));
        b.str("k").put(uint32_t(4)).put(uint32_t(1));
        expect_error(b.b, "duplicate metadata key 'k'");
    }
    {
        Bytes b = header(0, 1);
        b.str("k").put(uint32_t(7)).put(uint8_t(2));
        expect_error(b.b, "bool value is 2");
    }
    {
        Bytes b = header(0, 1);
        b.str("general.alignment").put(uint32_t(4)).put(uint32_t(24));
        expect_error(b.b, "not a power of two");
    }
    {
        // Arrays nested deeper than the limit.
        Bytes b = header(0, 1);
        b.str("k").put(uint32_t(9));
        for (int i = 0; i < 20; ++i) b.put(uint32_t(9)).put(uint64_t(1));
        b.put(uint32_t(4)).put(uint64_t(0));
        expect_error(b.b, "nested deeper");
    }
    auto one_tensor = [&](uint32_t n_dims, std::vector<int64_t> ne, uint32_t type, uint64_t offset,
                          size_t data_bytes) {
        Bytes b = header(1, 0);
        b.str("w").put(n_dims);
        for (int64_t d : ne) b.put(d);
        b.put(type).put(offset);
        b.pad_to(32);
        b.b.resize(b.b.size() + data_bytes);
        return b.b;
    };
    EXPECT_NO_THROW(GgufFile::parse(one_tensor(1, {4}, 0, 0, 16)));
    expect_error(one_tensor(1, {4}, 0, 0, 15), "needs bytes [0, 0 + 16)");
    expect_error(one_tensor(1, {4}, 0, 8, 64), "not a multiple of the alignment");
    expect_error(one_tensor(1, {4}, 0, ~uint64_t(0) - 31, 64), "needs bytes");
    expect_error(one_tensor(1, {4}, 10, 0, 64), "ggml type 10");
    expect_error(one_tensor(1, {16}, 8, 0, 64), "not a multiple of its block size 32");
    expect_error(one_tensor(5, {1, 1, 1, 1, 1}, 0, 0, 64), "5 dimensions");
    expect_error(one_tensor(1, {-1}, 0, 0, 64), "negative dimension");
    expect_error(one_tensor(4, {1ll << 40, 1ll << 40, 1, 1}, 0, 0, 64), "overflows");
    {
        Bytes b = header(2, 0);
        for (int i = 0; i < 2; ++i) b.str("w").put(uint32_t(1)).put(int64_t(1)).put(uint32_t(0)).put(uint64_t(0));
        b.pad_to(32);
        b.b.resize(b.b.size() + 32);
        expect_error(b.b, "duplicate tensor name 'w'");
    }
}

TEST(Gguf, OpenMapsAFile) {
    const auto path = std::filesystem::temp_directory_path() / "forge_gguf_open_test.gguf";
    every_type_writer().write(path);
    {
        GgufFile f = GgufFile::open(path);
        EXPECT_EQ(f.origin(), path.string());
        float x[2];
        std::memcpy(x, f.find_tensor("b")->data, 8);
        EXPECT_EQ(x[0], 7.f);
        GgufFile moved = std::move(f);
        EXPECT_EQ(moved.tensors().size(), 2u);
    }
    std::filesystem::remove(path);
    EXPECT_THROW(GgufFile::open(path), NotFound);
    const auto empty = std::filesystem::temp_directory_path() / "forge_gguf_empty_test.gguf";
    { std::ofstream(empty).flush(); }
    EXPECT_THROW(GgufFile::open(empty), InvalidArgument);
    std::filesystem::remove(empty);
}
