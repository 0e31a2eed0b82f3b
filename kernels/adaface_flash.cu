/* Flash kernels (v3): bf16 inputs on tensor cores, 64-row x 64-class tiles,
 * operands staged with cp.async, the whole depth D (<= 512) resident in
 * shared memory, accumulators in registers. A training step is
 *
 *   stats -> flash_forward_dx -> combine -> flash_dw -> flash_dx_finish
 *
 * and does the four 2BDC products of the fused floor, no more:
 *
 * adaface_flash_forward[_dx]_bf16_*: grid (ceil(B / 64), splits). Block
 *   (r, k) keeps its 64 rows of x in shared memory and streams the class
 *   tiles k, k + splits, ... (double-buffered). Per tile: S = x . W^T, the
 *   margin epilogue, the running max and sum-exp per row (online softmax);
 *   with _dx also the running, unnormalised row gradient
 *       O_r = sum_c exp(l_rc - m_r) dlogit_rc / ||w_c|| w_c   (c != y_r),
 *   rescaled whenever the running max moves, as FlashAttention's forward
 *   accumulates its output. dX thus needs no second pass over W: per split
 *   it leaves O (B x D), m and l, i.e. splits * B * D floats, not B x C.
 * adaface_flash_dx_finish_bf16_*: grid (B). dX_r = (sum_k exp(m_kr - lse_r)
 *   O_kr + (p_ry - 1) dlogit_ry / ||w_y|| w_y) / B, then the Jacobian of
 *   x -> x / ||x||. The target term is added in f32 here rather than in the
 *   bf16 product, so p - 1 does not cancel in low precision.
 * adaface_flash_dw_bf16_*: grid (ceil(C / 64)). Block j keeps its 64 rows of
 *   W in shared memory and streams all row tiles of x: S again, then
 *   A = (p - [c = y]) dlogit / (B ||x_r|| ||w_c||), dW_tile += A^T . x with
 *   the 64 x D accumulator in registers; the Jacobian of w -> w / ||w|| at
 *   the end; dW written once, without atomics (the block owns its classes).
 *
 * Gradient products multiply A (or P) split into bf16 hi + lo by the raw
 * bf16 operand, keeping about 16 significant bits (the v2b scheme: dX and
 * dW to ~3e-6 of the f64 reference), or, in the `_single` entries, A
 * rounded once to bf16 as FlashAttention rounds P (half the gradient mma
 * work; ~1e-3 relative error, the naive bf16 path's level). Every sum has a
 * fixed order: same inputs, same bits.
 *
 * Warp layout (8 warps): the logit tile S (64 x 64) gives warp w rows
 * 16 (w % 4) .. + 16 and classes 32 (w / 4) .. + 32; the 64 x D output
 * tiles (O, and dW with classes as rows) give warp w the same 16 rows and
 * the depth half w / 4. So a thread's rows are the same in S and in O.
 *
 * Two instruction sets share this file (template parameter Wg):
 *   - mma.sync (sm_80+): operands through ldmatrix from rows padded to an
 *     odd number of 16-byte chunks; every product completes in program order.
 *   - wgmma (sm_90a, the `_wg` entries, D % 128 == 0): warps 0-3 and 4-7 are
 *     the two warpgroups, and the layout above is exactly wgmma's
 *     accumulator layout (warpgroup = depth half = class half of S). Tiles
 *     are stored in the 128-byte-swizzle layout wgmma reads through matrix
 *     descriptors (1024-byte atoms of 8 rows x 64 elements, 16-byte chunks
 *     XORed with the row), and the products are asynchronous: the logit
 *     product runs while the CUDA cores compute the class norms, and each
 *     tile's gradient product (O or dW) runs while the next iteration waits
 *     for its tile and issues its logit product. */
#include "adaface_common.cuh"

#define ADAFACE_FLASH_WARPS 8
#define ADAFACE_FLASH_NF (ADAFACE_FLASH_MAX_DIM / 16) /* n8 fragments per depth half, at most */
/* Shapes the flash kernels take (checked by the host plan): D % 32 == 0
 * (an even number of fragments per depth half) and D <= MAX_DIM. */
#define ADAFACE_FLASH_PLD (ADAFACE_FLASH_CLASSES + 8) /* row stride (elements) of the P / A tiles */
static_assert(ADAFACE_THREADS == 32 * ADAFACE_FLASH_WARPS, "the flash layout is 8 warps");
static_assert(ADAFACE_FLASH_ROWS == 64 && ADAFACE_FLASH_CLASSES == 64, "the flash warp layout covers 64 x 64");

/* Row stride, in elements, of a staged 64 x D tile: D + 8, an odd number
 * of 16-byte chunks when D % 16 == 0, so the eight row addresses of an
 * ldmatrix fall in distinct bank groups. */
__device__ __forceinline__ int adaface_flash_ld(int64_t dim) { return (int)dim + ADAFACE_FLASH_ROW_PAD; }

/* Element offset of (r, k) in a staged 64-row tile of row stride ld.
 * mma.sync: row-major, padded. wgmma: 128-byte-swizzle atoms of 8 rows x
 * 64 elements (1024 bytes), stored atom column after atom column (8 atoms
 * per column for 64 rows), the 16-byte chunk index XORed with r % 8. The
 * same tile is then a K-major operand (rows = M or N, k = K) with stride
 * byte offset 1024, and an MN-major one (rows = K, k = N) with stride byte
 * offset 1024 and leading byte offset 8192 (one atom column). */
/* The element type's bits as a float (bf16 or f16). */
template <typename T>
__device__ __forceinline__ float adaface_flash_decode(uint16_t bits) {
    return adaface_is_f16<T>::value ? adaface_f16_bits_to_f32(bits) : adaface_bf16_bits_to_f32(bits);
}

/* c += a . b on mma.m16n8k16 for the element type. */
template <typename T>
__device__ __forceinline__ void adaface_flash_mma(float* c, const uint32_t a[4], const uint32_t b[2]) {
    if (adaface_is_f16<T>::value)
        mma_m16n8k16_f16_f32(c, a, b, c);
    else
        mma_m16n8k16_bf16_f32(c, a, b, c);
}

