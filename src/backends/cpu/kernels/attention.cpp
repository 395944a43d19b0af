// Fast CPU attention: picks the flash kernel for the dtype, head size and CPU (AVX-512, AVX2 or
// the portable scalar policy; f64 always scalar) and gives it per-thread scratch from the
// tensor allocator, so the scratch shows in memory_stats(). Short sequences (Tq, Tk <= 256) take
// the exact-softmax kernels of attention_short.h, longer ones the flash kernels of
// attention_flash.h.
#include <cstdint>

#include <omp.h>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/cpu_common.h"
#include "backends/cpu/kernels/attention_flash.h"
#include "backends/cpu/kernels/attention_short.h"
#include "backends/cpu/simd/nn_kernels.h"

namespace forge::cpu {

namespace {

enum class Path { avx512, avx2, scalar };

// The widest kernel for head size D under the active instruction set (the CPU's best, or less
// when a test caps it; see simd/nn_kernels.h). The SIMD policies need D % lanes == 0.
Path pick_path(int64_t D) {
    const nn::Isa isa = nn::active_isa();
    if (isa == nn::Isa::avx512 && D % 16 == 0)
        return Path::avx512;
    if (int(isa) >= int(nn::Isa::avx2) && D % 8 == 0)
        return Path::avx2;
    return Path::scalar;
}

// Per-thread tiles: omp_get_max_threads() slots, one per thread of the kernel's parallel region.
Tensor scratch_for(const Tensor& like, int64_t per_thread) {
    return Tensor::empty({int64_t(omp_get_max_threads()) * per_thread}, like.dtype(),
                         like.device());
}

// Every key of a head fits one cache-resident tile: exact softmax, no online rescaling.
bool is_short(int64_t Tq, int64_t Tk) {
    return Tq <= flash::kShortMaxT && Tk <= flash::kShortMaxT;
}

// The batch, head and row strides of a (B, H, T, D) view whose last dim is contiguous.
flash::Rows rows_of(const Tensor& t) {
    return {t.strides()[0], t.strides()[1], t.strides()[2]};
}

// The flash kernels take contiguous tensors: a strided view is computed through a contiguous
// copy (inputs copied in; outputs written there, then copied to the view).
Tensor dense(const Tensor& t) {
    return t.is_contiguous() ? t : t.contiguous();
}
Tensor dense_out(const Tensor& t) {
    return t.is_contiguous() ? t : Tensor::empty(t.shape(), t.dtype(), t.device());
}
void copy_back(const Tensor& dense_t, const Tensor& view) {
    if (dense_t.impl() == view.impl()) return;
    Tensor dst = view; // a handle to the same view
    dst.copy_(dense_t);
}

} // namespace

// q: (B, Hq, Tq, D), k/v: (B, Hkv, Tk, D) -> out (B, Hq, Tq, D), lse (B, Hq, Tq) contiguous.
// q, k, v, out may be strided views (attention_strided(): e.g. heads of a packed qkv); the
// short kernels read and write them in place.
void CpuBackend::attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                           float scale, bool causal, const Tensor& out_in, const Tensor& lse) {
    const int64_t D = q_in.size(3), Tk = k_in.size(2);
    const bool short_seq = is_short(q_in.size(2), Tk);
    const Tensor q = short_seq ? q_in : dense(q_in), k = short_seq ? k_in : dense(k_in),
                 v = short_seq ? v_in : dense(v_in), out = short_seq ? out_in : dense_out(out_in);
    Tensor scratch =
        scratch_for(q, short_seq ? flash::short_fwd_scratch(D, Tk) : flash::fwd_scratch(D));
    visit_float(q.dtype(), [&]<typename T>() {
        const flash::FwdArgs<T> a{.q = q.data<T>(),
                                  .k = k.data<T>(),
                                  .v = v.data<T>(),
                                  .out = out.data<T>(),
                                  .lse = lse.data<T>(),
                                  .B = q.size(0),
                                  .Hq = q.size(1),
                                  .Hkv = k.size(1),
                                  .Tq = q.size(2),
                                  .Tk = k.size(2),
                                  .D = D,
                                  .scale = T(scale),
                                  .causal = causal,
                                  .scratch = scratch.data<T>(),
                                  .sq = rows_of(q),
                                  .sk = rows_of(k),
                                  .sv = rows_of(v),
                                  .so = rows_of(out)};
        if constexpr (std::is_same_v<T, float>) {
            switch (pick_path(D)) {
            case Path::avx512:
                return short_seq ? flash::short_forward_f32_avx512(a)
                                 : flash::forward_f32_avx512(a);
            case Path::avx2:
                return short_seq ? flash::short_forward_f32_avx2(a) : flash::forward_f32_avx2(a);
            case Path::scalar:
                break;
            }
        }
        if (short_seq)
            return flash::short_forward<flash::ScalarVec<T>>(a);
        flash::flash_forward<flash::ScalarVec<T>>(a);
    });
    copy_back(out, out_in);
}

