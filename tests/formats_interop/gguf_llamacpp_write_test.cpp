// llama.cpp writes, Forge reads (label slow): the other direction of gguf_llamacpp_test.cpp.
// Forge's F32 GGUF of each small model is rewritten per type by tools/llamacpp/llamacpp_write.py,
// which drives llama.cpp's own Python GGUF library (gguf-py: GGUFReader, the numpy quantizers
// convert_hf_to_gguf.py uses, GGUFWriter) from the llama.cpp source bundle node-llama-cpp ships,
// cloned once into the build tree. On each file written that way:
//   - Forge's greedy tokens equal llama.cpp's (greedy.mjs) on the same file, and llama.cpp's
//     tokenization of the prompt equals that of the tokenizer Forge reads from it;
//   - every key/value equals Forge's source file's (general.file_type: Forge's llama_ftype);
//   - every tensor's bytes equal what Forge's quantizer (quant::quantize_row) makes of the same
//     f32 weights: gguf-py's numpy quantizers round as ggml's *_ref functions, and so do Forge's;
//   - a truncated copy is an InvalidArgument naming the file and byte, never a crash.
// gguf-py has no K-quant quantizers, so Q4_K files come from llama-quantize: with LLAMA_QUANTIZE
// set to that binary, its --pure Q8_0/Q4_0/Q4_K files are checked the same way (CI leaves it
// unset). Skips without node/npm (as gguf_llamacpp_test.cpp), git, or a python3 with numpy and
// PyYAML (gguf-py's imports).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <forge/core/error.h>
#include <forge/formats/gguf.h>
#include <forge/formats/gguf_model.h>
#include <forge/infer/quant_lm.h>
#include <forge/quant/ggml_types.h>

#include "formats_interop/llamacpp_interop.h"

using namespace forge;
using namespace forge::formats;
using namespace forge::interop;
using quant::GgmlType;

namespace {

const fs::path kBundle = kTool / "node_modules/node-llama-cpp/llama/gitRelease.bundle";

std::string tname(GgmlType t) {
    return std::string(quant::type_info(t).name);
}

std::string sh_quote(const fs::path& p) {
    return "'" + p.string() + "'";
}

// A python3 that imports numpy and yaml: $FORGE_PYTHON, python3, or Debian's /usr/bin/python3
// (a pyenv python3 first in PATH may lack Debian's python3-numpy); "" when none does.
std::string find_python() {
    std::vector<std::string> candidates;
    if (const char* e = std::getenv("FORGE_PYTHON"); e && *e)
        candidates.push_back(e);
    candidates.push_back("python3");
    candidates.push_back("/usr/bin/python3");
    for (const std::string& py : candidates) {
        int rc = 0;
        run("'" + py + "' -c 'import numpy, yaml' >/dev/null 2>&1", &rc);
        if (rc == 0)
            return py;
    }
    return "";
}

// llama.cpp's gguf-py folder, cloned (gguf-py only) from node-llama-cpp's bundle into the build
// tree once per node-llama-cpp version; "" when done, else why it cannot be. A failing clone of
// a present bundle throws.
std::string ensure_gguf_py(fs::path* gguf_py) {
    if (!fs::exists(kBundle))
        return "node-llama-cpp has no llama.cpp source at " + kBundle.string();
    std::ifstream pkg(kTool / "node_modules/node-llama-cpp/package.json");
    const std::string version = nlohmann::json::parse(pkg).value("version", "unknown");
    const fs::path tree = kWork / ("llama.cpp-" + version);
    *gguf_py = tree / "gguf-py";
    if (fs::exists(*gguf_py / "gguf/__init__.py"))
        return "";
    int rc = 0;
    run("git --version >/dev/null 2>&1", &rc);
    if (rc != 0)
        return "git is not installed";
    const fs::path tmp = tree.string() + ".tmp";
    fs::remove_all(tmp);
    const std::string log =
        run("git clone --quiet --no-checkout " + sh_quote(kBundle) + " " + sh_quote(tmp) +
                " 2>&1 && git -C " + sh_quote(tmp) + " checkout --quiet HEAD -- gguf-py 2>&1",
            &rc);
    if (rc != 0 || !fs::exists(tmp / "gguf-py/gguf/__init__.py"))
        throw std::runtime_error("cloning " + kBundle.string() + " failed:\n" + log);
    fs::remove_all(tree);
    fs::rename(tmp, tree);
    return "";
}

bool same_value(const GgufValue& a, const GgufValue& b) {
    if (a.type != b.type)
        return false;
    if (a.type != GgufType::array)
        return a.v == b.v;
    const GgufArray &x = a.as_array(), &y = b.as_array();
    if (x.elem != y.elem || x.items.size() != y.items.size())
        return false;
    for (size_t i = 0; i < x.items.size(); ++i)
        if (!same_value(x.items[i], y.items[i]))
            return false;
    return true;
}

// The greedy continuation by Forge's inference engine (QuantLM::from_gguf, what `forge generate`
// runs on a .gguf: weights as stored, activations quantized for the quantized types, as
// llama.cpp does), cut before `eos`.
std::vector<int64_t> engine_greedy(const fs::path& p, const std::vector<int64_t>& prompt,
                                   std::optional<TokenId> eos) {
    auto lm = infer::QuantLM::from_gguf(p, {.n_threads = 1});
    auto st = lm->new_state(int64_t(prompt.size()) + kTokens);
    std::vector<TokenId> ids(prompt.begin(), prompt.end());
    std::vector<float> logits;
    std::vector<int64_t> out;
    for (int i = 0; i < kTokens; ++i) {
        lm->eval(*st, ids, logits);
        const TokenId best =
            TokenId(std::max_element(logits.begin(), logits.end()) - logits.begin());
        if (eos && best == *eos)
            break;
        out.push_back(best);
        ids = {best};
    }
    return out;
}

class LlamaCppWrittenBase : public ::testing::Test {
  protected:
    // Every key of Forge's file, with its type and value, in llama.cpp's (and nothing else);
    // general.file_type is the llama_ftype Forge gives `type`.
    static void expect_same_metadata(const GgufFile& forge, const GgufFile& ll, GgmlType type) {
        for (const auto& [k, v] : forge.metadata()) {
            const GgufValue* w = ll.find(k);
            if (!w) {
                ADD_FAILURE() << "llama.cpp's file has no key " << k;
                continue;
            }
            if (k == "general.file_type")
                EXPECT_EQ(w->as_uint(), gguf_file_type(type)) << "general.file_type";
            else
                EXPECT_TRUE(same_value(v, *w)) << "key " << k << " changed";
        }
        EXPECT_EQ(ll.metadata().size(), forge.metadata().size());
    }