template <bool Wg>
__device__ __forceinline__ int adaface_flash_off(int r, int k, int ld) {
    if (Wg) return (((k >> 6) * 8 + (r >> 3)) << 9) + ((r & 7) << 6) + ((((k >> 3) & 7) ^ (r & 7)) << 3) + (k & 7);
    return r * ld + k;
}

/* Issues the cp.async copies of rows [row0, row0 + 64) of a row-major
 * (rows x dim) bf16 matrix into dst (stride ld); rows past `rows` are
 * zero-filled. dim % 8 == 0 (16-byte chunks). */
template <bool Wg>
__device__ __forceinline__ void adaface_flash_stage(uint16_t* dst, int ld, const uint16_t* src, int64_t row0,
                                                    int64_t rows, int64_t dim) {
    const int chunks_per_row = (int)(dim / 8);
    const int total = 64 * chunks_per_row;
    for (int e = threadIdx.x; e < total; e += ADAFACE_THREADS) {
        const int r = e / chunks_per_row;
        const int ch = e % chunks_per_row;
        const int64_t row = row0 + r;
        const bool in = row < rows;
        const uint16_t* g = src + (in ? row * dim + 8 * ch : 0);
        cp_async_16_zfill(dst + adaface_flash_off<Wg>(r, 8 * ch, ld), g, in ? 16u : 0u);
    }
}

/* S (16 rows x 32 classes of this warp) = A_tile . B_tile^T over depth
 * [0, dim), both tiles row-major in shared memory with stride ld. */
template <typename T>
__device__ __forceinline__ void adaface_flash_logit_product(float (&s)[16], const uint16_t* a_tile,
                                                            const uint16_t* b_tile, int ld, int64_t dim,
                                                            int row0, int class0) {
    const int lane = (int)threadIdx.x & 31;
    const int m = lane >> 3;
    const int r = lane & 7;
#pragma unroll
    for (int i = 0; i < 16; ++i) s[i] = 0.0f;
    const uint16_t* a_row = a_tile + (row0 + (m & 1) * 8 + r) * ld + (m >> 1) * 8;
    const uint16_t* b_row0 = b_tile + (class0 + (m >> 1) * 8 + r) * ld + (m & 1) * 8;
    const uint16_t* b_row1 = b_row0 + 16 * ld;
    for (int k = 0; k < (int)dim; k += 16) {
        uint32_t a[4], b01[4], b23[4];
        ldmatrix_x4(a, a_row + k);
        ldmatrix_x4(b01, b_row0 + k);
        ldmatrix_x4(b23, b_row1 + k);
        adaface_flash_mma<T>(&s[0], a, &b01[0]);
        adaface_flash_mma<T>(&s[4], a, &b01[2]);
        adaface_flash_mma<T>(&s[8], a, &b23[0]);
        adaface_flash_mma<T>(&s[12], a, &b23[2]);
    }
}

/* Straight-line issue of the logit product over Cols atom columns (64
 * deep each), 32 bytes per 16-deep step inside a column. */
template <int Cols>
__device__ __forceinline__ void adaface_flash_logit_wgmma_n(float (&s)[16], uint32_t a0, uint32_t b0) {
#pragma unroll
    for (int kb = 0; kb < Cols; ++kb)
#pragma unroll
        for (int k = 0; k < 64; k += 16) {
            const uint32_t off = (uint32_t)kb * 8192u + 2u * (uint32_t)k;
            wgmma_m64n32k16_bf16<false>(s, adaface_wgmma_desc(a0 + off, 16, 1024),
                                        adaface_wgmma_desc(b0 + off, 16, 1024), kb + k > 0);
        }
}

/* wgmma twin of adaface_flash_logit_product: issues (does not wait for)
 * S = A_tile . B_tile^T for the warpgroup's 64 rows and the 32 classes from
 * class0, both tiles in the swizzled layout, over whatever s held. The depth (D % 128 == 0) picks
 * one straight-line sequence: a loop or a guard between the products is
 * divergent code to ptxas, which then fences and serialises them
 * (C7519 / C7520). */
__device__ __forceinline__ void adaface_flash_logit_wgmma(float (&s)[16], const uint16_t* a_tile,
                                                          const uint16_t* b_tile, int64_t dim, int class0) {
    /* No zeroing: the first product overwrites s. Writing accumulator
     * registers while the previous tile's O product is in flight would make
     * ptxas serialise every wgmma (C7515). */
    wgmma_fence();
    const uint32_t a0 = adaface_smem_addr(a_tile);
    const uint32_t b0 = adaface_smem_addr(b_tile) + (uint32_t)(class0 / 8) * 1024u;
    static_assert(ADAFACE_FLASH_MAX_DIM == 512, "one issue sequence per depth");
    if (dim == 512)
        adaface_flash_logit_wgmma_n<8>(s, a0, b0);
    else if (dim == 384)
        adaface_flash_logit_wgmma_n<6>(s, a0, b0);
    else if (dim == 256)
        adaface_flash_logit_wgmma_n<4>(s, a0, b0);
    else
        adaface_flash_logit_wgmma_n<2>(s, a0, b0);
    wgmma_commit();
}

/* Accumulators of a 64 x D output tile (O, or dW) for one thread: chunk j
 * holds the n8 fragments 8j .. 8j + 7 of its depth half (fragment f at
 * [f / 8][4 (f % 8)], four floats), so a chunk is the 32 floats of one
 * m64n64 wgmma and fragment f is one mma.m16n8 accumulator. */
#define ADAFACE_FLASH_CHUNKS (ADAFACE_FLASH_NF / 8)
#define ADAFACE_FLASH_FRAG(acc, f) (&(acc)[(f) >> 3][4 * ((f) & 7)])

/* wgmma twin of adaface_flash_grad_product: issues acc (64 x the depth
 * half from n0, Chunks chunks of 64) += (A_hi + A_lo) . B over K = 64,
 * with A 64 x 64 K-major and B (64 x D) MN-major, both swizzled. */