void CpuBackend::attention_backward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                    const Tensor& out_in, const Tensor& lse,
                                    const Tensor& dout_in, float scale, bool causal,
                                    const Tensor& dq_in, const Tensor& dk_in,
                                    const Tensor& dv_in) {
    const int64_t D = q_in.size(3);
    const int64_t B = q_in.size(0), Hq = q_in.size(1), Hkv = k_in.size(1), Tq = q_in.size(2),
                  Tk = k_in.size(2);
    // Too few (batch, kv-head) pairs to keep every thread busy: per-query-head partial dK, dV
    // (flash path only; the short path's tasks are (batch, kv-head) pairs).
    const bool split = Hq > Hkv && B * Hkv < omp_get_max_threads();
    const bool short_seq = is_short(Tq, Tk) && !split;
    auto in = [&](const Tensor& t) { return short_seq ? t : dense(t); };
    auto outp = [&](const Tensor& t) { return short_seq ? t : dense_out(t); };
    const Tensor q = in(q_in), k = in(k_in), v = in(v_in), out = in(out_in), dout = in(dout_in);
    const Tensor dq = outp(dq_in), dk = outp(dk_in), dv = outp(dv_in);
    Tensor scratch =
        scratch_for(q, short_seq ? flash::short_bwd_scratch(D, Tq, Tk) : flash::bwd_scratch(D));
    Tensor delta; // rowsum(dO * O); the short path keeps it in a register
    if (!short_seq)
        delta = Tensor::empty({B, Hq, Tq}, q.dtype(), q.device());
    Tensor dkv_part;
    if (split)
        dkv_part = Tensor::empty({2 * B * Hq * Tk * D}, q.dtype(), q.device());
    visit_float(q.dtype(), [&]<typename T>() {
        const flash::BwdArgs<T> a{.q = q.data<T>(),
                                  .k = k.data<T>(),
                                  .v = v.data<T>(),
                                  .out = out.data<T>(),
                                  .lse = lse.data<T>(),
                                  .dout = dout.data<T>(),
                                  .dq = dq.data<T>(),
                                  .dk = dk.data<T>(),
                                  .dv = dv.data<T>(),
                                  .delta = delta.defined() ? delta.data<T>() : nullptr,
                                  .dkv_part = dkv_part.defined() ? dkv_part.data<T>() : nullptr,
                                  .B = q.size(0),
                                  .Hq = q.size(1),
                                  .Hkv = k.size(1),
                                  .Tq = q.size(2),
                                  .Tk = k.size(2),
                                  .D = D,
                                  .scale = T(scale),
                                  .causal = causal,
                                  .scratch = scratch.data<T>(),
                                  .sq = rows_of(q),
                                  .sk = rows_of(k),
                                  .sv = rows_of(v),
                                  .so = rows_of(out),
                                  .sdo = rows_of(dout),
                                  .sdq = rows_of(dq),
                                  .sdk = rows_of(dk),
                                  .sdv = rows_of(dv)};
        if constexpr (std::is_same_v<T, float>) {
            switch (pick_path(D)) {
            case Path::avx512:
                return short_seq ? flash::short_backward_f32_avx512(a)
                                 : flash::backward_f32_avx512(a);
            case Path::avx2:
                return short_seq ? flash::short_backward_f32_avx2(a) : flash::backward_f32_avx2(a);
            case Path::scalar:
                break;
            }
        }
        if (short_seq)
            return flash::short_backward<flash::ScalarVec<T>>(a);
        flash::flash_backward<flash::ScalarVec<T>>(a);
    });
    copy_back(dq, dq_in);
    copy_back(dk, dk_in);
    copy_back(dv, dv_in);
}

} // namespace forge::cpu
