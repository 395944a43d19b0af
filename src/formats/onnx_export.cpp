// export_onnx (include/forge/formats/onnx_export.h): builds the forward graph of a Transformer
// node by node and writes it in protobuf's wire format directly (docs/formats.md says why not
// through libprotobuf: Debian's libsentencepiece exports a second protobuf runtime that crashes
// any process loading both). The graph follows src/models/transformer.cpp op for op; the
// comments give each intermediate's shape with B = batch, T = sequence (both dynamic).
#include <forge/formats/onnx_export.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <string_view>
#include <vector>

#include <forge/core/error.h>
#include <forge/models/transformer.h>

namespace forge::formats {

namespace fs = std::filesystem;

namespace {

// protobuf refuses messages of 2 GiB or more; leave room for the graph itself.
constexpr uint64_t kProtoLimit = (2ull << 30) - (64ull << 20);
constexpr uint64_t kAutoExternal = 1800ull << 20;

// RoPE frequency of rotated pair i (NeoX layout, pairs (i, i + D/2)) with HF's "llama3"
// scaling when the config has it: long wavelengths slowed by `factor`, short ones kept, a
// smooth blend between (transformers' _compute_llama3_parameters).
double rope_inv_freq(const ModelConfig& c, int64_t i) {
    const double D = double(c.dim_head());
    const double inv = std::pow(double(c.rope_theta), -2.0 * double(i) / D);
    if (c.rope_scaling_factor <= 0) return inv;
    const double old_ctx = double(c.rope_original_max_pos);
    const double low_wavelen = old_ctx / c.rope_low_freq_factor;
    const double high_wavelen = old_ctx / c.rope_high_freq_factor;
    const double wavelen = 2 * M_PI / inv;
    if (wavelen < high_wavelen) return inv;
    if (wavelen > low_wavelen) return inv / c.rope_scaling_factor;
    const double smooth = (old_ctx / wavelen - c.rope_low_freq_factor) /
                          (c.rope_high_freq_factor - c.rope_low_freq_factor);
    return (1 - smooth) * inv / c.rope_scaling_factor + smooth * inv;
}

// Protocol-buffer wire format (https://protobuf.dev/programming-guides/encoding/), just what
// ONNX needs: varints, length-delimited fields and fixed32 floats.
class Pb {
  public:
    Pb& varint(int field, uint64_t v) { return tag(field, 0).raw_varint(v); }
    Pb& bytes(int field, std::string_view s) {
        tag(field, 2).raw_varint(s.size());
        buf_.append(s);
        return *this;
    }
    Pb& msg(int field, const Pb& m) { return bytes(field, m.buf_); }
    Pb& f32(int field, float v) {
        tag(field, 5);
        char b[4];
        std::memcpy(b, &v, 4); // little-endian hosts only (x86-64, arm64)
        buf_.append(b, 4);
        return *this;
    }
    // The key and length of a bytes field whose `n` payload bytes the caller writes itself.
    Pb& bytes_header(int field, uint64_t n) { return tag(field, 2).raw_varint(n); }
    const std::string& str() const { return buf_; }
    size_t size() const { return buf_.size(); }