template <bool Split, int Chunks>
__device__ __forceinline__ void adaface_flash_grad_wgmma_n(float (&acc)[ADAFACE_FLASH_CHUNKS][32], uint32_t hi0,
                                                           uint32_t lo0, uint32_t b0) {
#pragma unroll
    for (int k = 0; k < 64; k += 16) {
        const uint64_t d_hi = adaface_wgmma_desc(hi0 + 2u * (uint32_t)k, 16, 1024);
        const uint64_t d_lo = adaface_wgmma_desc(lo0 + 2u * (uint32_t)k, 16, 1024);
#pragma unroll
        for (int j = 0; j < Chunks; ++j) {
            const uint64_t d_b = adaface_wgmma_desc(b0 + (uint32_t)j * 8192u + (uint32_t)(k / 8) * 1024u, 8192, 1024);
            wgmma_m64n64k16_bf16<true>(acc[j], d_hi, d_b);
            if (Split) wgmma_m64n64k16_bf16<true>(acc[j], d_lo, d_b);
        }
    }
}

/* The chunk count (D / 128) picks one straight-line issue sequence, as in
 * adaface_flash_logit_wgmma. */
template <bool Split>
__device__ __forceinline__ void adaface_flash_grad_wgmma(float (&acc)[ADAFACE_FLASH_CHUNKS][32], const uint16_t* a_hi,
                                                         const uint16_t* a_lo, const uint16_t* b_tile, int n0,
                                                         int nchunks) {
    wgmma_fence();
    const uint32_t hi0 = adaface_smem_addr(a_hi);
    const uint32_t lo0 = adaface_smem_addr(a_lo);
    const uint32_t b0 = adaface_smem_addr(b_tile) + (uint32_t)(n0 / 64) * 8192u;
    static_assert(ADAFACE_FLASH_CHUNKS == 4, "one issue sequence per chunk count");
    if (nchunks == 4)
        adaface_flash_grad_wgmma_n<Split, 4>(acc, hi0, lo0, b0);
    else if (nchunks == 3)
        adaface_flash_grad_wgmma_n<Split, 3>(acc, hi0, lo0, b0);
    else if (nchunks == 2)
        adaface_flash_grad_wgmma_n<Split, 2>(acc, hi0, lo0, b0);
    else
        adaface_flash_grad_wgmma_n<Split, 1>(acc, hi0, lo0, b0);
    wgmma_commit();
}

/* Waits for this thread's outstanding wgmma products and pins the
 * accumulators behind the wait. */
template <int Chunks>
__device__ __forceinline__ void adaface_flash_wgmma_drain(float (&s)[16], float (&acc)[Chunks][32]) {
    wgmma_wait<0>();
    wgmma_fence_operands(s);
#pragma unroll
    for (int j = 0; j < Chunks; ++j) wgmma_fence_operands(acc[j]);
}

/* acc (16 rows x this warp's depth half) += (A_hi + A_lo) . B over K = 64
 * (A_hi . B alone unless Split), where A is 64 x 64 (row-major, stride PLD,
 * transposed when ATrans: then A[m][k] is stored at [k][m]) and B is 64 x
 * dim row-major (stride ld). */
template <typename T, bool ATrans, bool Split>
__device__ __forceinline__ void adaface_flash_grad_product(float (&acc)[ADAFACE_FLASH_CHUNKS][32], const uint16_t* a_hi,
                                                           const uint16_t* a_lo, int m0, const uint16_t* b_tile,
                                                           int ld, int n0, int nf) {
    const int lane = (int)threadIdx.x & 31;
    const int m = lane >> 3;
    const int r = lane & 7;
#pragma unroll
    for (int k = 0; k < 64; k += 16) {
        uint32_t hi[4], lo[4];
        /* Non-transposed: matrices (m +0/+8, k +0/+8) in the a0..a3 order;
         * transposed: the same four 8 x 8 blocks read from [k][m]. */
        const int a_off = ATrans ? (k + (m >> 1) * 8 + r) * ADAFACE_FLASH_PLD + m0 + (m & 1) * 8
                                 : (m0 + (m & 1) * 8 + r) * ADAFACE_FLASH_PLD + k + (m >> 1) * 8;
        if (ATrans) {
            ldmatrix_x4_trans(hi, a_hi + a_off);
            if (Split) ldmatrix_x4_trans(lo, a_lo + a_off);
        } else {
            ldmatrix_x4(hi, a_hi + a_off);
            if (Split) ldmatrix_x4(lo, a_lo + a_off);
        }
        const uint16_t* b_row = b_tile + (k + (m & 1) * 8 + r) * ld + n0 + (m >> 1) * 8;
#pragma unroll
        for (int f = 0; f < ADAFACE_FLASH_NF; f += 2) {
            if (f < nf) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, b_row + 8 * f);
                float* c0 = ADAFACE_FLASH_FRAG(acc, f);
                float* c1 = ADAFACE_FLASH_FRAG(acc, f + 1);
                adaface_flash_mma<T>(c0, hi, &b[0]);
                if (Split) adaface_flash_mma<T>(c0, lo, &b[0]);
                adaface_flash_mma<T>(c1, hi, &b[2]);
                if (Split) adaface_flash_mma<T>(c1, lo, &b[2]);
            }
        }
    }
}

/* Writes v as hi + lo bf16 into the two 64 x 64 P / A tiles at [row][col]
 * (hi = bf16(v) alone unless Split). */
template <typename T, bool Split, bool Wg>
__device__ __forceinline__ void adaface_flash_put_split(uint16_t* hi, uint16_t* lo, int row, int col, float v) {
    const int off = adaface_flash_off<Wg>(row, col, ADAFACE_FLASH_PLD);
    if (Split) {
        uint16_t h, l;
        adaface_split16<T>(v, &h, &l);
        hi[off] = h;
        lo[off] = l;
    } else {
        hi[off] = from_float<T>(v).bits;
    }
}

/* Per-row constants of the two rows (g, g + 8 of its warp's 16) a thread
 * holds in the S and output layouts. */