    // Each tensor of llama.cpp's file: F32 where llama.cpp keeps it so (1-D tensors and
    // position embeddings), `type` elsewhere, and byte for byte what Forge's quantizer makes
    // of the f32 weights in Forge's file.
    static void expect_forge_quantizer_bytes(const GgufFile& forge, const GgufFile& ll,
                                             GgmlType type) {
        ASSERT_EQ(ll.tensors().size(), forge.tensors().size());
        for (const GgufTensorInfo& t : ll.tensors()) {
            const GgufTensorInfo* s = forge.find_tensor(t.name);
            ASSERT_TRUE(s) << "llama.cpp's file has a tensor Forge's has not: " << t.name;
            ASSERT_EQ(s->type, GgmlType::f32) << t.name;
            ASSERT_EQ(s->ne, t.ne) << t.name;
            const bool keep_f32 = t.ne.size() < 2 || t.name == "position_embd.weight";
            EXPECT_EQ(tname(t.type), tname(keep_f32 ? GgmlType::f32 : type)) << t.name;
            const int64_t ne0 = t.ne[0], rows = t.numel() / ne0;
            const int64_t rb = quant::row_bytes(t.type, ne0);
            std::vector<float> x(static_cast<size_t>(ne0));
            std::vector<uint8_t> mine(static_cast<size_t>(rb));
            int64_t differ = 0;
            for (int64_t r = 0; r < rows; ++r) {
                std::memcpy(x.data(), s->data + r * ne0 * 4, size_t(ne0) * 4);
                quant::quantize_row(t.type, x.data(), mine.data(), ne0);
                differ += std::memcmp(mine.data(), t.data + r * rb, size_t(rb)) != 0;
            }
            EXPECT_EQ(differ, 0) << t.name << ": " << differ << " of " << rows << " "
                                 << tname(t.type) << " rows differ from Forge's quantizer";
        }
    }

