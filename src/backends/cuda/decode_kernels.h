// Kernels of the batch-1 decode step (decode_kernels.cu): a bf16 GEMV with the input norm and
// the output's epilogue fused in, split-K ("flash-decoding") attention over a bf16 KV cache,
// the token + position embedding and the step's bookkeeping, launched one op at a time; and the
// whole step as one persistent kernel made of the same pieces. Raw device pointers; the
// position and token live in device memory (StepArgs), so one CUDA graph replays every step.
// Not for batched decode, prefill or training (those go through the ops). Host-only header.
#pragma once

#include <cstdint>

namespace forge::cuda::decode {

/// The step's device-resident inputs. The host writes token/pos before a step, or the previous
/// step's finish() does (greedy decoding on the device).
struct StepArgs {
    int32_t token = 0;
    int32_t pos = 0;     ///< position of `token`; the cache holds pos + 1 after the step
    uint64_t argmax = 0; ///< packed (ordered logit << 32 | ~index); 0 = empty
};

enum class Norm { none, layer, rms };
enum class Epilogue {
    store,    ///< out[n] = acc + bias
    residual, ///< out[n] += acc + bias (the residual stream, in place)
    gelu,     ///< out[n] = gelu_tanh(acc + bias)
    swiglu,   ///< rows interleaved (gate_i, up_i): out[i] = silu(gate_i) * up_i
    qkv,      ///< rows q | k | v; q -> out, k and v -> the caches at args->pos (RoPE optional)
};

/// How a GEMV's matrix is stored (quant_gemv.cuh): (N, K) bf16 row-major (nn.Linear layout);
/// ggml's Q8_0 / Q4_0 blocks as a GGUF file stores them, each row K/32 blocks of 34 / 18 bytes
/// (f16 scale, then 32 int8 / 16 bytes of 4-bit values q - 8, value j in byte j's low nibble,
/// j + 16 in its high one), rows back to back; or those blocks split (split_blocks): the N rows
/// of quantized bytes (K or K/2 each), then the N x K/32 f16 scales. The split form holds the
/// same bytes, 16-byte aligned, so a lane loads 16 of them at once where the 34 / 18-byte blocks
/// allow only 2 (decode_quant.sh measures both).
enum class WeightFormat { bf16, q8_0, q4_0, q8_0_split, q4_0_split };
/// Bytes of an (n, k) matrix in `f`.
int64_t weight_bytes(WeightFormat f, int64_t n, int64_t k);
/// Q8_0 / Q4_0 blocks (n rows of k/32 blocks, host memory) -> `split` (q8_0_split of Q8_0
/// blocks or q4_0_split of Q4_0 ones) in `out` (weight_bytes(split, n, k) bytes, host memory).
void split_blocks(WeightFormat split, const void* blocks, int64_t n, int64_t k, void* out);

/// y = epilogue(W norm(x)); W: (N, K) in `format`, K % 8 == 0 (bf16) or K % 32 == 0 (blocks).
struct GemvArgs {
    const void* w = nullptr;
    int n = 0, k = 0;
    WeightFormat format = WeightFormat::bf16;
    /// Q8_0 / Q4_0: round norm(x) to int8 per 32 values (scale amax / 127, as llama.cpp's MMVQ
    /// and the CPU engine do) and take integer dot products (dp4a); false: dequantize the
    /// weights to f32 and multiply by norm(x) in f32.
    bool int8_dot = true;
    const float* x = nullptr; ///< (K)
    Norm norm = Norm::none;
    const float* norm_w = nullptr; ///< (K)
    const float* norm_b = nullptr; ///< (K), LayerNorm only (may be null)
    float eps = 1e-5f;
    Epilogue epi = Epilogue::store;
    const float* bias = nullptr; ///< (N) or null
    float* out = nullptr;
    bool argmax = false; ///< store: also fold max(out) into args->argmax
    // qkv: n = (n_q + 2 n_kv) * head_dim. With rope_inv_freq, each q/k head's rows come
    // permuted as (0, D/2, 1, D/2 + 1, ...) so a warp holds both halves of a rotated pair.
    int n_q = 0, n_kv = 0, head_dim = 0;
    const double* rope_inv_freq = nullptr; ///< (D/2) NeoX-style RoPE frequencies, or null
    void* k_cache = nullptr;               ///< (n_kv, cache_cap, D) bf16
    void* v_cache = nullptr;
    int cache_cap = 0;
    StepArgs* args = nullptr;
};
void gemv(const GemvArgs& a, void* stream);

/// Split-K attention of one query per head over cache positions [0, args->pos], in chunks
/// of `chunk` positions: one block per (kv head, chunk) writes a partial softmax; the last
/// block of each kv head combines them. GQA: n_head % n_kv == 0, at most 8 query heads a kv head.
struct AttnArgs {
    const float* q = nullptr;      ///< (n_head, D)
    const void* k_cache = nullptr; ///< (n_kv, cap, D) bf16
    const void* v_cache = nullptr;
    int n_head = 0, n_kv = 0, head_dim = 0, cap = 0;
    int chunk = 64;
    float scale = 1.f; ///< on the scores (1/sqrt(D))
    const StepArgs* args = nullptr;
    float* out = nullptr;         ///< (n_head, D)
    float* partial = nullptr;     ///< scratch: attn_partial_floats()
    unsigned* counters = nullptr; ///< (n_kv) zeroed once; each launch leaves them zero
};
int64_t attn_partial_floats(int n_head, int head_dim, int cap, int chunk);
/// Head dims 32, 64 and 128.
bool attn_supported(int head_dim);
void attention(const AttnArgs& a, void* stream);

/// x = f32(wte[args->token]) + (wpe ? wpe[args->pos] : 0); wte (V, C) in `wte_format`, wpe f32
/// (P, C).
void embed(const void* wte, WeightFormat wte_format, int n_vocab, const float* wpe, int n_embd,
           const StepArgs* args, float* x, void* stream);
/// After the head: token = argmax, argmax = 0, pos += 1 (one thread).
void finish(StepArgs* args, void* stream);

/// One layer's weights and KV cache, as the per-op path passes them to gemv() and attention().
struct StepLayer {
    const void *qkv, *proj, *fc, *fc2;                  ///< (N, K), see PersistentStepArgs
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b; ///< (C); the b's LayerNorm only, or null
    const float *qkv_b, *proj_b, *fc_b, *fc2_b;         ///< (N) or null
    void *k_cache, *v_cache;                            ///< (n_kv, cap, D) bf16
};

/// The whole decode step as one persistent kernel: embedding, per layer qkv | attention | proj |
/// fc | fc2, then head + argmax | finish, each phase the device code of the per-op kernels and
/// each `|` a barrier across the grid instead of a kernel boundary (a cooperative launch keeps
/// every block resident). A block requests its next phase's first weights before it waits at
/// the barrier, so their latency overlaps the other blocks' work. Matrices: qkv
/// ((n_head + 2 n_kv) D, C) as for Epilogue::qkv, proj (C, n_head D), fc (n_ff, C) with GELU or
/// (2 n_ff, C) rows (gate_i, up_i) with SwiGLU, fc2 (C, n_ff), head (vocab, C), all of them and
/// wte in `format`: bf16, or Q8_0 / Q4_0 split (q8_0_split, q4_0_split) with int8 dot products.
struct PersistentStepArgs {
    const StepLayer* layers = nullptr; ///< (n_layer) in device memory
    int n_layer = 0, n_embd = 0, n_ff = 0, n_head = 0, n_kv = 0, head_dim = 0, vocab = 0;
    int cap = 0;    ///< KV cache positions
    int chunk = 64; ///< attention positions per block task, as AttnArgs::chunk
    Norm norm = Norm::layer;
    float eps = 1e-5f;
    Epilogue ffn = Epilogue::gelu; ///< fc's epilogue: gelu or swiglu
    WeightFormat format = WeightFormat::bf16;
    const void* wte = nullptr;  ///< (vocab, C)
    const float* wpe = nullptr; ///< (n_ctx, C) or null
    const void* head = nullptr; ///< (vocab, C) bf16
    const float *lnf_w = nullptr, *lnf_b = nullptr;
    const double* rope_inv_freq = nullptr; ///< as GemvArgs::rope_inv_freq
    float* x = nullptr;                    ///< (C) the residual stream
    float* q = nullptr;                    ///< (n_head D)
    float* hid = nullptr;                  ///< (n_ff)
    float* logits = nullptr;               ///< (vocab)
    float* partial = nullptr;              ///< attn_partial_floats(n_head, head_dim, cap, chunk)
    StepArgs* args = nullptr;
    unsigned long long* barrier = nullptr; ///< zeroed once; the kernel never needs it reset
};
/// Blocks of the persistent step's grid on this GPU for these shapes (pointers unused); 0 when
/// it cannot run: no cooperative launch, or not one block fits a multiprocessor.
int persistent_grid(const PersistentStepArgs& a);
/// Launches the step (persistent_grid(a) > 0).
void persistent_step(const PersistentStepArgs& a, void* stream);

} // namespace forge::cuda::decode