template <typename L>
struct AdafaceFlashRows {
    int64_t label[2];
    float a[2], b[2], inv_norm[2], lse[2];
    bool ok[2];
    __device__ __forceinline__ void load(const AdafaceTileParams& p, int64_t row0, bool with_lse) {
        const int lane = (int)threadIdx.x & 31;
        const int warp = (int)threadIdx.x >> 5;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t i = row0 + 16 * (warp & 3) + (lane >> 2) + 8 * h;
            ok[h] = i < p.batch;
            label[h] = ok[h] ? adaface_label_at((const L*)p.labels, i) - p.class_offset : -1;
            a[h] = ok[h] ? ((const float*)p.row_a)[i] : 0.0f;
            b[h] = ok[h] ? ((const float*)p.row_b)[i] : 0.0f;
            inv_norm[h] = ok[h] ? 1.0f / ((const float*)p.row_norm)[i] : 0.0f;
            lse[h] = (ok[h] && with_lse) ? ((const float*)p.lse)[i] : 0.0f;
        }
    }
};

/* The class norms of a staged 64 x D tile of W (4 threads per class, fixed
 * order): inv_cls[c] = 1 / ||w_c||. When `validate`, also stores ||w_c|| and
 * records non-finite elements, zero and overflowing norms (the checks the
 * tiled forward makes on the elements it stages). */
template <typename T, bool Wg>
__device__ __forceinline__ void adaface_flash_class_norms(const uint16_t* w_tile, int ld, int64_t c0,
                                                          const AdafaceTileParams& p, float* inv_cls,
                                                          bool validate) {
    const int c = (int)threadIdx.x >> 2;
    const int q = (int)threadIdx.x & 3;
    const int64_t j = c0 + c;
    float sq = 0.0f;
    for (int k = 8 * q; k < (int)p.dim; k += 32) {
        uint32_t v8[4]; /* eight bf16 in one 16-byte load */
        adaface_ld_shared_16(v8, w_tile + adaface_flash_off<Wg>(c, k, ld));
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float lo = adaface_flash_decode<T>((uint16_t)(v8[e] & 0xffffu));
            const float hi = adaface_flash_decode<T>((uint16_t)(v8[e] >> 16));
            sq = fmaf(lo, lo, sq);
            sq = fmaf(hi, hi, sq);
        }
    }
    sq += __shfl_xor_sync(0xffffffffu, sq, 1);
    sq += __shfl_xor_sync(0xffffffffu, sq, 2);
    const bool valid = j < p.classes;
    if (q == 0) inv_cls[c] = valid ? 1.0f / sqrtf(sq) : 0.0f;
    if (!validate || !valid) return;
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    if (q == 0) {
        ((float*)p.class_norm)[j] = sqrtf(sq);
        if (sq == 0.0f) adaface_record_error(rec, ADAFACE_ERR_ROWNORM_W, (unsigned long long)(j << 1));
    }
    if (!adaface_is_finite(sq)) {
        if (q == 0) adaface_record_error(rec, ADAFACE_ERR_ROWNORM_W, (unsigned long long)((j << 1) | 1));
        for (int k = 8 * q; k < (int)p.dim; k += 32)
#pragma unroll
            for (int e = 0; e < 8; ++e)
                if (!adaface_is_finite(adaface_flash_decode<T>(w_tile[adaface_flash_off<Wg>(c, k + e, ld)])))
                    adaface_record_error(rec, ADAFACE_ERR_NONFINITE_W, (unsigned long long)(j * p.dim + k + e));
    }
}

/* Byte offsets of the flash kernels' dynamic shared memory (the host mirror
 * is launch::flash_shared_bytes). */
struct AdafaceFlashSmem {
    int ld;
    int tile;             /* elements of one 64 x ld tile */
    uint16_t* stationary; /* 64 x ld: x rows (forward) or W rows (dw) */
    uint16_t* hi;         /* 64 x PLD */
    uint16_t* lo;         /* 64 x PLD */
    float* red;           /* 2 x 64: cross-warp row reductions */
    float* red2;          /* 2 x 64 */
    float* inv_cls;       /* 64 */
    float* red3;          /* 4 x 64: f16 peaks (rows in the forward, classes in dw) */
    /* Wg: unpadded swizzled tiles from the first 1024-byte aligned shared
     * address (the host reserves 1 KiB for it), so every atom is aligned. */
    __device__ __forceinline__ AdafaceFlashSmem(unsigned char* base, int64_t dim, bool wg) {
        ld = wg ? (int)dim : adaface_flash_ld(dim);
        tile = 64 * ld;
        const int p_tile = 64 * (wg ? 64 : ADAFACE_FLASH_PLD);
        stationary = (uint16_t*)(wg ? base + ((1024u - (adaface_smem_addr(base) & 1023u)) & 1023u) : base);
        hi = stationary + 3 * tile;
        lo = hi + p_tile;
        red = (float*)(lo + p_tile);
        red2 = red + 128;
        inv_cls = red2 + 128;
        red3 = inv_cls + 64;
    }
    /* Streamed tile b (0 or 1): W tiles (forward) or x tiles (dw). An
     * offset, not an array of two pointers, so that indexing by the buffer
     * parity stays in registers. */
    __device__ __forceinline__ uint16_t* stream(int b) const { return stationary + (1 + b) * tile; }
};

/* The wgmma issue sequences exist for D = 128, 256, 384 and 512 only; the
 * host plan never launches another depth, and a launch that did would trap
 * rather than read past the tiles. */
template <bool Wg>
__device__ __forceinline__ void adaface_flash_check_depth(int64_t dim) {
    if (Wg && (dim % 128 != 0 || dim > ADAFACE_FLASH_MAX_DIM)) __trap();
}

/* This thread's place in the warp layout (see the top of the file): the
 * mma fragment coordinates g = lane / 4 and t = lane % 4, its warp's 16 rows
 * (rw: rows of x in S and O; classes in dW), its warp's 32 classes in S
 * (cw), its depth half of the 64 x D outputs, and the n8 fragments per
 * depth half (nf = D / 16). */