    // Forge loads `p`; llama.cpp decodes from the text prompt. Its prompt ids must equal
    // Forge's tokenizer's, and its greedy tokens (from those ids) those of Forge's reference
    // (load_gguf_model: weights dequantized, f32 Transformer) and of Forge's engine
    // (QuantLM::from_gguf). F32 files must agree exactly; other types may part only at a
    // rounding tie (kRoundingTie).
    static void expect_same_tokens(const fs::path& p, const std::string& label, bool exact) {
        LoadedModel back = load_gguf_model(p);
        ASSERT_TRUE(back.tokenizer);
        const std::vector<TokenId> enc = back.tokenizer->encode(kPromptText);
        const std::vector<int64_t> prompt(enc.begin(), enc.end());
        const LlamaCpp ll = llamacpp_greedy(p, "--text", kPromptText);
        EXPECT_EQ(ll.prompt, prompt) << "llama.cpp tokenizes the prompt differently";
        const auto eos = back.tokenizer->eos_id();
        ASSERT_TRUE(eos);
        const std::vector<int64_t> want = forge_expected(back, ll.prompt);
        const std::vector<int64_t> eng = engine_greedy(p, ll.prompt, eos);
        for (const auto& [who, ours] : {std::pair{"forge", want}, std::pair{"forge engine", eng}}) {
            const auto part = parting(*back.model, ll.prompt, ours, ll.tokens, *eos);
            std::cout << "[interop] " << label << ": llama.cpp " << join(ll.tokens)
                      << (part ? " != " : " == ") << who << " " << join(ours);
            if (part)
                std::cout << " (from token " << part->at << ": the reference's logit for "
                          << part->ours << " minus that for llama.cpp's " << part->theirs << " is "
                          << part->margin << ")";
            std::cout << "\n";
            if (!part)
                continue;
            if (exact)
                ADD_FAILURE() << who << " and llama.cpp part at token " << part->at;
            else
                EXPECT_LE(std::fabs(part->margin), kRoundingTie)
                    << who << " and llama.cpp part at token " << part->at
                    << " where the reference's logits are not tied";
        }
    }

    // Forge's F32 file of `m`, the source of every rewrite.
    static fs::path forge_f32(const InteropModel& m, const std::string& tag) {
        fs::create_directories(kWork);
        const fs::path p = kWork / ("forge-" + tag + "-F32.gguf");
        save_gguf(*m.model, &m.tok, p, GgmlType::f32, "forge-interop-" + tag);
        return p;
    }
};

class GgufLlamaCppWrites : public LlamaCppWrittenBase {
  protected:
    void SetUp() override {
        std::string why = ensure_llamacpp();
        if (!why.empty())
            GTEST_SKIP() << "llama.cpp (node-llama-cpp) unavailable: " << why;
        fs::create_directories(kWork);
        python_ = find_python();
        if (python_.empty())
            GTEST_SKIP() << "no python3 with numpy and PyYAML for llama.cpp's gguf-py "
                            "(Debian: python3-numpy python3-yaml; scripts/setup.sh installs them)";
        why = ensure_gguf_py(&gguf_py_);
        if (!why.empty())
            GTEST_SKIP() << "llama.cpp's gguf-py unavailable: " << why;
    }

    // `in` rewritten as `type` by llama.cpp's gguf-py (tools/llamacpp/llamacpp_write.py).
    fs::path llamacpp_write(const fs::path& in, const std::string& tag, GgmlType type) const {
        const fs::path out = kWork / ("llamacpp-" + tag + "-" + tname(type) + ".gguf");
        int rc = 0;
        const std::string log =
            run(sh_quote(python_) + " " + sh_quote(kTool / "llamacpp_write.py") + " --gguf-py " +
                    sh_quote(gguf_py_) + " " + sh_quote(in) + " " + sh_quote(out) + " " +
                    tname(type) + " 2>&1",
                &rc);
        if (rc != 0)
            throw std::runtime_error("llamacpp_write.py failed:\n" + log);
        return out;
    }

    // Each type gguf-py quantizes and Forge reads, through llama.cpp's writer.
    void check(const InteropModel& m, const std::string& tag) {
        const fs::path src = forge_f32(m, tag);
        const GgufFile forge = GgufFile::open(src);
        for (GgmlType type : {GgmlType::f32, GgmlType::f16, GgmlType::bf16, GgmlType::q8_0,
                              GgmlType::q4_0, GgmlType::q4_1}) {
            const std::string label = tag + " " + tname(type) + " (gguf-py)";
            SCOPED_TRACE(label);
            const fs::path p = llamacpp_write(src, tag, type);
            {
                const GgufFile ll = GgufFile::open(p);
                expect_same_metadata(forge, ll, type);
                expect_forge_quantizer_bytes(forge, ll, type);
            }
            expect_same_tokens(p, label, /*exact=*/type == GgmlType::f32);
        }
    }

