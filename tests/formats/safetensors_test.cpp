// safetensors: round trip of every dtype, and clear errors for malformed or lying files.
#include <cstring>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include <forge/core/ops.h>
#include <forge/formats/safetensors.h>

namespace forge {
namespace {

std::string header_file(const std::string& header, size_t data_bytes) {
    std::string s(8, '\0');
    uint64_t n = header.size();
    std::memcpy(s.data(), &n, 8);
    return s + header + std::string(data_bytes, '\x01');
}

void expect_invalid(const std::string& bytes, const std::string& needle) {
    try {
        formats::parse_safetensors(bytes, "test.safetensors");
        ADD_FAILURE() << "no error for: " << needle;
    } catch (const InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("test.safetensors"), std::string::npos);
    }
}

TEST(Safetensors, RoundTripsEveryDtype) {
    auto dir = std::filesystem::temp_directory_path() / "forge_st_test";
    std::filesystem::create_directories(dir);
    std::map<std::string, Tensor> in;
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64, DType::u8})
        in["t." + std::string(dtype_name(dt))] = Tensor::randn({3, 5}, 1, DType::f32, 0, 4).to(dt);
    in["scalar"] = Tensor::scalar(2.5);
    in["view"] = Tensor::randn({4, 6}, 2).t(); // non-contiguous input
    formats::save_safetensors(dir / "a.safetensors", in, {{"format", "pt"}});
    auto out = formats::load_safetensors(dir / "a.safetensors");
    ASSERT_EQ(out.size(), in.size());
    for (auto& [k, t] : in) {
        EXPECT_EQ(out[k].dtype(), t.dtype()) << k;
        EXPECT_EQ(out[k].shape(), t.shape()) << k;
        EXPECT_EQ(out[k].to_vector<double>(), t.to_vector<double>()) << k;
    }
    EXPECT_EQ(formats::safetensors_metadata(dir / "a.safetensors").at("format"), "pt");
    std::filesystem::remove_all(dir);
}

TEST(Safetensors, RejectsMalformedFiles) {
    expect_invalid("abc", "too short");
    std::string big(8, '\xff');
    expect_invalid(big, "exceeds the 100 MB limit");
    std::string lying(8, '\0');
    lying[0] = 100;
    expect_invalid(lying + "{}", "runs past the end");
    expect_invalid(header_file("{nope", 0), "not valid JSON");
    expect_invalid(header_file("[]", 0), "JSON object");
    expect_invalid(header_file(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "needs dtype, shape");
    expect_invalid(header_file(R"({"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}})", 8),
                   "unsupported dtype 'Q9'");
    expect_invalid(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", 8),
                   "outside the 8-byte data section");
    expect_invalid(header_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                   "needs 12 bytes");
    expect_invalid(header_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}})", 8),
                   "unsigned");
    expect_invalid(header_file(
                       R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
                   "overflows");
    try {
        formats::load_safetensors("/nonexistent/x.safetensors");
        ADD_FAILURE();
    } catch (const NotFound& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/x.safetensors"), std::string::npos);
    }
}

} // namespace
} // namespace forge