  private:
    Pb& tag(int field, int wire) { return raw_varint(uint64_t(field) << 3 | uint64_t(wire)); }
    Pb& raw_varint(uint64_t v) {
        while (v >= 0x80) {
            buf_.push_back(char(v | 0x80));
            v >>= 7;
        }
        buf_.push_back(char(v));
        return *this;
    }
    std::string buf_;
};

// onnx.proto field numbers and enum values (libonnx-dev's /usr/include/onnx/onnx.proto; the
// unit test parses our bytes with libonnx's generated classes, so a wrong number fails there).
namespace pb {
enum Model { ir_version = 1, producer_name = 2, producer_version = 3, model_doc = 6, graph = 7,
             opset_import = 8, metadata_props = 14 };
enum OpsetId { opset_domain = 1, opset_version = 2 };
enum Entry { key = 1, value = 2 };
enum Graph { node = 1, graph_name = 2, initializer = 5, input = 11, output = 12 };
enum Node { node_input = 1, node_output = 2, node_name = 3, op_type = 4, attribute = 5 };
enum Attr { attr_name = 1, attr_f = 2, attr_i = 3, attr_ints = 8, attr_type = 20 };
enum AttrType { FLOAT = 1, INT = 2, INTS = 7 };
enum Tensor { dims = 1, data_type = 2, tensor_name = 8, raw_data = 9, external_data = 13,
              data_location = 14 };
enum ElemType { ELEM_FLOAT = 1, ELEM_INT64 = 7 };
enum { EXTERNAL = 1 };
enum ValueInfo { vi_name = 1, vi_type = 2 };
enum TypeProto { tensor_type = 1, elem_type = 1, shape = 2, dim = 1, dim_value = 1, dim_param = 2 };
} // namespace pb

// The graph under construction: nodes (encoded as they are made), initializers (their bytes
// kept as Tensors until we know whether they go inside the file or beside it).
class GraphBuilder {
  public:
    // One node with one output; returns the output's name ("<prefix>/<op>_<n>").
    std::string op(const std::string& type, const std::vector<std::string>& inputs,
                   const std::string& prefix = "") {
        return op_n(type, inputs, 1, prefix)[0];
    }
    std::vector<std::string> op_n(const std::string& type, const std::vector<std::string>& inputs,
                                  int n_out, const std::string& prefix = "") {
        flush_node();
        const std::string base = prefix + "/" + type + "_" + std::to_string(counter_++);
        std::vector<std::string> outs;
        for (int i = 0; i < n_out; ++i)
            outs.push_back(base + (n_out > 1 ? ":" + std::to_string(i) : ""));
        node_ = Node{type, base, inputs, outs, {}};
        open_ = true;
        return outs;
    }
    // Attributes of the node op() just made.
    GraphBuilder& attr(const std::string& name, int64_t v) {
        node_.attrs.push_back(Pb().bytes(pb::attr_name, name).varint(pb::attr_type, pb::INT)
                                  .varint(pb::attr_i, uint64_t(v)));
        return *this;
    }
    GraphBuilder& attr(const std::string& name, float v) {
        node_.attrs.push_back(
            Pb().bytes(pb::attr_name, name).varint(pb::attr_type, pb::FLOAT).f32(pb::attr_f, v));
        return *this;
    }
    GraphBuilder& attr(const std::string& name, const std::vector<int64_t>& v) {
        Pb a;
        a.bytes(pb::attr_name, name).varint(pb::attr_type, pb::INTS);
        for (int64_t x : v)
            a.varint(pb::attr_ints, uint64_t(x));
        node_.attrs.push_back(a);
        return *this;
    }
    // The last node's output is renamed (for the graph's output).
    void rename_output(const std::string& name) { node_.outputs[0] = name; }

    // Small constants (shapes, scalars): int64 or float initializers, always inside the file.
    std::string ints(const std::vector<int64_t>& v, bool scalar = false) {
        const Shape shape = scalar ? Shape{} : Shape{int64_t(v.size())};
        return add_init("const_" + std::to_string(counter_++), Tensor::from_vector(v, shape), false);
    }
    std::string scalar_f(float v) {
        return add_init("const_" + std::to_string(counter_++), Tensor::from_vector(std::vector<float>{v}, Shape{}), false);
    }
    // A weight: float32, row-major; inside the file or in the external data file.
    std::string weight(const std::string& name, const Tensor& t) {
        if (names_.count(name)) return name;
        weight_bytes_ += size_t(t.numel()) * 4;
        return add_init(name, t.detach().to(Device::cpu()).to(DType::f32).contiguous(), true);
    }
    uint64_t weight_bytes() const { return weight_bytes_; }

