// Half-operand GEMMs through cuBLASLt: bf16 x bf16 or f16 x f16 with f32 accumulation and f32
// output (or output in the operands' type: the LM head's logits, linear_ce.cu, and linear()
// under autocast), optionally with the bias added in the GEMM's epilogue (no separate pass over
// the output; the bias has the output's type, as cuBLASLt requires). The algorithm is
// picked per problem by timing the candidates cuBLASLt's heuristic offers (kCandidates below) on
// the first call, then cached for the process: cuBLAS's default choice ran GPT-2's qkv projection
// (16384 x 768 x 2304) at 203 TFLOP/s on an H200 where the same GEMM with N = 3072 ran at 468
// (docs/PERF.md). The pick can differ between processes, so half-precision results are
// reproducible within a process, not across runs (as with PyTorch's cudnn.benchmark); exact f32
// keeps cuBLAS's fixed default (matmul.cpp).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "backends/cuda/cuda_backend.h"

namespace forge::cuda {

namespace {

// Candidates timed: kCandidates, or kCandidatesLarge for GEMMs of at least kLargeMnk
// multiply-adds, where a wider search (a few ms, once per shape) is small against the runs it
// may speed up; the heuristic's ranking is a model, not a measurement. (Session 8 measured the
// training step with it, not apart from the changes that came with it: docs/PERF.md.)
constexpr int kCandidates = 8, kCandidatesLarge = 24;
constexpr double kLargeMnk = 8.0e9;

#define FORGE_LT_CHECK(call) FORGE_CUDA_CHECK(call)

// The largest power of two (<= 256) dividing the address: cuBLASLt's heuristic assumes 256-byte
// aligned operands unless told otherwise, and an algorithm chosen for more would fault.
uint32_t alignment_of(const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    uint32_t al = 256;
    while (al > 1 && a % al != 0) al /= 2;
    return al;
}

using Key = std::array<long long, 22>;

// A problem's descriptors and the algorithm chosen for it.
struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    Plan() = default;
    Plan(const Plan&) = delete;
    Plan& operator=(const Plan&) = delete;
    ~Plan() {
        if (c) cublasLtMatrixLayoutDestroy(c);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (desc) cublasLtMatmulDescDestroy(desc);
    }
};

void set_batch(cublasLtMatrixLayout_t l, int batch, long long stride) {
    FORGE_LT_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch,
                                                    sizeof batch));
    FORGE_LT_CHECK(cublasLtMatrixLayoutSetAttribute(
        l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
}

} // namespace

