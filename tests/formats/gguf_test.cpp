// GGUF container: a file laid out byte by byte from the spec parses to the right values; the
// writer's output round-trips every value type and tensor; every truncation and a set of lying
// fields give InvalidArgument, never a crash or an out-of-bounds read (ASan runs these).
#include <cstring>
#include <filesystem>
#include <random>

#include <gtest/gtest.h>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>

namespace forge::formats {
namespace {

using quant::GgmlType;

struct Bytes {
    std::vector<uint8_t> b;
    template <typename T> Bytes& put(T v) {
        const auto* p = reinterpret_cast<const uint8_t*>(&v);
        b.insert(b.end(), p, p + sizeof v);
        return *this;
    }
    Bytes& str(const std::string& s) {
        put<uint64_t>(s.size());
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    Bytes& pad_to(size_t a) {
        b.resize((b.size() + a - 1) / a * a, 0);
        return *this;
    }
};

// The spec's layout, written out by hand: header, 2 key/values, 1 tensor info, padding, data.
std::vector<uint8_t> handmade_file() {
    Bytes f;
    f.put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint64_t>(1).put<uint64_t>(2);
    f.str("general.architecture").put<uint32_t>(8).str("llama");
    f.str("llama.block_count").put<uint32_t>(4).put<uint32_t>(2);
    f.str("w").put<uint32_t>(2).put<uint64_t>(3).put<uint64_t>(2); // ne = {3, 2}
    f.put<uint32_t>(0).put<uint64_t>(0);                              // F32 at offset 0
    f.pad_to(32);
    for (float x : {1.f, 2.f, 3.f, 4.f, 5.f, 6.f}) f.put<float>(x);
    f.pad_to(32); // every tensor's data is padded to the alignment, the last one too
    return f.b;
}

TEST(Gguf, ParsesAFileLaidOutFromTheSpec) {
    const std::vector<uint8_t> bytes = handmade_file();
    GgufFile g = GgufFile::parse(bytes, "handmade");
    EXPECT_EQ(g.version(), 3u);
    EXPECT_EQ(g.alignment(), 32u);
    ASSERT_EQ(g.metadata().size(), 2u);
    EXPECT_EQ(g.at("general.architecture").as_string(), "llama");
    EXPECT_EQ(g.at("llama.block_count").as_int(), 2);
    ASSERT_EQ(g.tensors().size(), 1u);
    const GgufTensorInfo& t = g.tensors()[0];
    EXPECT_EQ(t.name, "w");
    EXPECT_EQ(t.ne, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(t.type, GgmlType::f32);
    EXPECT_EQ(t.nbytes, 24u);
    float v[6];
    std::memcpy(v, t.data, sizeof v);
    EXPECT_EQ(v[0], 1.f);
    EXPECT_EQ(v[5], 6.f);
    // The writer produces the same bytes for the same content.
    GgufWriter w;
    w.set("general.architecture", GgufValue::str("llama"));
    w.set("llama.block_count", GgufValue::u32(2));
    w.add_tensor("w", {3, 2}, GgmlType::f32,
                 std::span<const uint8_t>(t.data, size_t(t.nbytes)));
    EXPECT_EQ(w.bytes(), bytes);
}

GgufWriter every_kind_writer() {
    GgufWriter w(64);
    w.set("u8", {GgufType::u8, uint64_t(200)});
    w.set("i8", {GgufType::i8, int64_t(-100)});
    w.set("u16", {GgufType::u16, uint64_t(60000)});
    w.set("i16", {GgufType::i16, int64_t(-30000)});
    w.set("u32", GgufValue::u32(4000000000u));
    w.set("i32", GgufValue::i32(-2000000000));
    w.set("u64", GgufValue::u64(1ull << 60));
    w.set("i64", {GgufType::i64, int64_t(-(1ll << 60))});
    w.set("f32", GgufValue::f32(1.5f));
    w.set("f64", {GgufType::f64, 0.1});
    w.set("bool", GgufValue::boolean(true));
    w.set("str", GgufValue::str("h\xc3\xa9llo"));
    w.set("strings", GgufValue::array(GgufType::string, {GgufValue::str("a"), GgufValue::str("")}));
    w.set("nested", GgufValue::array(GgufType::array,
                                     {GgufValue::array(GgufType::i32, {GgufValue::i32(7)})}));
    std::vector<uint8_t> f32(4 * 8 * 3);
    for (size_t i = 0; i < f32.size(); ++i) f32[i] = uint8_t(i * 7);
    w.add_tensor("a.weight", {8, 3}, GgmlType::f32, f32);
    std::vector<uint8_t> q8(34 * 2); // two Q8_0 blocks: one row of 64
    for (size_t i = 0; i < q8.size(); ++i) q8[i] = uint8_t(i);
    w.add_tensor("b.weight", {64}, GgmlType::q8_0, q8);
    return w;
}

TEST(Gguf, WriterRoundTripsEveryValueTypeAndTensors) {
    const std::vector<uint8_t> bytes = every_kind_writer().bytes();
    GgufFile g = GgufFile::parse(bytes);
    EXPECT_EQ(g.alignment(), 64u);
    EXPECT_EQ(g.at("u8").as_uint(), 200u);
    EXPECT_EQ(g.at("i8").as_int(), -100);
    EXPECT_EQ(g.at("u16").as_uint(), 60000u);
    EXPECT_EQ(g.at("i16").as_int(), -30000);
    EXPECT_EQ(g.at("u32").as_uint(), 4000000000u);
    EXPECT_EQ(g.at("i32").as_int(), -2000000000);
    EXPECT_EQ(g.at("u64").as_uint(), 1ull << 60);
    EXPECT_EQ(g.at("i64").as_int(), -(1ll << 60));
    EXPECT_EQ(g.at("f32").as_float(), 1.5);
    EXPECT_EQ(g.at("f64").as_float(), 0.1);
    EXPECT_TRUE(g.at("bool").as_bool());
    EXPECT_EQ(g.at("str").as_string(), "h\xc3\xa9llo");
    ASSERT_EQ(g.at("strings").as_array().items.size(), 2u);
    EXPECT_EQ(g.at("strings").as_array().items[1].as_string(), "");
    EXPECT_EQ(g.at("nested").as_array().items[0].as_array().items[0].as_int(), 7);
    EXPECT_THROW(g.at("str").as_int(), InvalidArgument);
    EXPECT_THROW(g.at("i8").as_uint(), InvalidArgument);
    EXPECT_THROW(g.at("missing"), InvalidArgument);
    ASSERT_EQ(g.tensors().size(), 2u);
    for (const GgufTensorInfo& t : g.tensors()) EXPECT_EQ(t.offset % 64, 0u) << t.name;
    const GgufTensorInfo* b = g.find_tensor("b.weight");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->type, GgmlType::q8_0);
    EXPECT_EQ(b->nbytes, 68u);
    EXPECT_EQ(b->offset % 64, 0u);
    for (size_t i = 0; i < 68; ++i) ASSERT_EQ(b->data[i], uint8_t(i));
}

TEST(Gguf, OpenMapsAFileAndNamesMissingOnes) {
    const auto path = std::filesystem::temp_directory_path() / "forge_gguf_test.gguf";
    every_kind_writer().write(path);
    GgufFile g = GgufFile::open(path);
    EXPECT_EQ(g.tensors().size(), 2u);
    EXPECT_EQ(g.origin(), path.string());
    std::filesystem::remove(path);
    EXPECT_THROW(GgufFile::open(path), NotFound);
}

TEST(Gguf, EveryTruncationIsAClearError) {
    const std::vector<uint8_t> bytes = every_kind_writer().bytes();
    // Cutting inside the tensor data also fails: the last tensor then runs past the end. (Only
    // the padding after the last tensor, 128 - 68 bytes here, may go.)
    const size_t data_end = bytes.size() - (128 - 68);
    for (size_t n = 0; n < data_end; ++n) {
        try {
            GgufFile::parse(std::span<const uint8_t>(bytes.data(), n), "cut");
            ADD_FAILURE() << "a file cut to " << n << " bytes parsed";
        } catch (const InvalidArgument& e) {
            EXPECT_NE(std::string(e.what()).find("cut"), std::string::npos) << e.what();
        }
    }
}

// Patches a field of the handmade file and expects an error mentioning `needle`.
void expect_rejected(size_t offset, std::vector<uint8_t> patch, const std::string& needle) {
    std::vector<uint8_t> bytes = handmade_file();
    ASSERT_LE(offset + patch.size(), bytes.size());
    std::memcpy(bytes.data() + offset, patch.data(), patch.size());
    try {
        GgufFile::parse(bytes, "patched");
        ADD_FAILURE() << "accepted a file patched at " << offset;
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

std::vector<uint8_t> le64(uint64_t v) {
    std::vector<uint8_t> b(8);
    std::memcpy(b.data(), &v, 8);
    return b;
}

TEST(Gguf, LyingFieldsAreRejected) {
    expect_rejected(0, {'G', 'G', 'M', 'L'}, "not a GGUF file");
    expect_rejected(4, {9, 0, 0, 0}, "version 9");
    expect_rejected(8, le64(1ull << 40), "tensor count");
    expect_rejected(16, le64(1ull << 40), "metadata count");
    expect_rejected(24, le64(1ull << 50), "absurd");                  // key length
    expect_rejected(24 + 8 + 20, {99, 0, 0, 0}, "unknown value type"); // first value's type
    // The tensor info: name "w" starts after the two key/values.
    const size_t kv_end = 24 + (8 + 20 + 4 + 8 + 5) + (8 + 17 + 4 + 4);
    const size_t dims = kv_end + 8 + 1;
    expect_rejected(dims, {5, 0, 0, 0}, "dimensions");
    expect_rejected(dims + 4, le64(0), "impossible shape");
    expect_rejected(dims + 4 + 16, {10, 0, 0, 0}, "ggml type 10");     // Q2_K: not read
    expect_rejected(dims + 4 + 16, {8, 0, 0, 0}, "multiple of");       // Q8_0 with rows of 3
    expect_rejected(dims + 4 + 16 + 4, le64(32), "runs past the end"); // offset beyond the data
    expect_rejected(dims + 4 + 16 + 4, le64(3), "alignment");
}

TEST(Gguf, RandomCorruptionNeverCrashes) {
    const std::vector<uint8_t> good = every_kind_writer().bytes();
    std::mt19937 rng(7);
    for (int trial = 0; trial < 2000; ++trial) {
        std::vector<uint8_t> b = good;
        const int flips = 1 + int(rng() % 4);
        for (int i = 0; i < flips; ++i) b[rng() % b.size()] = uint8_t(rng());
        try {
            GgufFile g = GgufFile::parse(b);
            for (const GgufTensorInfo& t : g.tensors()) // extents were checked: touch them all
                for (uint64_t k = 0; k < t.nbytes; ++k) (void)*(volatile const uint8_t*)(t.data + k);
        } catch (const InvalidArgument&) {
        }
    }
}

TEST(Gguf, WriterRejectsInconsistentTensors) {
    GgufWriter w;
    std::vector<uint8_t> data(10);
    EXPECT_THROW(w.add_tensor("x", {3}, GgmlType::f32, data), InvalidArgument);
    EXPECT_THROW(w.add_tensor("x", {33}, GgmlType::q8_0, data), InvalidArgument);
    EXPECT_THROW(w.add_tensor("x", {}, GgmlType::f32, data), InvalidArgument);
    std::vector<uint8_t> ok(12);
    w.add_tensor("x", {3}, GgmlType::f32, ok);
    EXPECT_THROW(w.add_tensor("x", {3}, GgmlType::f32, ok), InvalidArgument);
    EXPECT_THROW(GgufWriter(3), InvalidArgument);
}

} // namespace
} // namespace forge::formats
