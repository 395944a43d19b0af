// gemm_bf16's AMX-BF16 path (Sapphire Rapids and later): 32 x 32 blocks of c as 2 x 2 tiles of
// 16 x 16 f32, fed by A tiles (16 rows x 32 k, bf16) and B tiles (16 k-pairs x 16 columns, the
// pair panels of pack_pairs). Compiled with -mamx-tile -mamx-bf16; called only after
// bf16_gemm_kind() has obtained the kernel's permission to use tile data.
#include <algorithm>
#include <cstring>

#include <omp.h>

#include "backends/cpu/kernels/gemm_bf16.h"
#include "backends/cpu/kernels/gemm_bf16_intrin.h"

namespace forge::cpu::bf16 {

namespace {

constexpr int kBlock = 32; // rows and columns of c per block (2 x 2 tiles)
constexpr int kTileK = 32; // k per tile step: 64 bytes of bf16 per A row, 16 pairs of B

// LDTILECFG's 64-byte operand: palette 1, then bytes per row and rows of each tile.
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Tiles 0-3: c blocks (rows 0-15 | 16-31) x (columns 0-15 | 16-31); 4, 5: A's two 16-row
// halves; 6, 7: B's two 16-column halves. All 16 rows x 64 bytes.
TileConfig tile_config() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t)
        cfg.colsb[t] = 64, cfg.rows[t] = 16;
    return cfg;
}

// c block (32 x 32 f32 at cb, row stride ldc floats) = A rows (32 x k_pad bf16) * B panel
// (k_pad / 2 pairs x 32 columns).
inline void block_32x32(const uint16_t* ap, const uint32_t* bp, int64_t k_pad, float* cb,
                        int64_t ldc) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const int64_t a_stride = k_pad * 2; // bytes between A rows
    // Each load just before its first use (the intrinsics are asm volatile: this is the order
    // issued), so a tile's load overlaps the products still reading the other tiles.
    for (int64_t k0 = 0; k0 < k_pad; k0 += kTileK) {
        _tile_loadd(4, ap + k0, a_stride);
        _tile_loadd(6, bp + k0 / 2 * kBlock, kBlock * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, bp + k0 / 2 * kBlock + 16, kBlock * 4);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, ap + 16 * k_pad + k0, a_stride);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, cb, ldc * 4);
    _tile_stored(1, cb + 16, ldc * 4);
    _tile_stored(2, cb + 16 * ldc, ldc * 4);
    _tile_stored(3, cb + 16 * ldc + 16, ldc * 4);
}

} // namespace

void gemm_amx(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_rs, int64_t a_cs,
              const float* b, int64_t b_rs, int64_t b_cs, float* c, int64_t ldc, int threads) {
    const int64_t k_pad = (K + kTileK - 1) / kTileK * kTileK; // zeros past K add nothing
    const int64_t n_pairs = k_pad / 2;
    const int64_t n_panels = (N + kBlock - 1) / kBlock, m_blocks = (M + kBlock - 1) / kBlock;
    const int64_t panel_size = n_pairs * kBlock, block_size = kBlock * k_pad;
    threads = int(std::min<int64_t>(threads, m_blocks * n_panels));
    static thread_local Scratch<uint16_t> a_scratch;
    static thread_local Scratch<uint32_t> b_scratch;
    uint16_t* apack = a_scratch.get(size_t(m_blocks * block_size));
    uint32_t* bpack = b_scratch.get(size_t(n_panels * panel_size));
    auto pack_a = [&](int64_t i) { // 32 rows, the ones past M zero
        const int64_t rows = std::min<int64_t>(kBlock, M - i * kBlock);
        uint16_t* dst = apack + i * block_size;
        pack_rows(a + i * kBlock * a_rs, a_rs, a_cs, rows, K, k_pad, dst);
        std::memset(dst + rows * k_pad, 0, size_t((kBlock - rows) * k_pad) * 2);
    };
    auto pack_b = [&](int64_t j) {
        pack_pairs(b + j * kBlock * b_cs, b_rs, b_cs, std::min<int64_t>(kBlock, N - j * kBlock), K,
                   n_pairs, kBlock, bpack + j * panel_size);
    };
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const TileRange r = tile_range(M, N, kBlock, kBlock, t, nt);
        for (int64_t i = r.by_rows ? r.m0 : t; i < (r.by_rows ? r.m1 : m_blocks);
             i += r.by_rows ? 1 : nt)
            pack_a(i);
        for (int64_t j = r.by_rows ? t : r.j0; j < (r.by_rows ? n_panels : r.j1);
             j += r.by_rows ? nt : 1)
            pack_b(j);
#pragma omp barrier
        if (r.m0 < r.m1 && r.j0 < r.j1) {
            const TileConfig cfg = tile_config(); // tile state is per thread
            _tile_loadconfig(&cfg);
            alignas(64) float edge[kBlock * kBlock]; // blocks that overhang c's edges
            auto block = [&](int64_t i, int64_t j) {
                const int64_t rows = std::min<int64_t>(kBlock, M - i * kBlock);
                const int64_t cols = std::min<int64_t>(kBlock, N - j * kBlock);
                float* cb = c + i * kBlock * ldc + j * kBlock;
                const uint16_t* ap = apack + i * block_size;
                if (rows == kBlock && cols == kBlock)
                    return block_32x32(ap, bpack + j * panel_size, k_pad, cb, ldc);
                block_32x32(ap, bpack + j * panel_size, k_pad, edge, kBlock);
                for (int64_t rr = 0; rr < rows; ++rr)
                    std::memcpy(cb + rr * ldc, edge + rr * kBlock, size_t(cols) * 4);
            };
            // As the AVX512_BF16 path: the smaller packed operand (in bytes) streams from L2.
            if ((r.m1 - r.m0) * block_size * 2 > (r.j1 - r.j0) * panel_size * 4) {
                for (int64_t i = r.m0; i < r.m1; ++i)
                    for (int64_t j = r.j0; j < r.j1; ++j)
                        block(i, j);
            } else {
                for (int64_t j = r.j0; j < r.j1; ++j)
                    for (int64_t i = r.m0; i < r.m1; ++i)
                        block(i, j);
            }
            _tile_release();
        }
    }
}

} // namespace forge::cpu::bf16