bool gemm_half_lt(const HalfGemm& g, bool required) {
    Context& ctx = context(g.device);
    auto lt = cublasLtHandle_t(lt_handle(g.device));
    const uint32_t al_a = alignment_of(g.a), al_b = alignment_of(g.b), al_c = alignment_of(g.c);
    const uint32_t al_aux = g.gelu_aux ? alignment_of(g.gelu_aux) : 0;
    const Key key{g.device, g.f16,   g.op_a,    g.op_b,     g.bias != nullptr, g.m,
                  g.n,      g.k,     g.lda,     g.ldb,      g.ldc,             g.batch,
                  al_a,     al_b,    al_c,      g.stride_a, g.stride_b,        g.stride_c,
                  g.accumulate, g.half_out, al_aux, g.aux_ld};
    const float one = 1.0f, beta = g.accumulate ? 1.0f : 0.0f;
    const size_t ws = ctx.workspace_bytes;
    auto stream = cudaStream_t(ctx.stream);
    auto run_into = [&](const Plan& p, const cublasLtMatmulAlgo_t& algo, void* c) {
        if (g.bias)
            FORGE_LT_CHECK(cublasLtMatmulDescSetAttribute(
                p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof g.bias));
        if (g.gelu_aux)
            FORGE_LT_CHECK(cublasLtMatmulDescSetAttribute(
                p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.gelu_aux, sizeof g.gelu_aux));
        return cublasLtMatmul(lt, p.desc, &one, g.a, p.a, g.b, p.b, &beta, c, p.c, c, p.c, &algo,
                              ctx.workspace, ws, stream);
    };
    auto run = [&](const Plan& p, const cublasLtMatmulAlgo_t& algo) {
        return run_into(p, algo, g.c);
    };
    // Plans (descriptors and the chosen algorithm) live for the process, one per problem; the
    // lock also covers setting a plan's bias pointer and enqueueing the GEMM with it. A problem
    // cuBLASLt has no algorithm for is kept as a null plan, so an optional epilogue that is not
    // available costs one query, not one per call (a GPT-2 step that re-queried an unavailable
    // epilogue 12 times ran 2-4 ms slower on an H200, docs/PERF.md session 8).
    static std::mutex mu;
    static std::map<Key, std::unique_ptr<Plan>> plans;
    std::lock_guard lock(mu);
    if (auto it = plans.find(key); it != plans.end() && (it->second || !required)) {
        if (!it->second) return false;
        FORGE_LT_CHECK(run(*it->second, it->second->algo));
        return true;
    }

    auto plan = std::make_unique<Plan>();
    Plan& p = *plan;
    const cudaDataType_t ht = g.f16 ? CUDA_R_16F : CUDA_R_16BF;
    const auto opa = cublasOperation_t(g.op_a), opb = cublasOperation_t(g.op_b);
    FORGE_LT_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    FORGE_LT_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    FORGE_LT_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (g.bias) {
        const cublasLtEpilogue_t epi =
            g.gelu_aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_BIAS;
        FORGE_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                      sizeof epi));
        const cudaDataType_t bt = g.half_out ? ht : CUDA_R_32F; // bias typed as D
        FORGE_LT_CHECK(cublasLtMatmulDescSetAttribute(
            p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
        if (g.gelu_aux) { // aux typed as D (the default), aux_ld apart
            FORGE_LT_CHECK(cublasLtMatmulDescSetAttribute(
                p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &g.aux_ld, sizeof g.aux_ld));
            FORGE_LT_CHECK(cublasLtMatmulDescSetAttribute(
                p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.gelu_aux,
                sizeof g.gelu_aux));
        }
    }
    // Column-major: A is m x k (op N) or k x m stored (op T); B likewise k x n or n x k.
    FORGE_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, ht, opa == CUBLAS_OP_N ? g.m : g.k,
                                              opa == CUBLAS_OP_N ? g.k : g.m, g.lda));
    FORGE_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, ht, opb == CUBLAS_OP_N ? g.k : g.n,
                                              opb == CUBLAS_OP_N ? g.n : g.k, g.ldb));
    FORGE_LT_CHECK(
        cublasLtMatrixLayoutCreate(&p.c, g.half_out ? ht : CUDA_R_32F, g.m, g.n, g.ldc));
    if (g.batch > 1) {
        set_batch(p.a, g.batch, g.stride_a);
        set_batch(p.b, g.batch, g.stride_b);
        set_batch(p.c, g.batch, g.stride_c);
    }
    cublasLtMatmulPreference_t pref = nullptr;
    FORGE_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    struct PrefGuard {
        cublasLtMatmulPreference_t p;
        ~PrefGuard() { cublasLtMatmulPreferenceDestroy(p); }
    } pref_guard{pref};
    FORGE_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c}};
    for (const auto& [attr, v] : aligns)
        FORGE_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof v));

    cublasLtMatmulHeuristicResult_t found[kCandidatesLarge];
    const double mnk = double(g.m) * double(g.n) * double(g.k) * double(g.batch);
    int n_found = 0;
    FORGE_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.a, p.b, p.c, p.c, pref,
                                                  mnk >= kLargeMnk ? kCandidatesLarge
                                                                   : kCandidates,
                                                  found, &n_found));
    if (n_found == 0 && !required) {
        plans[key] = nullptr;
        return false;
    }
    FORGE_CHECK(n_found > 0, "[matmul] cuBLASLt has no algorithm for a ",
                g.f16 ? "f16" : "bf16", " GEMM of ", g.m, " x ", g.n, " x ", g.k);
    // Time each candidate (one warm-up, then 3 runs) on the real operands, in two rounds over
    // all of them, keeping each one's faster (one round let clock ramps decide between close
    // kernels); the output is overwritten by every run, the last one by the winner. An
    // accumulating GEMM runs into a scratch output of the same size and alignment (the runs
    // would add into its own).
    int best = 0;
    std::shared_ptr<Storage> scratch;
    void* timed_c = g.c;
    if (n_found > 1 && g.accumulate) {
        const size_t elem = g.half_out ? 2 : 4;
        const size_t bytes =
            size_t((g.batch - 1) * g.stride_c + (g.n - 1) * g.ldc + g.m) * elem + al_c;
        scratch = backend().allocate(bytes, Device::cuda(g.device));
        // Offset to the output's own alignment (al_c divides 256, the allocator's).
        timed_c = static_cast<char*>(scratch->data) + (al_c < 256 ? al_c : 0);
        FORGE_CUDA_CHECK(cudaMemsetAsync(scratch->data, 0, bytes, stream));
    }
    if (n_found > 1) {
        cudaEvent_t e0, e1;
        FORGE_CUDA_CHECK(cudaEventCreate(&e0));
        FORGE_CUDA_CHECK(cudaEventCreate(&e1));
        std::vector<float> fastest(size_t(n_found), -1.0f); // -1: the candidate failed to run
        for (int round = 0; round < 2; ++round)
            for (int i = 0; i < n_found; ++i) {
                if (round > 0 && fastest[size_t(i)] < 0) continue;
                if (run_into(p, found[i].algo, timed_c) != CUBLAS_STATUS_SUCCESS) continue;
                FORGE_CUDA_CHECK(cudaEventRecord(e0, stream));
                for (int r = 0; r < 3; ++r) FORGE_LT_CHECK(run_into(p, found[i].algo, timed_c));
                FORGE_CUDA_CHECK(cudaEventRecord(e1, stream));
                FORGE_CUDA_CHECK(cudaEventSynchronize(e1));
                float ms = 0;
                FORGE_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
                float& f = fastest[size_t(i)];
                f = f < 0 ? ms : std::min(f, ms);
            }
        for (int i = 0; i < n_found; ++i)
            if (fastest[size_t(i)] >= 0 && (fastest[size_t(best)] < 0 ||
                                            fastest[size_t(i)] < fastest[size_t(best)]))
                best = i;
        cudaEventDestroy(e0);
        cudaEventDestroy(e1);
    }
    p.algo = found[best].algo;
    FORGE_LT_CHECK(run(p, p.algo));
    plans[key] = std::move(plan);
    return true;
}

} // namespace forge::cuda