struct AdafaceFlashLayout {
    int g, t, rw, cw, half, nf;
    __device__ __forceinline__ explicit AdafaceFlashLayout(int64_t dim) {
        const int lane = (int)threadIdx.x & 31;
        const int warp = (int)threadIdx.x >> 5;
        g = lane >> 2;
        t = lane & 3;
        rw = 16 * (warp & 3);
        cw = 32 * (warp >> 2);
        half = warp >> 2;
        nf = (int)(dim / 16);
    }
};

template <typename T, typename L, bool WithDx, bool Split, bool Wg>
__device__ void adaface_flash_forward_impl(const AdafaceTileParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    ADAFACE_DYNAMIC_SMEM(unsigned char, smem_base);
    AdafaceFlashSmem sm(smem_base, p.dim, Wg);
    adaface_flash_check_depth<Wg>(p.dim);

    const AdafaceFlashLayout lay(p.dim);
    const int g = lay.g, t = lay.t, rw = lay.rw, cw = lay.cw, half = lay.half, nf = lay.nf;
    const int64_t row0 = (int64_t)blockIdx.x * ADAFACE_FLASH_ROWS;
    const int64_t split = blockIdx.y;
    const bool validates = blockIdx.x == 0;
    const int64_t tiles_total = (p.classes + ADAFACE_FLASH_CLASSES - 1) / ADAFACE_FLASH_CLASSES;
    const uint16_t* x = (const uint16_t*)p.x;
    const uint16_t* w = (const uint16_t*)p.w;

    AdafaceFlashRows<L> rows;
    rows.load(p, row0, false);
    float run_max[2] = {-INFINITY, -INFINITY};
    float run_sum[2] = {0.0f, 0.0f};
    /* f16: P is scaled per row and tile by a power of two before the split
     * (its magnitudes leave f16's range: dlogit / ||w|| overflows for small
     * weight rows, probabilities fall below the normal range), and O is
     * kept as sigma O, rescaled exactly when sigma changes. */
    constexpr bool kScale = WithDx && adaface_is_f16<T>::value;
    float sigma[2] = {1.0f, 1.0f};
    float o[ADAFACE_FLASH_CHUNKS][32];
#pragma unroll
    for (int j = 0; j < ADAFACE_FLASH_CHUNKS; ++j)
#pragma unroll
        for (int i = 0; i < 32; ++i) o[j][i] = 0.0f;
    float s[16];

    adaface_flash_stage<Wg>(sm.stationary, sm.ld, x, row0, p.batch, p.dim);
    if (split < tiles_total)
        adaface_flash_stage<Wg>(sm.stream(0), sm.ld, w, split * ADAFACE_FLASH_CLASSES, p.classes, p.dim);
    cp_async_commit();

    int buf = 0;
    for (int64_t tile = split; tile < tiles_total; tile += p.splits, buf ^= 1) {
        const int64_t c0 = tile * ADAFACE_FLASH_CLASSES;
        const uint16_t* w_tile = sm.stream(buf);
        const bool has_next = tile + p.splits < tiles_total;
        cp_async_wait_group<0>();
        if (Wg) fence_proxy_async_shared(); /* the copies are read by wgmma (async proxy) */
        __syncthreads(); /* tile landed; the previous iteration is over everywhere (Wg: issued) */
        if (Wg) {
            /* The wait also retires the previous tile's O product, after
             * which its W buffer may be refilled. The class norms come after
             * it: divergent code while accumulators are in flight makes
             * ptxas serialise every wgmma of the kernel (C7520). */
            adaface_flash_logit_wgmma(s, sm.stationary, w_tile, p.dim, cw);
            adaface_flash_wgmma_drain(s, o);
            adaface_flash_class_norms<T, Wg>(w_tile, sm.ld, c0, p, sm.inv_cls, validates);
        } else {
            if (has_next)
                adaface_flash_stage<Wg>(sm.stream(buf ^ 1), sm.ld, w, (tile + p.splits) * ADAFACE_FLASH_CLASSES,
                                        p.classes, p.dim);
            cp_async_commit();
            adaface_flash_class_norms<T, Wg>(w_tile, sm.ld, c0, p, sm.inv_cls, validates);
            adaface_flash_logit_product<T>(s, sm.stationary, w_tile, sm.ld, p.dim, rw, cw);
        }
        __syncthreads(); /* inv_cls (Wg: and every warpgroup's previous O product has retired) */
        if (Wg) {
            if (has_next)
                adaface_flash_stage<Wg>(sm.stream(buf ^ 1), sm.ld, w, (tile + p.splits) * ADAFACE_FLASH_CLASSES,
                                        p.classes, p.dim);
            cp_async_commit();
        }

        /* Logits in place of the dot products; dlogit / ||w_c|| kept for P. */
        float dl[16];
        float local_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int f = 0; f < 4; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int h = i >> 1;
                const int lc = cw + 8 * f + 2 * t + (i & 1);
                const int64_t j = c0 + lc;
                float logit = -INFINITY;
                dl[4 * f + i] = 0.0f;
                if (rows.ok[h] && j < p.classes) {
                    const float dot = s[4 * f + i] * rows.inv_norm[h] * sm.inv_cls[lc];
                    const bool is_target = j == rows.label[h];
                    float dlogit;
                    logit = adaface_logit(dot, is_target, rows.a[h], rows.b[h], p.s, p.m1, p.eps, &dlogit);
                    if (is_target) {
                        const int64_t i_row = row0 + rw + g + 8 * h;
                        bool passes;
                        ((float*)p.target_logit)[i_row] = logit;
                        ((float*)p.target_cos)[i_row] = adaface_clamp_cosine(dot, p.eps, &passes);
                        if (WithDx) ((float*)p.target_dlogit)[i_row] = dlogit * sm.inv_cls[lc];
                    } else {
                        dl[4 * f + i] = dlogit * sm.inv_cls[lc];
                    }
                }
                s[4 * f + i] = logit;
                local_max[h] = fmaxf(local_max[h], logit);
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            local_max[h] = fmaxf(local_max[h], __shfl_xor_sync(0xffffffffu, local_max[h], 1));
            local_max[h] = fmaxf(local_max[h], __shfl_xor_sync(0xffffffffu, local_max[h], 2));
            if (t == 0) sm.red[half * 64 + rw + g + 8 * h] = local_max[h];
        }
        __syncthreads(); /* red (max) */

        float new_max[2], alpha[2], local_sum[2] = {0.0f, 0.0f};
        float pv[16], peak[2] = {0.0f, 0.0f};
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int lr = rw + g + 8 * h;
            const float tile_max = fmaxf(sm.red[lr], sm.red[64 + lr]);
            new_max[h] = fmaxf(run_max[h], tile_max);
            alpha[h] = run_max[h] == -INFINITY ? 0.0f : expf(run_max[h] - new_max[h]);
        }