    // Writes the GraphProto as field `field` of the enclosing message: key, length, then the
    // nodes, initializers (weights' bytes streamed from their tensors, or appended to
    // `data_path` at 64-byte aligned offsets and referenced by file name), input and output.
    void write(std::ostream& out, int field, const std::string& name, const Pb& input,
               const Pb& output, const fs::path* data_path) {
        flush_node();
        std::ofstream data;
        if (data_path) {
            data.open(*data_path, std::ios::binary | std::ios::trunc);
            FORGE_CHECK(bool(data), "[export_onnx] cannot write '", data_path->string(), "'");
        }
        // Each initializer: its TensorProto minus inline bytes, and the bytes inline (or not).
        std::vector<std::pair<Pb, const Tensor*>> inits;
        uint64_t offset = 0;
        for (const Init& in : inits_) {
            Pb t;
            for (int64_t d : in.data.shape())
                t.varint(pb::dims, uint64_t(d));
            t.varint(pb::data_type, in.data.dtype() == DType::i64 ? pb::ELEM_INT64 : pb::ELEM_FLOAT);
            t.bytes(pb::tensor_name, in.name);
            const uint64_t n = in.data.nbytes();
            if (data_path && in.weight) {
                const uint64_t pad = (64 - offset % 64) % 64;
                static const char zeros[64] = {};
                data.write(zeros, long(pad));
                offset += pad;
                data.write(static_cast<const char*>(in.data.data_ptr()), long(n));
                auto entry = [&](const char* k, const std::string& v) {
                    t.msg(pb::external_data, Pb().bytes(pb::key, k).bytes(pb::value, v));
                };
                entry("location", data_path->filename().string());
                entry("offset", std::to_string(offset));
                entry("length", std::to_string(n));
                t.varint(pb::data_location, pb::EXTERNAL);
                offset += n;
                inits.emplace_back(std::move(t), nullptr);
            } else {
                t.bytes_header(pb::raw_data, n);
                inits.emplace_back(std::move(t), &in.data);
            }
        }
        if (data_path) {
            data.flush();
            FORGE_CHECK(bool(data), "[export_onnx] failed writing '", data_path->string(),
                        "' (disk full?)");
        }
        Pb head; // everything but the initializers
        for (const Pb& n : nodes_)
            head.msg(pb::node, n);
        head.bytes(pb::graph_name, name);
        Pb tail;
        tail.msg(pb::input, input).msg(pb::output, output);
        uint64_t len = head.size() + tail.size();
        std::vector<Pb> keys; // each initializer's field key and length
        for (const auto& [t, data_t] : inits) {
            const uint64_t n = t.size() + (data_t ? data_t->nbytes() : 0);
            keys.push_back(Pb().bytes_header(pb::initializer, n));
            len += keys.back().size() + n;
        }
        const Pb graph_key = Pb().bytes_header(field, len);
        out.write(graph_key.str().data(), long(graph_key.size()));
        out.write(head.str().data(), long(head.size()));
        for (size_t i = 0; i < inits.size(); ++i) {
            out.write(keys[i].str().data(), long(keys[i].size()));
            out.write(inits[i].first.str().data(), long(inits[i].first.size()));
            if (const Tensor* d = inits[i].second)
                out.write(static_cast<const char*>(d->data_ptr()), long(d->nbytes()));
        }
        out.write(tail.str().data(), long(tail.size()));
    }

