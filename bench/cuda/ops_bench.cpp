// CUDA kernel and training-step figures, one line each: time per call, then GB/s or TFLOP/s.
// Shapes are GPT-2 124M's (C = 768, V = 50257, T = 1024, 12 heads of 64). The ceilings (device
// copy GB/s, cuBLAS TF32 TFLOP/s) are measured in the same run. Run on the GPU machine through
// bench/cuda/bench_ops.sh. Usage: cuda_bench [kernels|attn|gemm|lmce|train B T f32|tf32|bf16]...
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include <forge/autograd/autograd.h>
#include <forge/core/device.h>
#include <forge/core/ops.h>
#include <forge/models/transformer.h>
#include <forge/train/optimizer.h>

#include "backends/cuda/cuda_backend.h" // set_attention_tc_warps, _fwd_config, _bwd_config

using namespace forge;

namespace {

const Device kCuda = Device::cuda(0);

// Warm up 3 calls, then the mean over enough calls for ~0.5 s (at least 3).
double time_ms(const std::function<void()>& f, double budget_ms = 500) {
    for (int i = 0; i < 3; ++i)
        f();
    cuda::synchronize();
    int n = 0;
    double el = 0;
    const auto t0 = std::chrono::steady_clock::now();
    do {
        f();
        ++n;
        cuda::synchronize();
        el = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                 .count();
    } while ((el < budget_ms || n < 3) && n < 2000);
    return el / n;
}

void report(const std::string& name, double ms, double bytes, double flops) {
    std::printf("%-52s %9.3f ms", name.c_str(), ms);
    if (bytes > 0) std::printf("  %8.1f GB/s", bytes / ms / 1e6);
    if (flops > 0) std::printf("  %8.1f TFLOP/s", flops / ms / 1e9);
    std::printf("\n");
    std::fflush(stdout);
}

Tensor randn(const Shape& s, uint64_t seed) {
    return Tensor::randn(s, seed, DType::f32, 0.0, 1.0, kCuda);
}

void kernels() {
    NoGradGuard ng;
    const double f4 = 4.0;
    {
        const int64_t n = int64_t(1) << 28; // 1 GiB of f32
        Tensor a = randn({n}, 1), b = Tensor::empty({n}, DType::f32, kCuda);
        report("ceiling: device copy 1 GiB (read + write)", time_ms([&] { b.copy_(a); }),
               2.0 * f4 * double(n), 0);
        Tensor h = Tensor::randn({n / 4}, 2);
        report("host -> device 256 MiB (pinned staging)",
               time_ms([&] { (void)h.to(kCuda); }), f4 * double(n / 4), 0);
        Tensor d = randn({n / 4}, 3);
        report("device -> host 256 MiB (pinned staging)",
               time_ms([&] { (void)d.to(Device::cpu()); }), f4 * double(n / 4), 0);
    }
    {
        const int64_t M = 8192, K = 768, N = 3072;
        Tensor a = randn({M, K}, 1), w = randn({K, N}, 2);
        const double fl = 2.0 * double(M) * double(K) * double(N);
        report("matmul f32 8192x768 @ 768x3072 (exact f32)", time_ms([&] { (void)matmul(a, w); }),
               0, fl);
        cuda::set_allow_tf32(true);
        report("matmul f32 8192x768 @ 768x3072 (TF32)", time_ms([&] { (void)matmul(a, w); }), 0,
               fl);
        Tensor a2 = randn({8192, 8192}, 3), b2 = randn({8192, 8192}, 4);
        report("ceiling: cuBLAS TF32 8192^3", time_ms([&] { (void)matmul(a2, b2); }), 0,
               2.0 * 8192.0 * 8192.0 * 8192.0);
        cuda::set_allow_tf32(false);
    }
    {
        const int64_t R = 16384, C = 768;
        Tensor x = randn({R, C}, 1), w = randn({C}, 2), b = randn({C}, 3);
        const double rc = double(R) * double(C) * f4;
        report("layer_norm fwd 16384x768", time_ms([&] { (void)layer_norm(x, w, b); }), 2 * rc, 0);
        report("rms_norm fwd 16384x768", time_ms([&] { (void)rms_norm(x, w); }), 2 * rc, 0);
        Tensor h = randn({R, 3072}, 4);
        report("gelu fwd 16384x3072", time_ms([&] { (void)gelu(h); }), 2.0 * 4 * rc, 0);
        // linear()'s fused epilogue at the MLP's width: reads x (and b), writes out; the
        // backward reads dy and z, writes dx (db's partial sums are noise next to that).
        Backend& be = cuda::backend();
        Tensor hb = randn({3072}, 6), hout = Tensor::empty({R, 3072}, DType::f32, kCuda);
        Tensor hdy = randn({R, 3072}, 7), hdb = Tensor::empty({3072}, DType::f32, kCuda);
        report("bias_act gelu fwd 16384x3072", time_ms([&] { be.bias_act(h, hb, true, hout); }),
               2.0 * 4 * rc, 0);
        report("bias_act_backward gelu 16384x3072",
               time_ms([&] { be.bias_act_backward(hdy, h, hb, true, hout, hdb); }), 3.0 * 4 * rc,
               0);
        Tensor xdy = randn({R, C}, 8), xdb = Tensor::empty({C}, DType::f32, kCuda);
        report("bias_act_backward 16384x768 (db only)",
               time_ms([&] { be.bias_act_backward(xdy, xdy, b, false, xdy, xdb); }), rc, 0);
        report("add 16384x768 + 16384x768", time_ms([&] { (void)add(x, x); }), 3 * rc, 0);
        report("add 16384x768 + (768) broadcast", time_ms([&] { (void)add(x, b); }), 2 * rc, 0);
        report("sum over rows 16384x768 -> 768", time_ms([&] { (void)sum(x, {0}); }), rc, 0);
        Tensor s = randn({R, 1024}, 5);
        report("softmax 16384x1024", time_ms([&] { (void)softmax(s); }),
               2.0 * double(R) * 1024 * f4, 0);
    }
    {
        const int64_t N = 8192, V = 50257;
        Tensor lg = randn({N, V}, 1);
        Tensor tg = Tensor::rand({N}, 2, DType::f64, 0, double(V)).to(DType::i64).to(kCuda);
        const double nv = double(N) * double(V) * f4;
        report("cross_entropy fwd 8192x50257", time_ms([&] { (void)cross_entropy(lg, tg); }), nv,
               0);
        {
            Tensor leaf = lg.detach();
            leaf.set_requires_grad(true);
            set_grad_enabled(true);
            report("cross_entropy fwd+bwd 8192x50257", time_ms([&] {
                       Tensor l = cross_entropy(leaf, tg);
                       l.backward();
                       leaf.zero_grad();
                   }),
                   3 * nv, 0);
            set_grad_enabled(false);
        }
    }
    {
        const int64_t B = 8, H = 12, T = 1024, D = 64;
        Tensor q = randn({B, H, T, D}, 1), k = randn({B, H, T, D}, 2), v = randn({B, H, T, D}, 3);
        const double fl = 4.0 * double(B * H) * double(T) * double(T) * double(D) / 2; // causal
        report("attention fwd causal B8 H12 T1024 D64 (f32 cores)",
               time_ms([&] { (void)attention(q, k, v); }), 0, fl);
        Tensor ql = q.detach(), kl = k.detach(), vl = v.detach();
        ql.set_requires_grad(true);
        kl.set_requires_grad(true);
        vl.set_requires_grad(true);
        set_grad_enabled(true);
        report("attention fwd+bwd causal B8 H12 T1024 D64", time_ms([&] {
                   Tensor o = attention(ql, kl, vl);
                   o.backward(o.detach());
                   ql.zero_grad();
                   kl.zero_grad();
                   vl.zero_grad();
               }),
               0, 3.5 * fl);
        set_grad_enabled(false);
    }
    {
        // AdamW over 124M f32 parameters in 12 tensors: reads w, g, m, v; writes w, m, v.
        std::vector<ParamRef> ps;
        for (int i = 0; i < 12; ++i) {
            Tensor p = randn({10340000}, uint64_t(10 + i));
            p.set_requires_grad(true);
            p.set_grad(randn(p.shape(), uint64_t(100 + i)));
            ps.push_back({"p" + std::to_string(i), p, true});
        }
        AdamW opt(ps, {.weight_decay = 0.1});
        report("adamw fused, 124M f32 params", time_ms([&] { opt.step(1e-4); }),
               7.0 * f4 * 12 * 10340000.0, 0);
    }
}

// Flash attention, causal, forward and forward+backward through the op (autograd included),
// at T = 1024..8192 with B * T fixed (8 x 1024 tokens per head), head dims 64 and 128, 12 heads,
// as bench/cuda/torch_attn.py times PyTorch's flash SDPA (its peer). Main figures ("bf16"): bf16
// (B, H, T, D) tensors in and out under bf16 autocast, the gradient in bf16, at the default block
// kernels; then each forward kernel and block shape for bf16 tensors ("fwd cfg N": 1 mma.sync,
// 2..4 wgmma; cuda_backend.h), each backward ("bwd 4w" / "8w" mma.sync, "bwd cfg N" wgmma), the
// kernel alone without the op around it, the training step's path ("bf16 packed":
// attention_packed on a bf16 (B, T, 3 H D) qkv, read in place), and f32 tensors rounded inside
// ("f32 tc"). FLOPs: 4 B H T^2 D / 2 forward, 2.5x that backward (FlashAttention's count).
void attn() {
    // ms per figure (a mean over the calls that fit); FORGE_BENCH_BUDGET_MS shortens a run.
    const char* budget_env = std::getenv("FORGE_BENCH_BUDGET_MS");
    const double kBudget = budget_env ? std::max(20.0, std::atof(budget_env)) : 300;
    Backend& be = cuda::backend();
    for (int64_t D : {64, 128})
        for (int64_t T : {1024, 2048, 4096, 8192}) {
            const int64_t B = 8 * 1024 / T, H = 12;
            const double fl = 4.0 * double(B * H) * double(T) * double(T) * double(D) / 2;
            const std::string shape = " B" + std::to_string(B) + " H12 T" + std::to_string(T) +
                                      " D" + std::to_string(D);
            // fwd and fwd+bwd of attention(q, k, v) on leaves q, k, v.
            auto fwd_bwd = [&](const std::string& name, Tensor& q, Tensor& k, Tensor& v,
                               bool with_bwd) {
                {
                    NoGradGuard ng;
                    report("attention fwd " + name + shape,
                           time_ms([&] { (void)attention(q, k, v, {.causal = true}); }, kBudget),
                           0, fl);
                }
                if (!with_bwd) return;
                report("attention fwd+bwd " + name + shape, time_ms([&] {
                           Tensor o = attention(q, k, v, {.causal = true});
                           o.backward(o.detach());
                           q.zero_grad();
                           k.zero_grad();
                           v.zero_grad();
                       }, kBudget),
                       0, 3.5 * fl);
            };
            auto leaf = [&](uint64_t seed, DType dt) {
                Tensor t = randn({B, H, T, D}, seed).to(dt);
                t.set_requires_grad(true);
                return t;
            };
            {
                const cuda::PrecisionScope bf16("bf16");
                Tensor q = leaf(1, DType::bf16), k = leaf(2, DType::bf16), v = leaf(3, DType::bf16);
                fwd_bwd("bf16", q, k, v, true);
                for (int config = 1; config <= 4; ++config) {
                    cuda::set_attention_tc_fwd_config(config);
                    fwd_bwd("bf16 fwd cfg " + std::to_string(config), q, k, v, false);
                }
                cuda::set_attention_tc_fwd_config(0);
                for (int warps : {4, 8}) { // the mma.sync backward's block shapes
                    cuda::set_attention_tc_bwd_config(1);
                    cuda::set_attention_tc_warps(warps);
                    fwd_bwd("bf16 bwd " + std::to_string(warps) + "w", q, k, v, true);
                }
                cuda::set_attention_tc_warps(0);
                for (int config = 2; config <= 3; ++config) { // the wgmma backward's
                    cuda::set_attention_tc_bwd_config(config);
                    fwd_bwd("bf16 bwd cfg " + std::to_string(config), q, k, v, true);
                }
                cuda::set_attention_tc_bwd_config(0);
                {
                    NoGradGuard ng;
                    Tensor out = Tensor::empty({B, H, T, D}, DType::bf16, kCuda);
                    Tensor lse = Tensor::empty({B, H, T}, DType::f32, kCuda);
                    const float scale = 1.0f / std::sqrt(float(D));
                    report("attention fwd bf16 kernel only" + shape, time_ms([&] {
                               be.attention(q, k, v, scale, true, out, lse);
                           }, kBudget),
                           0, fl);
                }
                // The training step's path: attention_packed on a bf16 (B, T, 3 H D) qkv.
                Tensor qkv = randn({B, T, 3 * H * D}, 4).to(DType::bf16);
                qkv.set_requires_grad(true);
                {
                    NoGradGuard ng;
                    report("attention fwd bf16 packed" + shape,
                           time_ms([&] { (void)attention_packed(qkv, H, {.causal = true}); },
                                   kBudget),
                           0, fl);
                }
                report("attention fwd+bwd bf16 packed" + shape, time_ms([&] {
                           Tensor o = attention_packed(qkv, H, {.causal = true});
                           o.backward(o.detach());
                           qkv.zero_grad();
                       }, kBudget),
                       0, 3.5 * fl);
            }
            cuda::set_allow_reduced_precision_attention(true);
            Tensor q = leaf(1, DType::f32), k = leaf(2, DType::f32), v = leaf(3, DType::f32);
            fwd_bwd("f32 tc", q, k, v, true);
            cuda::set_allow_reduced_precision_attention(false);
        }
}

// The GEMMs of a GPT-2 124M training step at B x T = 16384 rows on bf16 operands (the path of
// linear() under autocast: cuBLASLt, timed algorithm, f32 output), against a large square GEMM
// as the ceiling. "x^T" rows are the weight gradients (the activation operand transposed).
void gemm() {
    NoGradGuard ng;
    auto bf16 = [](const Shape& s, uint64_t seed) { return randn(s, seed).to(DType::bf16); };
    Backend& be = cuda::backend();
    // half_out: a bf16 output (and bias), as linear() writes under autocast.
    auto run = [&](const std::string& name, int64_t M, int64_t K, int64_t N, bool at, bool bias,
                   bool half_out = false) {
        const DType od = half_out ? DType::bf16 : DType::f32;
        Tensor a = at ? bf16({1, K, M}, 1).transpose(1, 2) : bf16({1, M, K}, 1);
        Tensor b = bf16({1, K, N}, 2), out = Tensor::empty({1, M, N}, od, kCuda);
        Tensor bv = randn({N}, 3).to(od);
        const double ms = time_ms([&] {
            if (bias)
                be.matmul_bias(a, b, bv, out);
            else if (half_out)
                cuda::matmul_half(a, b, out, /*accumulate=*/false);
            else
                be.matmul(a, b, out);
        });
        report("gemm bf16 " + name + " " + std::to_string(M) + "x" + std::to_string(K) + "x" +
                   std::to_string(N) + (bias ? " +bias" : "") + (half_out ? " bf16 out" : ""),
               ms, 0, 2.0 * double(M) * double(K) * double(N));
    };
    run("ceiling", 8192, 8192, 8192, false, false);
    const int64_t R = 16384, C = 768;
    run("qkv", R, C, 3 * C, false, true);
    run("qkv", R, C, 3 * C, false, false);
    run("qkv", R, C, 3 * C, false, true, true);
    run("proj", R, C, C, false, true);
    run("proj", R, C, C, false, true, true);
    run("fc", R, C, 4 * C, false, false, true);
    run("fc2", R, 4 * C, C, false, true, true);
    run("fc", R, C, 4 * C, false, false);
    run("fc2", R, 4 * C, C, false, true);
    run("dx qkv", R, 3 * C, C, false, false);
    run("dx fc", R, 4 * C, C, false, false);
    run("dx fc2", R, C, 4 * C, false, false);
    run("dw qkv x^T", C, R, 3 * C, true, false);
    run("dw fc x^T", C, R, 4 * C, true, false);
    run("dw fc2 x^T", 4 * C, R, C, true, false);
    run("head", R, C, 50257, false, false);
}

// GPT-2's LM head and loss alone (16384 x 768 rows, V = 50257) under bf16 autocast:
// linear_cross_entropy with gradients (forward + the backward's scaling) and without, per chunk
// size, against the unfused cross_entropy(matmul(x, w^T)); peak memory above the inputs.
void lmce() {
    const cuda::PrecisionScope scope("bf16");
    const int64_t N = 16384, C = 768, V = 50257, Vp = (V + 63) / 64 * 64;
    Tensor x = randn({N, C}, 1), w = mul_scalar(randn({V, C}, 2), 0.02);
    Tensor t = Tensor::rand({N}, 3, DType::f64, 0, double(V)).to(DType::i64).to(kCuda);
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    const double flops = 3 * 2.0 * double(N) * double(C) * double(V);
    auto run = [&](const std::string& name, const std::function<Tensor()>& loss, bool grads) {
        cuda::synchronize();
        const size_t base = cuda::memory_stats().allocated;
        cuda::reset_peak_memory();
        const double ms = time_ms([&] {
            x.zero_grad();
            w.zero_grad();
            if (grads) {
                loss().backward();
            } else {
                NoGradGuard ng;
                loss();
            }
        });
        const double peak = double(cuda::memory_stats().peak - base) / double(1 << 30);
        std::printf("%-44s %8.3f ms  %6.1f TFLOP/s  peak +%.2f GiB\n", name.c_str(), ms,
                    (grads ? flops : flops / 3) / ms / 1e9, peak);
        std::fflush(stdout);
    };
    run("lmce unfused matmul + cross_entropy", [&] { return cross_entropy(matmul(x, w.t()), t); },
        true);
    for (const int64_t rows : {1024, 2048, 4096, 8192, 16384}) {
        Backend::set_linear_ce_chunk_elements(rows * Vp / 4); // CUDA's budget is 4x this
        run("lmce fused, chunks of " + std::to_string(rows) + " rows",
            [&] { return linear_cross_entropy(x, w, t); }, true);
        run("lmce fused, no grad, chunks of " + std::to_string(rows) + " rows",
            [&] { return linear_cross_entropy(x, w, t); }, false);
    }
    Backend::set_linear_ce_chunk_elements(0);
}

// One GPT-2 124M training step in f32 (forward, backward, AdamW) at batch B x T.
// precision: f32 | tf32 | tf32-bf16attn (TF32 matmuls, bf16 tensor-core attention) | bf16
// (autocast: bf16 matmuls and attention, f32 weights and AdamW state).
void train(int64_t B, int64_t T, const std::string& precision) {
    const bool bf16_attn = precision == "tf32-bf16attn";
    const cuda::PrecisionScope scope(bf16_attn ? "tf32" : precision);
    cuda::set_allow_reduced_precision_attention(bf16_attn);
    ModelConfig cfg = ModelConfig::preset("gpt2");
    Transformer model(cfg, 1);
    model.to(kCuda);
    AdamW opt(collect_parameters(model), {.weight_decay = 0.1});
    Tensor r = Tensor::rand({B, T + 1}, 5, DType::f64, 0, double(cfg.vocab_size)).to(DType::i64);
    // On the host, as the Trainer passes them: the model validates and copies them.
    Tensor ids = r.narrow(1, 0, T).contiguous();
    Tensor tg = r.narrow(1, 1, T).contiguous();
    auto step = [&] { // no .item() inside: it would wait for the GPU
        opt.zero_grad();
        Tensor l = model.loss(ids, tg);
        l.backward();
        opt.step(1e-4);
    };
    step();
    cuda::synchronize();
    // FORGE_BENCH_STEPS=n: n more steps and no timing (for a kernel profiler such as ncu).
    if (const char* n = std::getenv("FORGE_BENCH_STEPS")) {
        for (int i = 0; i < std::atoi(n); ++i) step();
        cuda::synchronize();
        return;
    }
    cuda::reset_peak_memory();
    // The host's share: one step enqueued onto an idle GPU (a step launches fewer kernels than
    // the launch queue holds, and no op waits for the device, so this is the op layer's own
    // time, not a wait for the GPU).
    const auto h0 = std::chrono::steady_clock::now();
    step();
    const double host_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0).count();
    cuda::synchronize();
    const double ms = time_ms(step, 3000);
    const double tokens = double(B * T);
    // 6 N per token for the matmuls + attention's 12 L T C (PaLM's MFU count).
    const double n_params = 124e6, flops = tokens * (6 * n_params + 12.0 * 12 * 768 * double(T));
    const cuda::MemoryStats st = cuda::memory_stats();
    std::printf("gpt2-124M train step, f32 weights, compute %s B%lld T%lld: %.1f ms, %.0f "
                "tokens/s, %.1f TFLOP/s, peak %.2f GiB, host enqueue %.1f ms\n",
                precision.c_str(), (long long)B, (long long)T, ms,
                tokens / ms * 1e3, flops / ms / 1e9, double(st.peak) / double(1 << 30), host_ms);
    std::fflush(stdout);
    cuda::set_allow_reduced_precision_attention(false);
}

} // namespace

int main(int argc, char** argv) {
    if (!cuda::is_available()) {
        std::printf("no CUDA device\n");
        return 1;
    }
    for (int i = 1; i < argc; ++i) {
        const std::string what = argv[i];
        if (what == "kernels") kernels();
        else if (what == "attn") attn();
        else if (what == "gemm") gemm();
        else if (what == "lmce") lmce();
        else if (what == "train" && i + 3 < argc) { // train B T f32|tf32|tf32-bf16attn|bf16
            train(std::atoll(argv[i + 1]), std::atoll(argv[i + 2]), argv[i + 3]);
            i += 3;
        }
    }
    return 0;
}