#pragma unroll
        for (int f = 0; f < 4; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int h = i >> 1;
                const float e = s[4 * f + i] == -INFINITY ? 0.0f : expf(s[4 * f + i] - new_max[h]);
                local_sum[h] += e;
                const float v = e * dl[4 * f + i];
                if (kScale) {
                    pv[4 * f + i] = v;
                    peak[h] = fmaxf(peak[h], fabsf(v));
                } else if (WithDx) {
                    adaface_flash_put_split<T, Split, Wg>(sm.hi, sm.lo, rw + g + 8 * h, cw + 8 * f + 2 * t + (i & 1),
                                                          v);
                }
            }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            local_sum[h] += __shfl_xor_sync(0xffffffffu, local_sum[h], 1);
            local_sum[h] += __shfl_xor_sync(0xffffffffu, local_sum[h], 2);
            if (t == 0) sm.red2[half * 64 + rw + g + 8 * h] = local_sum[h];
        }
        float o_scale[2] = {alpha[0], alpha[1]};
        if (kScale) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                peak[h] = fmaxf(peak[h], __shfl_xor_sync(0xffffffffu, peak[h], 1));
                peak[h] = fmaxf(peak[h], __shfl_xor_sync(0xffffffffu, peak[h], 2));
                if (t == 0) sm.red3[half * 64 + rw + g + 8 * h] = peak[h];
            }
            __syncthreads(); /* red3 (row peaks of P) */
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int lr = rw + g + 8 * h;
                const float next = adaface_grad16_scale(fmaxf(sm.red3[lr], sm.red3[64 + lr]));
                o_scale[h] = alpha[h] * (next / sigma[h]); /* powers of two: exact */
                sigma[h] = next;
            }
#pragma unroll
            for (int f = 0; f < 4; ++f)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    adaface_flash_put_split<T, Split, Wg>(sm.hi, sm.lo, rw + g + 8 * (i >> 1),
                                                          cw + 8 * f + 2 * t + (i & 1), pv[4 * f + i] * sigma[i >> 1]);
        }
        if (Wg && WithDx) fence_proxy_async_shared(); /* P is read by wgmma */
        __syncthreads(); /* red2 (sums), P */

#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int lr = rw + g + 8 * h;
            run_sum[h] = run_sum[h] * alpha[h] + (sm.red2[lr] + sm.red2[64 + lr]);
            run_max[h] = new_max[h];
        }
        if (WithDx) {
#pragma unroll
            for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
                float* c = ADAFACE_FLASH_FRAG(o, f);
                c[0] *= o_scale[0];
                c[1] *= o_scale[0];
                c[2] *= o_scale[1];
                c[3] *= o_scale[1];
            }
            if (Wg) {
                /* Retired before the next iteration: O in flight across the
                 * loop's barrier and logit product made ptxas serialise the
                 * products (C7515 / C7517). */
                adaface_flash_grad_wgmma<Split>(o, sm.hi, sm.lo, w_tile, half * (int)(p.dim / 2), (int)(p.dim / 128));
                adaface_flash_wgmma_drain(s, o);
            }
            else
                adaface_flash_grad_product<T, false, Split>(o, sm.hi, sm.lo, rw, w_tile, sm.ld, half * (int)(p.dim / 2),
                                                         nf);
        }
    }
    cp_async_wait_group<0>();
    if (Wg) adaface_flash_wgmma_drain(s, o);

    /* Per-split results: running max and sum (depth-half 0 warps), O. */
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int64_t i = row0 + rw + g + 8 * h;
        if (!rows.ok[h]) continue;
        if (half == 0 && t == 0) {
            ((float*)p.partial_max)[split * p.batch + i] = run_max[h];
            ((float*)p.partial_sum)[split * p.batch + i] = run_sum[h];
        }
        if (WithDx) {
            float* out = (float*)p.dx_partial + (split * p.batch + i) * p.dim + half * (p.dim / 2) + 2 * t;
            const float unscale = 1.0f / sigma[h];
#pragma unroll
            for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
                if (f < nf) {
                    const float* c = ADAFACE_FLASH_FRAG(o, f);
                    out[8 * f] = c[2 * h] * unscale;
                    out[8 * f + 1] = c[2 * h + 1] * unscale;
                }
            }
        }
    }
}

