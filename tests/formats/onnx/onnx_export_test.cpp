// export_onnx: the written file passes libonnx's own checker (an independent oracle for the
// proto's validity), has the promised interface (int64 input_ids with dynamic batch and
// sequence, float logits), only default-domain ops of opset 17, the model's weights under HF
// names, and external data when asked. Numerics against onnxruntime: tests/formats/onnxruntime.
#include <filesystem>
#include <fstream>
#include <set>

#include <unistd.h>

#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <forge/core/error.h>
#include <forge/formats/onnx_export.h>
#include <forge/models/transformer.h>

namespace forge {
namespace {

namespace fs = std::filesystem;

ModelConfig small(ModelFamily f) {
    ModelConfig c;
    c.family = f;
    c.vocab_size = 61;
    c.n_ctx = 32;
    c.n_layer = 2;
    c.n_embd = 32;
    c.n_head = 4;
    c.n_head_kv = f == ModelFamily::llama ? 2 : 4;
    c.n_ff = 48;
    c.tie_embeddings = f == ModelFamily::gpt2;
    return c;
}

onnx::ModelProto read_model(const fs::path& p) {
    onnx::ModelProto m;
    std::ifstream in(p, std::ios::binary);
    EXPECT_TRUE(m.ParseFromIstream(&in)) << p;
    return m;
}

struct TempDir {
    fs::path path = fs::temp_directory_path() / ("forge_onnx_" + std::to_string(::getpid()));
    TempDir() { fs::create_directories(path); }
    ~TempDir() { fs::remove_all(path); }
};

void expect_interface(const onnx::ModelProto& m, int64_t vocab) {
    ASSERT_EQ(m.opset_import_size(), 1);
    EXPECT_EQ(m.opset_import(0).domain(), "");
    EXPECT_EQ(m.opset_import(0).version(), 17);
    const auto& g = m.graph();
    ASSERT_EQ(g.input_size(), 1);
    EXPECT_EQ(g.input(0).name(), "input_ids");
    const auto& in = g.input(0).type().tensor_type();
    EXPECT_EQ(in.elem_type(), onnx::TensorProto::INT64);
    ASSERT_EQ(in.shape().dim_size(), 2);
    EXPECT_EQ(in.shape().dim(0).dim_param(), "batch");
    EXPECT_EQ(in.shape().dim(1).dim_param(), "sequence");
    ASSERT_EQ(g.output_size(), 1);
    EXPECT_EQ(g.output(0).name(), "logits");
    const auto& out = g.output(0).type().tensor_type();
    EXPECT_EQ(out.elem_type(), onnx::TensorProto::FLOAT);
    ASSERT_EQ(out.shape().dim_size(), 3);
    EXPECT_EQ(out.shape().dim(0).dim_param(), "batch");
    EXPECT_EQ(out.shape().dim(1).dim_param(), "sequence");
    EXPECT_EQ(out.shape().dim(2).dim_value(), vocab);
    for (const auto& n : g.node())
        EXPECT_TRUE(n.domain().empty()) << n.op_type() << " is outside the default domain";
}

// Every parameter is an initializer under its HF name (Llama's linear weights transposed, as
// "<name>.T"), and together they hold exactly the model's parameter count.
void expect_weights(const onnx::ModelProto& m, Transformer& model) {
    std::map<std::string, int64_t> numel;
    for (const auto& t : m.graph().initializer()) {
        int64_t n = 1;
        for (int64_t d : t.dims())
            n *= d;
        numel[t.name()] = n;
    }
    int64_t total = 0;
    for (const auto& [name, t] : model.named_parameters()) {
        auto it = numel.count(name) ? numel.find(name) : numel.find(name + ".T");
        ASSERT_NE(it, numel.end()) << name << " is not an initializer";
        EXPECT_EQ(it->second, t.numel()) << name;
        total += it->second;
    }
    EXPECT_EQ(total, model.config().num_parameters());
}

TEST(OnnxExport, Gpt2PassesTheCheckerWithDynamicDims) {
    TempDir tmp;
    Transformer model(small(ModelFamily::gpt2), 7);
    const fs::path out = tmp.path / "gpt2.onnx";
    formats::export_onnx(model, out);
    EXPECT_NO_THROW(onnx::checker::check_model(out.string()));
    const onnx::ModelProto m = read_model(out);
    expect_interface(m, 61);
    expect_weights(m, model);
    std::set<std::string> ops;
    for (const auto& n : m.graph().node())
        ops.insert(n.op_type());
    EXPECT_TRUE(ops.count("LayerNormalization") && ops.count("Tanh") && ops.count("Gemm"));
    EXPECT_FALSE(fs::exists(tmp.path / "gpt2.onnx.data")); // small: weights inside
}

TEST(OnnxExport, LlamaWithGqaAndScaledRopePassesTheChecker) {
    TempDir tmp;
    ModelConfig c = small(ModelFamily::llama);
    c.rope_scaling_factor = 8;
    c.rope_original_max_pos = 16;
    Transformer model(c, 7);
    const fs::path out = tmp.path / "llama.onnx";
    formats::export_onnx(model, out);
    EXPECT_NO_THROW(onnx::checker::check_model(out.string()));
    const onnx::ModelProto m = read_model(out);
    expect_interface(m, 61);
    expect_weights(m, model);
    std::set<std::string> ops;
    for (const auto& n : m.graph().node())
        ops.insert(n.op_type());
    EXPECT_TRUE(ops.count("ReduceMean") && ops.count("Sigmoid") && ops.count("Softmax"));
    EXPECT_FALSE(ops.count("LayerNormalization"));
}

TEST(OnnxExport, ExternalDataKeepsWeightsBesideTheFile) {
    TempDir tmp;
    Transformer model(small(ModelFamily::llama), 3);
    const fs::path out = tmp.path / "ext.onnx";
    formats::export_onnx(model, out, {.external_data = formats::OnnxExternalData::always});
    ASSERT_TRUE(fs::exists(tmp.path / "ext.onnx.data"));
    EXPECT_NO_THROW(onnx::checker::check_model(out.string()));
    const onnx::ModelProto m = read_model(out);
    int external = 0;
    uint64_t end = 0;
    for (const auto& t : m.graph().initializer()) {
        if (t.data_location() != onnx::TensorProto::EXTERNAL) continue;
        ++external;
        EXPECT_TRUE(t.raw_data().empty());
        std::map<std::string, std::string> kv;
        for (const auto& e : t.external_data())
            kv[e.key()] = e.value();
        EXPECT_EQ(kv["location"], "ext.onnx.data");
        EXPECT_EQ(std::stoull(kv["offset"]) % 64, 0u);
        end = std::max<uint64_t>(end, std::stoull(kv["offset"]) + std::stoull(kv["length"]));
    }
    EXPECT_GE(external, int(model.named_parameters().size()));
    EXPECT_EQ(fs::file_size(tmp.path / "ext.onnx.data"), end);
    // Re-exporting inside the file removes the stale side file.
    formats::export_onnx(model, out, {.external_data = formats::OnnxExternalData::never});
    EXPECT_FALSE(fs::exists(tmp.path / "ext.onnx.data"));
}

TEST(OnnxExport, RejectsBadOptions) {
    TempDir tmp;
    Transformer model(small(ModelFamily::gpt2), 1);
    EXPECT_THROW(formats::export_onnx(model, tmp.path / "a.onnx", {.opset = 16}), InvalidArgument);
    EXPECT_THROW(formats::export_onnx(model, tmp.path / "a.onnx", {.opset = 99}), InvalidArgument);
    EXPECT_THROW(formats::export_onnx(model, ""), InvalidArgument);
    EXPECT_FALSE(fs::exists(tmp.path / "a.onnx"));
}

} // namespace
} // namespace forge
