// export_onnx (include/forge/formats/onnx_export.h): builds the forward graph of a Transformer
// node by node with libonnx's generated protos (onnx-ml.pb.h), checks it with
// onnx::checker and writes it. The graph follows src/models/transformer.cpp op for op; the
// comments give each intermediate's shape with B = batch, T = sequence (both dynamic).
#include <forge/formats/onnx_export.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>

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

// The graph under construction: nodes with generated names, initializers, and the bytes of
// the weights (kept as Tensors until we know whether they go inside the file or beside it).
class GraphBuilder {
  public:
    explicit GraphBuilder(onnx::GraphProto* g) : g_(g) {}

    // One node with one output; returns the output's name ("<prefix>/<op>_<n>").
    std::string op(const std::string& type, const std::vector<std::string>& inputs,
                   const std::string& prefix = "") {
        return op_n(type, inputs, 1, prefix)[0];
    }
    std::vector<std::string> op_n(const std::string& type, const std::vector<std::string>& inputs,
                                  int n_out, const std::string& prefix = "") {
        last_ = g_->add_node();
        last_->set_op_type(type);
        const std::string base = prefix + "/" + type + "_" + std::to_string(counter_++);
        last_->set_name(base);
        for (const auto& in : inputs)
            last_->add_input(in);
        std::vector<std::string> outs;
        for (int i = 0; i < n_out; ++i) {
            outs.push_back(base + (n_out > 1 ? ":" + std::to_string(i) : ""));
            last_->add_output(outs.back());
        }
        return outs;
    }
    // Attributes of the node op() just made.
    GraphBuilder& attr(const std::string& name, int64_t v) {
        auto* a = new_attr(name, onnx::AttributeProto::INT);
        a->set_i(v);
        return *this;
    }
    GraphBuilder& attr(const std::string& name, float v) {
        auto* a = new_attr(name, onnx::AttributeProto::FLOAT);
        a->set_f(v);
        return *this;
    }
    GraphBuilder& attr(const std::string& name, const std::vector<int64_t>& v) {
        auto* a = new_attr(name, onnx::AttributeProto::INTS);
        for (int64_t x : v)
            a->add_ints(x);
        return *this;
    }
    // The op's output is renamed (for the graph's output).
    void rename_output(const std::string& name) { last_->set_output(0, name); }

    // Small constants (shapes, scalars): int64 or float initializers inside the file.
    std::string ints(const std::vector<int64_t>& v, bool scalar = false) {
        auto* t = g_->add_initializer();
        t->set_name("const_" + std::to_string(counter_++));
        t->set_data_type(onnx::TensorProto::INT64);
        if (!scalar) t->add_dims(int64_t(v.size()));
        for (int64_t x : v)
            t->add_int64_data(x);
        return t->name();
    }
    std::string scalar_f(float v) {
        auto* t = g_->add_initializer();
        t->set_name("const_" + std::to_string(counter_++));
        t->set_data_type(onnx::TensorProto::FLOAT);
        t->add_float_data(v);
        return t->name();
    }

    // A weight: float32, row-major, stored as raw_data or as external data later.
    std::string weight(const std::string& name, const Tensor& t) {
        if (weights_.count(name)) return name;
        Tensor c = t.detach().to(Device::cpu()).to(DType::f32).contiguous();
        auto* p = g_->add_initializer();
        p->set_name(name);
        p->set_data_type(onnx::TensorProto::FLOAT);
        for (int64_t d : c.shape())
            p->add_dims(d);
        weights_.emplace(name, c);
        weight_bytes_ += c.nbytes();
        return name;
    }
    uint64_t weight_bytes() const { return weight_bytes_; }

    // Fills the weights' bytes in: inside each TensorProto, or appended to `data_path`
    // (64-byte aligned offsets) with the proto pointing there by relative file name.
    void place_weights(const fs::path* data_path) {
        std::ofstream data;
        if (data_path) {
            data.open(*data_path, std::ios::binary | std::ios::trunc);
            FORGE_CHECK(bool(data), "[export_onnx] cannot write '", data_path->string(), "'");
        }
        uint64_t offset = 0;
        for (auto& t : *g_->mutable_initializer()) {
            auto it = weights_.find(t.name());
            if (it == weights_.end()) continue;
            const Tensor& w = it->second;
            const char* bytes = static_cast<const char*>(w.data_ptr());
            if (!data_path) {
                t.set_raw_data(bytes, w.nbytes());
                continue;
            }
            const uint64_t pad = (64 - offset % 64) % 64;
            static const char zeros[64] = {};
            data.write(zeros, long(pad));
            offset += pad;
            data.write(bytes, long(w.nbytes()));
            t.set_data_location(onnx::TensorProto::EXTERNAL);
            auto add = [&](const char* k, const std::string& v) {
                auto* e = t.add_external_data();
                e->set_key(k);
                e->set_value(v);
            };
            add("location", data_path->filename().string());
            add("offset", std::to_string(offset));
            add("length", std::to_string(w.nbytes()));
            offset += w.nbytes();
        }
        if (data_path) {
            data.flush();
            FORGE_CHECK(bool(data), "[export_onnx] failed writing '", data_path->string(),
                        "' (disk full?)");
        }
    }