template <typename T, typename L, bool Split, bool Wg>
__device__ void adaface_flash_dw_impl(const AdafaceTileParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    ADAFACE_DYNAMIC_SMEM(unsigned char, smem_base);
    AdafaceFlashSmem sm(smem_base, p.dim, Wg);
    adaface_flash_check_depth<Wg>(p.dim);

    const AdafaceFlashLayout lay(p.dim);
    const int g = lay.g, t = lay.t, rw = lay.rw, cw = lay.cw, half = lay.half, nf = lay.nf;
    const int64_t c0 = (int64_t)blockIdx.x * ADAFACE_FLASH_CLASSES;
    const int64_t row_tiles = (p.batch + ADAFACE_FLASH_ROWS - 1) / ADAFACE_FLASH_ROWS;
    const uint16_t* x = (const uint16_t*)p.x;
    const uint16_t* w = (const uint16_t*)p.w;

    adaface_flash_stage<Wg>(sm.stationary, sm.ld, w, c0, p.classes, p.dim);
    adaface_flash_stage<Wg>(sm.stream(0), sm.ld, x, 0, p.batch, p.dim);
    cp_async_commit();
    if (threadIdx.x < 64) {
        const int64_t j = c0 + threadIdx.x;
        sm.inv_cls[threadIdx.x] = j < p.classes ? 1.0f / ((const float*)p.class_norm)[j] : 0.0f;
    }

    float acc[ADAFACE_FLASH_CHUNKS][32];
#pragma unroll
    for (int j = 0; j < ADAFACE_FLASH_CHUNKS; ++j)
#pragma unroll
        for (int i = 0; i < 32; ++i) acc[j][i] = 0.0f;
    float s[16];
    /* f16: A is scaled per class and row tile by a power of two before the
     * split, and acc kept as sigma acc per class (its rows), as in the
     * forward. */
    constexpr bool kScale = adaface_is_f16<T>::value;
    float sigma[2] = {1.0f, 1.0f};

    for (int64_t rt = 0; rt < row_tiles; ++rt) {
        const int buf = (int)(rt & 1);
        const int64_t row0 = rt * ADAFACE_FLASH_ROWS;
        const bool has_next = rt + 1 < row_tiles;
        AdafaceFlashRows<L> rows;
        rows.load(p, row0, true);
        cp_async_wait_group<0>();
        if (Wg) fence_proxy_async_shared();
        __syncthreads(); /* tile landed; the previous iteration is over everywhere (Wg: issued) */
        if (Wg) {
            adaface_flash_logit_wgmma(s, sm.stream(buf), sm.stationary, p.dim, cw);
            adaface_flash_wgmma_drain(s, acc);
            __syncthreads(); /* every warpgroup's previous dW product has retired: x buffer and A free */
        }
        if (has_next)
            adaface_flash_stage<Wg>(sm.stream(buf ^ 1), sm.ld, x, row0 + ADAFACE_FLASH_ROWS, p.batch, p.dim);
        cp_async_commit();

        if (!Wg) adaface_flash_logit_product<T>(s, sm.stream(buf), sm.stationary, sm.ld, p.dim, rw, cw);
        float av[16];
#pragma unroll
        for (int f = 0; f < 4; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int h = i >> 1;
                const int lc = cw + 8 * f + 2 * t + (i & 1);
                const int64_t j = c0 + lc;
                float a = 0.0f;
                if (rows.ok[h] && j < p.classes) {
                    const float dot = s[4 * f + i] * rows.inv_norm[h] * sm.inv_cls[lc];
                    const bool is_target = j == rows.label[h];
                    float dlogit;
                    const float logit =
                        adaface_logit(dot, is_target, rows.a[h], rows.b[h], p.s, p.m1, p.eps, &dlogit);
                    const float prob = expf(logit - rows.lse[h]);
                    a = (prob - (is_target ? 1.0f : 0.0f)) * p.inv_batch * dlogit * rows.inv_norm[h] *
                        sm.inv_cls[lc];
                }
                /* wgmma takes A^T (classes x rows) K-major: stored transposed;
                 * mma.sync reads the row-major tile through ldmatrix.trans. */
                if (kScale)
                    av[4 * f + i] = a;
                else if (Wg)
                    adaface_flash_put_split<T, Split, Wg>(sm.hi, sm.lo, lc, rw + g + 8 * h, a);
                else
                    adaface_flash_put_split<T, Split, Wg>(sm.hi, sm.lo, rw + g + 8 * h, lc, a);
            }
        if (kScale) {
            /* Class peaks over the tile's rows: the quad's 8 row groups by
             * shuffles, the 4 row warps through red3. */
#pragma unroll
            for (int f = 0; f < 4; ++f)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float pk = fmaxf(fabsf(av[4 * f + e]), fabsf(av[4 * f + 2 + e]));
                    pk = fmaxf(pk, __shfl_xor_sync(0xffffffffu, pk, 4));
                    pk = fmaxf(pk, __shfl_xor_sync(0xffffffffu, pk, 8));
                    pk = fmaxf(pk, __shfl_xor_sync(0xffffffffu, pk, 16));
                    if (g == 0) sm.red3[(rw / 16) * 64 + cw + 8 * f + 2 * t + e] = pk;
                }
            __syncthreads(); /* red3 (class peaks of A) */
            auto class_scale = [&](int lc) {
                const float pk =
                    fmaxf(fmaxf(sm.red3[lc], sm.red3[64 + lc]), fmaxf(sm.red3[128 + lc], sm.red3[192 + lc]));
                return adaface_grad16_scale(pk);
            };
#pragma unroll
            for (int f = 0; f < 4; ++f)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int lc = cw + 8 * f + 2 * t + e;
                    const float sc = class_scale(lc);
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        adaface_flash_put_split<T, Split, Wg>(sm.hi, sm.lo, rw + g + 8 * h, lc,
                                                              av[4 * f + 2 * h + e] * sc);
                }
            /* The accumulator rows (classes rw + g + 8h) move to the new
             * scales (powers of two: exact). */
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float next = class_scale(rw + g + 8 * h);
                const float ratio = next / sigma[h];
                sigma[h] = next;
#pragma unroll
                for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
                    float* c = ADAFACE_FLASH_FRAG(acc, f);
                    c[2 * h] *= ratio;
                    c[2 * h + 1] *= ratio;
                }
            }
        }
        if (Wg) fence_proxy_async_shared();
        __syncthreads(); /* A */
        if (Wg)
            adaface_flash_grad_wgmma<Split>(acc, sm.hi, sm.lo, sm.stream(buf), half * (int)(p.dim / 2),
                                            (int)(p.dim / 128));
        else
            adaface_flash_grad_product<T, true, Split>(acc, sm.hi, sm.lo, rw, sm.stream(buf), sm.ld,
                                                    half * (int)(p.dim / 2), nf);
    }
    cp_async_wait_group<0>();
    if (Wg) adaface_flash_wgmma_drain(s, acc);

    if (kScale) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float unscale = 1.0f / sigma[h];