    std::string python_;
    fs::path gguf_py_;
};

class GgufLlamaQuantize : public LlamaCppWrittenBase {
  protected:
    void SetUp() override {
        const char* q = std::getenv("LLAMA_QUANTIZE");
        if (!q || !*q)
            GTEST_SKIP() << "LLAMA_QUANTIZE (a llama-quantize binary) is not set";
        quantize_ = q;
        const std::string why = ensure_llamacpp();
        if (!why.empty())
            GTEST_SKIP() << "llama.cpp (node-llama-cpp) unavailable: " << why;
    }

    void check(const InteropModel& m, const std::string& tag, std::vector<GgmlType> types) {
        const fs::path src = forge_f32(m, tag);
        const GgufFile forge = GgufFile::open(src);
        for (GgmlType type : types) {
            const std::string label = tag + " " + tname(type) + " (llama-quantize --pure)";
            SCOPED_TRACE(label);
            const fs::path p = kWork / ("llama-quantize-" + tag + "-" + tname(type) + ".gguf");
            // llama-quantize's "Q4_K" means Q4_K_M; with --pure both write every matrix as
            // Q4_K, and Q4_K_S is the general.file_type Forge gives Q4_K files.
            const std::string arg = type == GgmlType::q4_k ? "Q4_K_S" : tname(type);
            int rc = 0;
            const std::string log = run(sh_quote(quantize_) + " --pure " + sh_quote(src) + " " +
                                            sh_quote(p) + " " + arg + " 2>&1",
                                        &rc);
            ASSERT_EQ(rc, 0) << log;
            {
                const GgufFile ll = GgufFile::open(p);
                expect_same_metadata(forge, ll, type);
                expect_forge_quantizer_bytes(forge, ll, type);
            }
            expect_same_tokens(p, label, /*exact=*/false);
        }
    }

    std::string quantize_;
};

} // namespace

TEST_F(GgufLlamaCppWrites, Llama) {
    check(llama_model(), "llama");
}

TEST_F(GgufLlamaCppWrites, Gpt2) {
    check(gpt2_model(), "gpt2");
}

TEST_F(GgufLlamaCppWrites, TruncatedFileIsAClearError) {
    const fs::path p =
        llamacpp_write(forge_f32(gpt2_model(), "gpt2-cut"), "gpt2-cut", GgmlType::q4_0);
    std::ifstream in(p, std::ios::binary);
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
    // gguf-py pads only the last tensor's end to the alignment: every byte before the last
    // `alignment` is needed, so any shorter file must be refused.
    const size_t needed = bytes.size() - GgufFile::parse(bytes).alignment();
    std::vector<size_t> cuts;
    for (size_t n = 0; n < std::min<size_t>(needed, 8192); ++n)
        cuts.push_back(n);
    if (needed > 8192)
        for (size_t k = 0; k <= 512; ++k)
            cuts.push_back(8192 + (needed - 1 - 8192) * k / 512);
    for (size_t n : cuts) {
        try {
            GgufFile::parse(std::span<const uint8_t>(bytes.data(), n), "cut");
            ADD_FAILURE() << "llama.cpp's file cut to " << n << " bytes parsed";
        } catch (const InvalidArgument& e) {
            ASSERT_NE(std::string(e.what()).find("cut: at byte"), std::string::npos) << e.what();
        }
    }
    // The loader on a truncated file on disk: the error names the file.
    const fs::path cut = kWork / "llamacpp-truncated.gguf";
    for (size_t n : {size_t(100), needed / 2, needed - 1}) {
        std::ofstream(cut, std::ios::binary | std::ios::trunc)
            .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(n));
        try {
            load_gguf_model(cut);
            ADD_FAILURE() << "the loader read llama.cpp's file cut to " << n << " bytes";
        } catch (const InvalidArgument& e) {
            EXPECT_NE(std::string(e.what()).find(cut.string() + ": at byte"), std::string::npos)
                << e.what();
        }
    }
}

TEST_F(GgufLlamaQuantize, Llama) {
    check(llama_model(), "llama", {GgmlType::q8_0, GgmlType::q4_0, GgmlType::q4_k});
}

// GPT-2's rows of 128 are not whole Q4_K super-blocks (llama-quantize would fall back to Q5_0,
// a type Forge does not read): Q8_0 and Q4_0 only.
TEST_F(GgufLlamaQuantize, Gpt2) {
    check(gpt2_model(), "gpt2", {GgmlType::q8_0, GgmlType::q4_0});
}