  private:
    onnx::AttributeProto* new_attr(const std::string& name, onnx::AttributeProto::AttributeType t) {
        auto* a = last_->add_attribute();
        a->set_name(name);
        a->set_type(t);
        return a;
    }
    onnx::GraphProto* g_;
    onnx::NodeProto* last_ = nullptr;
    int64_t counter_ = 0;
    std::map<std::string, Tensor> weights_;
    uint64_t weight_bytes_ = 0;
};

void set_tensor_type(onnx::ValueInfoProto* v, const std::string& name, int elem_type,
                     const std::vector<std::string>& dims) {
    v->set_name(name);
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(elem_type);
    for (const auto& d : dims) {
        auto* dim = tt->mutable_shape()->add_dim();
        if (!d.empty() && std::isdigit(static_cast<unsigned char>(d[0])))
            dim->set_dim_value(std::stoll(d));
        else
            dim->set_dim_param(d);
    }
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
    FORGE_CHECK(opts.opset >= 17, "[export_onnx] opset must be >= 17 (LayerNormalization), got ",
                opts.opset);
    FORGE_CHECK(opts.opset <= onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map().at(onnx::ONNX_DOMAIN).second,
                "[export_onnx] opset ", opts.opset, " is newer than this libonnx knows");
    FORGE_CHECK(!out.empty() && !out.filename().empty(), "[export_onnx] no output file given");
    const ModelConfig& c = model.config();

    onnx::ModelProto m;
    m.set_ir_version(onnx::IR_VERSION);
    m.set_producer_name("forge");
    m.set_producer_version("0.1");
    m.set_doc_string("Forge Transformer forward pass: input_ids (B, T) -> logits (B, T, vocab)");
    auto* opset = m.add_opset_import();
    opset->set_domain("");
    opset->set_version(opts.opset);
    auto* meta = m.add_metadata_props();
    meta->set_key("forge.config");
    meta->set_value(c.to_hf_json());

    onnx::GraphProto* g = m.mutable_graph();
    g->set_name(opts.graph_name);
    set_tensor_type(g->add_input(), "input_ids", onnx::TensorProto::INT64, {"batch", "sequence"});
    set_tensor_type(g->add_output(), "logits", onnx::TensorProto::FLOAT,
                    {"batch", "sequence", std::to_string(c.vocab_size)});
    GraphBuilder b(g);
    build_graph(b, c, model.state_dict(), opts.opset);

    bool external = opts.external_data == OnnxExternalData::always;
    if (opts.external_data == OnnxExternalData::automatic) external = b.weight_bytes() > kAutoExternal;
    FORGE_CHECK(external || b.weight_bytes() < kProtoLimit, "[export_onnx] the weights take ",
                b.weight_bytes(), " bytes, more than one protobuf file can hold (2 GiB)",
                "use OnnxExternalData::automatic or ::always to keep them in a .data file");

    std::error_code ec;
    if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
    fs::path data_path = out;
    data_path += ".data";
    b.place_weights(external ? &data_path : nullptr);

    fs::path tmp = out;
    tmp += ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        FORGE_CHECK(bool(f), "[export_onnx] cannot write '", tmp.string(), "'");
        FORGE_CHECK(m.SerializeToOstream(&f), "[export_onnx] failed serializing to '",
                    tmp.string(), "' (disk full?)");
    }
    fs::rename(tmp, out);
    if (!external) fs::remove(data_path, ec);
    if (opts.check) {
        try {
            onnx::checker::check_model(out.string()); // reads the file back, external data too
        } catch (const std::exception& e) {
            throw InternalError(std::string("[export_onnx] the ONNX checker rejects the exported "
                                            "model (a bug in the exporter; report it): ") +
                                e.what());
        }
    }
}

} // namespace forge::formats