#pragma unroll
            for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
                float* c = ADAFACE_FLASH_FRAG(acc, f);
                c[2 * h] *= unscale;
                c[2 * h + 1] *= unscale;
            }
        }
    }

    /* Jacobian of w -> w / ||w||: dW = acc - w (w . acc) / ||w||^2, with the
     * row dot reduced over the quad, then over the two depth halves. */
    float along[2] = {0.0f, 0.0f};
#pragma unroll
    for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
        if (f < nf) {
            const int k = half * (int)(p.dim / 2) + 8 * f + 2 * t;
            const float* c = ADAFACE_FLASH_FRAG(acc, f);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int h = i >> 1;
                const float wv =
                    adaface_flash_decode<T>(sm.stationary[adaface_flash_off<Wg>(rw + g + 8 * h, k + (i & 1), sm.ld)]);
                along[h] = fmaf(wv, c[i], along[h]);
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        along[h] += __shfl_xor_sync(0xffffffffu, along[h], 1);
        along[h] += __shfl_xor_sync(0xffffffffu, along[h], 2);
        if (t == 0) sm.red[half * 64 + rw + g + 8 * h] = along[h];
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int lc = rw + g + 8 * h;
        const int64_t j = c0 + lc;
        if (j >= p.classes) continue;
        const float inv = sm.inv_cls[lc];
        const float scale = (sm.red[lc] + sm.red[64 + lc]) * inv * inv;
        float* out = (float*)p.dw + j * p.dim + half * (p.dim / 2) + 2 * t;
#pragma unroll
        for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
            if (f < nf) {
                const int k = half * (int)(p.dim / 2) + 8 * f + 2 * t;
                const uint16_t* wr = sm.stationary + adaface_flash_off<Wg>(lc, k, sm.ld);
                const float* c = ADAFACE_FLASH_FRAG(acc, f);
                out[8 * f] = c[2 * h] - adaface_flash_decode<T>(wr[0]) * scale;
                out[8 * f + 1] = c[2 * h + 1] - adaface_flash_decode<T>(wr[1]) * scale;
            }
        }
    }
}

template <typename T, typename L>
__device__ void adaface_flash_dx_finish_impl(const AdafaceTileParams& p) {
    const AdafaceStepRecord* rec = (const AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    const T* x = (const T*)p.x;
    const T* w = (const T*)p.w;
    const float* o = (const float*)p.dx_partial;
    const float* pmax = (const float*)p.partial_max;
    float* dx = (float*)p.dx;
    const int64_t i = blockIdx.x;
    const int64_t dim = p.dim;
    const float lse = ((const float*)p.lse)[i];
    const int64_t y = adaface_label_at((const L*)p.labels, i) - p.class_offset;
    /* A class-sharded step: the target term belongs to the shard holding
     * the label (always this one when W holds every class). */
    const bool has_target = y >= 0 && y < p.classes;
    const float p_target = has_target ? expf(((const float*)p.target_logit)[i] - lse) : 0.0f;
    const float target_coef = has_target ? (p_target - 1.0f) * ((const float*)p.target_dlogit)[i] : 0.0f;
    for (int64_t k = threadIdx.x; k < dim; k += ADAFACE_THREADS) {
        float g = 0.0f;
        for (int64_t s = 0; s < p.splits; ++s) {
            const float m = pmax[s * p.batch + i];
            if (m != -INFINITY) g = fmaf(expf(m - lse), o[(s * p.batch + i) * dim + k], g);
        }
        if (has_target) g = fmaf(target_coef, to_float(w[y * dim + k]), g);
        dx[i * dim + k] = g * p.inv_batch;
    }
    adaface_normalise_row_grad(x, dx, i, dim, 1.0f / ((const float*)p.row_norm)[i]);
}

/* The mma.sync entries (sm_80+), bf16 and f16, and the bf16 wgmma twins
 * (`_wg`, sm_90a). */
#define ADAFACE_FLASH_TILE_ENTRIES(T, e, L, suffix, wg, Wg)                                                       \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_forward_##e##_##suffix, AdafaceTileParams, ADAFACE_THREADS, 1,      \
                          (adaface_flash_forward_impl<T, L, false, true, Wg>(p)))                                \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_forward_dx_##e##_##suffix, AdafaceTileParams, ADAFACE_THREADS, 1,   \
                          (adaface_flash_forward_impl<T, L, true, true, Wg>(p)))                                 \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_forward_dx_single_##e##_##suffix, AdafaceTileParams,               \
                          ADAFACE_THREADS, 1, (adaface_flash_forward_impl<T, L, true, false, Wg>(p)))            \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_dw_##e##_##suffix, AdafaceTileParams, ADAFACE_THREADS, 1,           \
                          (adaface_flash_dw_impl<T, L, true, Wg>(p)))                                            \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_dw_single_##e##_##suffix, AdafaceTileParams, ADAFACE_THREADS, 1,    \
                          (adaface_flash_dw_impl<T, L, false, Wg>(p)))

#define ADAFACE_FLASH_ENTRIES(L, suffix)                                                                         \
    ADAFACE_FLASH_TILE_ENTRIES(adaface_bf16, bf16, L, suffix, , false)                                           \
    ADAFACE_FLASH_TILE_ENTRIES(adaface_bf16, bf16, L, suffix, _wg, true)                                         \
    ADAFACE_FLASH_TILE_ENTRIES(adaface_f16, f16, L, suffix, , false)                                             \
    ADAFACE_KERNEL(adaface_flash_dx_finish_bf16_##suffix, AdafaceTileParams,                                     \
                   (adaface_flash_dx_finish_impl<adaface_bf16, L>(p)))                                           \
    ADAFACE_KERNEL(adaface_flash_dx_finish_f16_##suffix, AdafaceTileParams,                                      \
                   (adaface_flash_dx_finish_impl<adaface_f16, L>(p)))

ADAFACE_FLASH_ENTRIES(int32_t, i32)
ADAFACE_FLASH_ENTRIES(int64_t, i64)