  private:
    struct Node {
        std::string type, name;
        std::vector<std::string> inputs, outputs;
        std::vector<Pb> attrs;
    };
    struct Init {
        std::string name;
        Tensor data; // f32 or i64, contiguous, on the CPU
        bool weight;
    };
    std::string add_init(const std::string& name, Tensor t, bool weight) {
        names_.insert(name);
        inits_.push_back({name, std::move(t), weight});
        return name;
    }
    void flush_node() {
        if (!open_) return;
        Pb n;
        for (const auto& in : node_.inputs)
            n.bytes(pb::node_input, in);
        for (const auto& o : node_.outputs)
            n.bytes(pb::node_output, o);
        n.bytes(pb::node_name, node_.name).bytes(pb::op_type, node_.type);
        for (const Pb& a : node_.attrs)
            n.msg(pb::attribute, a);
        nodes_.push_back(std::move(n));
        open_ = false;
    }
    Node node_;
    bool open_ = false;
    std::vector<Pb> nodes_;
    std::vector<Init> inits_;
    std::set<std::string> names_;
    int64_t counter_ = 0;
    uint64_t weight_bytes_ = 0;
};

// ValueInfoProto of a tensor; dims are sizes ("61") or symbolic names ("batch").
Pb value_info(const std::string& name, int elem_type, const std::vector<std::string>& dims) {
    Pb shape;
    for (const auto& d : dims) {
        Pb dim;
        if (!d.empty() && std::isdigit(static_cast<unsigned char>(d[0])))
            dim.varint(pb::dim_value, std::stoull(d));
        else
            dim.bytes(pb::dim_param, d);
        shape.msg(pb::dim, dim);
    }
    Pb tensor;
    tensor.varint(pb::elem_type, uint64_t(elem_type)).msg(pb::shape, shape);
    Pb type;
    type.msg(pb::tensor_type, tensor);
    Pb v;
    v.bytes(pb::vi_name, name).msg(pb::vi_type, type);
    return v;
}

// Emits the forward graph of `cfg` with weights from `sd`; returns nothing, the graph's output
// is named "logits".
void build_graph(GraphBuilder& b, const ModelConfig& c, const std::map<std::string, Tensor>& sd,
                 int64_t opset) {
    const bool gpt2 = c.family == ModelFamily::gpt2;
    const int64_t C = c.n_embd, D = c.dim_head(), H = c.n_head, Hkv = c.n_head_kv;
    const int64_t n_rep = H / Hkv, half = D / 2;
    auto W = [&](const std::string& name) {
        auto it = sd.find(name);
        FORGE_ASSERT(it != sd.end());
        return b.weight(name, it->second);
    };
    // nn.Linear weights (out, in) are stored transposed, (in, out), so MatMul takes them as is.
    auto WT = [&](const std::string& name) {
        auto it = sd.find(name);
        FORGE_ASSERT(it != sd.end());
        return b.weight(name + ".T", it->second.t());
    };

    // Positions 0..T-1 and the causal mask, shared by all layers.
    const std::string ids = "input_ids";
    const std::string ids_shape = b.op("Shape", {ids}, "/pos");                        // [B, T]
    const std::string T = b.op("Gather", {ids_shape, b.ints({1}, true)}, "/pos");      // scalar
    b.attr("axis", int64_t(0));
    const std::string pos = b.op("Range", {b.ints({0}, true), T, b.ints({1}, true)}, "/pos"); // (T)
    const std::string row = b.op("Unsqueeze", {pos, b.ints({1})}, "/mask");           // (T, 1)
    const std::string col = b.op("Unsqueeze", {pos, b.ints({0})}, "/mask");           // (1, T)
    const std::string allowed = b.op("LessOrEqual", {col, row}, "/mask");             // (T, T)
    // Additive mask: 0 where key <= query, the lowest float elsewhere (softmax gives it 0).
    const std::string mask = b.op("Where", {allowed, b.scalar_f(0.0f),
                                            b.scalar_f(std::numeric_limits<float>::lowest())},
                                  "/mask");
    const std::string scale = b.scalar_f(float(1.0 / std::sqrt(double(D))));

    std::string x, cos, sin;
    if (gpt2) {
        x = b.op("Gather", {W("transformer.wte.weight"), ids}, "/embed");               // (B, T, C)
        const std::string pe = b.op("Gather", {W("transformer.wpe.weight"), pos}, "/embed"); // (T, C)
        x = b.op("Add", {x, pe}, "/embed");
    } else {
        x = b.op("Gather", {W("model.embed_tokens.weight"), ids}, "/embed");
        // cos/sin tables for every position the model allows, computed in double like
        // Transformer's rope path; (n_ctx, D/2) each, sliced to (T, D/2) by a Gather.
        std::vector<float> tc(size_t(c.n_ctx * half)), ts(size_t(c.n_ctx * half));
        for (int64_t i = 0; i < half; ++i) {
            const double inv = rope_inv_freq(c, i);
            for (int64_t p = 0; p < c.n_ctx; ++p) {
                tc[size_t(p * half + i)] = float(std::cos(double(p) * inv));
                ts[size_t(p * half + i)] = float(std::sin(double(p) * inv));
            }
        }
        cos = b.op("Gather", {b.weight("rope.cos", Tensor::from_vector(tc, {c.n_ctx, half})), pos},
                   "/rope");
        sin = b.op("Gather", {b.weight("rope.sin", Tensor::from_vector(ts, {c.n_ctx, half})), pos},
                   "/rope");
    }

    auto layer_norm = [&](const std::string& in, const std::string& w, const std::string& bias,
                          const std::string& p) {
        std::string y = b.op("LayerNormalization", {in, W(w), W(bias)}, p);
        b.attr("axis", int64_t(-1)).attr("epsilon", c.norm_eps);
        return y;
    };
    // x * w / sqrt(mean(x^2) + eps) over the last dim (RMSNorm has no ONNX op before opset 23).
    auto rms_norm = [&](const std::string& in, const std::string& w, const std::string& p) {
        std::string sq = b.op("Mul", {in, in}, p), ms;
        if (opset >= 18) { // axes became an input in opset 18
            ms = b.op("ReduceMean", {sq, b.ints({-1})}, p);
        } else {
            ms = b.op("ReduceMean", {sq}, p);
            b.attr("axes", std::vector<int64_t>{-1});
        }
        b.attr("keepdims", int64_t(1));
        std::string r = b.op("Reciprocal",
                             {b.op("Sqrt", {b.op("Add", {ms, b.scalar_f(c.norm_eps)}, p)}, p)}, p);
        return b.op("Mul", {b.op("Mul", {in, r}, p), W(w)}, p);
    };
    // (B, T, n*D) -> (B, n, T, D)
    auto heads = [&](const std::string& in, int64_t n, const std::string& p) {
        std::string r = b.op("Reshape", {in, b.ints({0, 0, n, D})}, p);
        std::string t = b.op("Transpose", {r}, p);
        b.attr("perm", std::vector<int64_t>{0, 2, 1, 3});
        return t;
    };
    // NeoX rotation of (B, n, T, D) by the (T, D/2) tables.
    auto rope = [&](const std::string& in, const std::string& p) {
        std::string x1 = b.op("Slice", {in, b.ints({0}), b.ints({half}), b.ints({3})}, p);
        std::string x2 = b.op("Slice", {in, b.ints({half}), b.ints({D}), b.ints({3})}, p);
        std::string r1 = b.op("Sub", {b.op("Mul", {x1, cos}, p), b.op("Mul", {x2, sin}, p)}, p);
        std::string r2 = b.op("Add", {b.op("Mul", {x2, cos}, p), b.op("Mul", {x1, sin}, p)}, p);
        std::string y = b.op("Concat", {r1, r2}, p);
        b.attr("axis", int64_t(3));
        return y;
    };
    // softmax(q k^T / sqrt(D) + mask) v. q: (B, H, T, D), k, v: (B, Hkv, T, D) -> (B, T, H*D).
    // Grouped heads: q is viewed as (B, Hkv, n_rep, T, D) and k, v as (B, Hkv, 1, T, D), so
    // MatMul's broadcasting pairs query head h with kv head h / n_rep, as Forge and HF do.
    auto attention = [&](std::string q, std::string k, std::string v, const std::string& p) {
        std::vector<int64_t> kt_perm{0, 1, 3, 2};
        if (n_rep > 1) {
            q = b.op("Reshape", {q, b.ints({0, Hkv, n_rep, -1, D})}, p);
            k = b.op("Unsqueeze", {k, b.ints({2})}, p);
            v = b.op("Unsqueeze", {v, b.ints({2})}, p);
            kt_perm = {0, 1, 2, 4, 3};
        }
        std::string kt = b.op("Transpose", {k}, p);
        b.attr("perm", kt_perm);
        std::string s = b.op("Mul", {b.op("MatMul", {q, kt}, p), scale}, p);
        s = b.op("Add", {s, mask}, p);
        std::string a = b.op("Softmax", {s}, p);
        b.attr("axis", int64_t(-1));
        std::string o = b.op("MatMul", {a, v}, p);
        if (n_rep > 1) o = b.op("Reshape", {o, b.ints({0, H, -1, D})}, p);
        o = b.op("Transpose", {o}, p);
        b.attr("perm", std::vector<int64_t>{0, 2, 1, 3});
        return b.op("Reshape", {o, b.ints({0, 0, H * D})}, p);
    };
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GELU's tanh form (Gelu is opset 20).
    auto gelu_tanh = [&](const std::string& in, const std::string& p) {
        std::string x3 = b.op("Mul", {b.op("Mul", {in, in}, p), in}, p);
        std::string inner = b.op("Add", {in, b.op("Mul", {x3, b.scalar_f(0.044715f)}, p)}, p);
        std::string t = b.op(
            "Tanh", {b.op("Mul", {inner, b.scalar_f(float(std::sqrt(2.0 / M_PI)))}, p)}, p);
        std::string one_plus = b.op("Add", {t, b.scalar_f(1.0f)}, p);
        return b.op("Mul", {b.op("Mul", {in, b.scalar_f(0.5f)}, p), one_plus}, p);
    };

    for (int64_t l = 0; l < c.n_layer; ++l) {
        const std::string p = (gpt2 ? "transformer.h." : "model.layers.") + std::to_string(l) + ".";
        const std::string pa = "/" + p + "attn", pm = "/" + p + "mlp";
        if (gpt2) {
            std::string h = layer_norm(x, p + "ln_1.weight", p + "ln_1.bias", pa);
            std::string qkv = b.op("Add", {b.op("MatMul", {h, W(p + "attn.c_attn.weight")}, pa),
                                           W(p + "attn.c_attn.bias")},
                                   pa);                                                   // (B, T, 3C)
            auto parts = b.op_n("Split", {qkv, b.ints({C, C, C})}, 3, pa);
            b.attr("axis", int64_t(2));
            std::string a = attention(heads(parts[0], H, pa), heads(parts[1], H, pa),
                                      heads(parts[2], H, pa), pa);
            a = b.op("Add", {b.op("MatMul", {a, W(p + "attn.c_proj.weight")}, pa),
                             W(p + "attn.c_proj.bias")},
                     pa);
            x = b.op("Add", {x, a}, pa);
            h = layer_norm(x, p + "ln_2.weight", p + "ln_2.bias", pm);
            h = b.op("Add", {b.op("MatMul", {h, W(p + "mlp.c_fc.weight")}, pm),
                             W(p + "mlp.c_fc.bias")},
                     pm);
            h = gelu_tanh(h, pm);
            h = b.op("Add", {b.op("MatMul", {h, W(p + "mlp.c_proj.weight")}, pm),
                             W(p + "mlp.c_proj.bias")},
                     pm);
            x = b.op("Add", {x, h}, pm);
        } else {
            std::string h = rms_norm(x, p + "input_layernorm.weight", pa);
            std::string q = heads(b.op("MatMul", {h, WT(p + "self_attn.q_proj.weight")}, pa), H, pa);
            std::string k = heads(b.op("MatMul", {h, WT(p + "self_attn.k_proj.weight")}, pa), Hkv, pa);
            std::string v = heads(b.op("MatMul", {h, WT(p + "self_attn.v_proj.weight")}, pa), Hkv, pa);
            std::string a = attention(rope(q, pa), rope(k, pa), v, pa);
            x = b.op("Add", {x, b.op("MatMul", {a, WT(p + "self_attn.o_proj.weight")}, pa)}, pa);
            h = rms_norm(x, p + "post_attention_layernorm.weight", pm);
            std::string g = b.op("MatMul", {h, WT(p + "mlp.gate_proj.weight")}, pm);
            g = b.op("Mul", {g, b.op("Sigmoid", {g}, pm)}, pm);                          // SiLU
            std::string u = b.op("MatMul", {h, WT(p + "mlp.up_proj.weight")}, pm);
            h = b.op("MatMul", {b.op("Mul", {g, u}, pm), WT(p + "mlp.down_proj.weight")}, pm);
            x = b.op("Add", {x, h}, pm);
        }
    }
    x = gpt2 ? layer_norm(x, "transformer.ln_f.weight", "transformer.ln_f.bias", "/final")
             : rms_norm(x, "model.norm.weight", "/final");
    // Head: (B*T, C) x (V, C)^T through Gemm, so a tied head shares the embedding table.
    const std::string head = c.tie_embeddings ? (gpt2 ? "transformer.wte.weight"
                                                      : "model.embed_tokens.weight")
                                              : "lm_head.weight";
    std::string flat = b.op("Reshape", {x, b.ints({-1, C})}, "/head");
    std::string logits2 = b.op("Gemm", {flat, W(head)}, "/head");
    b.attr("transB", int64_t(1));
    std::string out_shape =
        b.op("Concat", {ids_shape, b.ints({c.vocab_size})}, "/head");                   // [B, T, V]
    b.attr("axis", int64_t(0));
    b.op("Reshape", {logits2, out_shape}, "/head");
    b.rename_output("logits");
}

} // namespace

void export_onnx(const Transformer& model, const fs::path& out, const OnnxExportOptions& opts) {
    FORGE_CHECK(opts.opset >= 17 && opts.opset <= 21, "[export_onnx] opset must be 17..21 "
                "(17 brought LayerNormalization; later ones are untested), got ", opts.opset);
    FORGE_CHECK(!out.empty() && !out.filename().empty(), "[export_onnx] no output file given");
    const ModelConfig& c = model.config();
    GraphBuilder b;
    build_graph(b, c, model.state_dict(), opts.opset);

    bool external = opts.external_data == OnnxExternalData::always;
    if (opts.external_data == OnnxExternalData::automatic) external = b.weight_bytes() > kAutoExternal;
    FORGE_CHECK(external || b.weight_bytes() < kProtoLimit, "[export_onnx] the weights take ",
                b.weight_bytes(), " bytes, more than one protobuf file can hold (2 GiB)",
                "use OnnxExternalData::automatic or ::always to keep them in a .data file");

    std::error_code ec;
    if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
    fs::path data_path = out, tmp = out;
    data_path += ".data";
    tmp += ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        FORGE_CHECK(bool(f), "[export_onnx] cannot write '", tmp.string(), "'");
        // IR version: 8 for opsets 17-18 (ONNX 1.12-1.13), 9 for 19-20, 10 for 21.
        const int64_t ir = opts.opset <= 18 ? 8 : opts.opset <= 20 ? 9 : 10;
        Pb head;
        head.varint(pb::ir_version, uint64_t(ir))
            .bytes(pb::producer_name, "forge")
            .bytes(pb::producer_version, "0.1")
            .bytes(pb::model_doc, "Forge Transformer forward pass: input_ids (B, T) -> logits "
                                  "(B, T, vocab)");
        f.write(head.str().data(), long(head.size()));
        b.write(f, pb::graph, opts.graph_name,
                value_info("input_ids", pb::ELEM_INT64, {"batch", "sequence"}),
                value_info("logits", pb::ELEM_FLOAT,
                           {"batch", "sequence", std::to_string(c.vocab_size)}),
                external ? &data_path : nullptr);
        Pb tail;
        tail.msg(pb::opset_import,
                 Pb().bytes(pb::opset_domain, "").varint(pb::opset_version, uint64_t(opts.opset)));
        tail.msg(pb::metadata_props,
                 Pb().bytes(pb::key, "forge.config").bytes(pb::value, c.to_hf_json()));
        f.write(tail.str().data(), long(tail.size()));
        f.flush();
        FORGE_CHECK(bool(f), "[export_onnx] failed writing '", tmp.string(), "' (disk full?)");
    }
    fs::rename(tmp, out);
    if (!external) fs::remove(data_path, ec);
}

} // namespace forge::formats
