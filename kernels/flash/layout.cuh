/* The flash kernels' tiles, warp layout and shared memory, common to both
 * instruction sets (mainloop_mma.cuh, mainloop_wgmma.cuh).
 *
 * The flash kernels take bf16 or f16 inputs on tensor cores: 64-row x
 * 64-class tiles, operands staged with cp.async, the whole depth D (<= 512)
 * resident in shared memory, accumulators in registers. A training step is
 *
 *   stats -> flash_forward_dx -> combine -> flash_dw -> flash_dx_finish
 *
 * (../stats.cu, flash_forward.cu, ../combine.cu, flash_dw.cu,
 * flash_dx_finish.cu) and does the four 2BDC products of the fused floor,
 * no more:
 *
 * adaface_flash_forward[_dx]_{bf16,f16}_*: grid (ceil(B / 64), splits). Block
 *   (r, k) keeps its 64 rows of x in shared memory and streams the class
 *   tiles k, k + splits, ... (double-buffered). Per tile: S = x . W^T, the
 *   margin epilogue, the running max and sum-exp per row (online softmax);
 *   with _dx also the running, unnormalised row gradient
 *       O_r = sum_c exp(l_rc - m_r) dlogit_rc / ||w_c|| w_c   (c != y_r),
 *   rescaled whenever the running max moves, as FlashAttention's forward
 *   accumulates its output. dX thus needs no second pass over W: per split
 *   it leaves O (B x D), m and l, i.e. splits * B * D floats, not B x C.
 * adaface_flash_dx_finish_{bf16,f16}_*: grid (B). dX_r = (sum_k exp(m_kr - lse_r)
 *   O_kr + (p_ry - 1) dlogit_ry / ||w_y|| w_y) / B, then the Jacobian of
 *   x -> x / ||x||. The target term is added in f32 here rather than in the
 *   16-bit product, so p - 1 does not cancel in low precision.
 * adaface_flash_dw_{bf16,f16}_*: grid (min(ceil(C / 64), one block per SM)),
 *   persistent. Per class tile j (blockIdx.x, + gridDim.x, ...) the block
 *   keeps its 64 rows of W in shared memory and streams all row tiles of x:
 *   S again, then A = (p - [c = y]) dlogit / (B ||x_r|| ||w_c||),
 *   dW_tile += A^T . x with the 64 x D accumulator in registers; the
 *   Jacobian of w -> w / ||w|| at the end; dW written once, without atomics
 *   (the block owns its classes), while the next class tile's W loads.
 *
 * Gradient products multiply A (or P) split into 16-bit hi + lo by the raw
 * 16-bit operand, keeping about 16 significant bits (dX and dW to ~3e-6 of
 * the f64 reference; f16 scales each tile by a power of two first, see
 * epilogue.cuh), or, in the `_single` entries, A rounded once to 16 bits as
 * FlashAttention rounds P (half the gradient mma work; ~1e-3 relative
 * error, the naive bf16 path's level). Every sum has a fixed order: same
 * inputs, same bits.
 *
 * Warp layout (8 warps): the logit tile S (64 x 64) gives warp w rows
 * 16 (w % 4) .. + 16 and classes 32 (w / 4) .. + 32; the 64 x D output
 * tiles (O, and dW with classes as rows) give warp w the same 16 rows and
 * the depth half w / 4. So a thread's rows are the same in S and in O.
 *
 * Two instruction sets share the kernels (template parameter Wg):
 *   - mma.sync (sm_80+, mainloop_mma.cuh): operands through ldmatrix from
 *     rows padded to an odd number of 16-byte chunks; every product
 *     completes in program order.
 *   - wgmma (sm_90a, mainloop_wgmma.cuh, the bf16 `_wg` entries,
 *     D % 128 == 0): warps 0-3 and 4-7 are the two warpgroups, and the
 *     layout above is exactly wgmma's accumulator layout (warpgroup = depth
 *     half = class half of S). Tiles are stored in the 128-byte-swizzle
 *     layout wgmma reads through matrix descriptors (1024-byte atoms of 8
 *     rows x 64 elements, 16-byte chunks XORed with the row), and the
 *     products are asynchronous: the logit product runs while the CUDA
 *     cores compute the class norms, and each tile's gradient product (O or
 *     dW) runs while the next iteration waits for its tile and issues its
 *     logit product. */
#ifndef ADAFACE_FLASH_LAYOUT_CUH
#define ADAFACE_FLASH_LAYOUT_CUH

#include "common.cuh"

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

/* The element type's bits as a float (bf16 or f16). */
template <typename T>
__device__ __forceinline__ float adaface_flash_decode(uint16_t bits) {
    return adaface_is_f16<T>::value ? adaface_f16_bits_to_f32(bits) : adaface_bf16_bits_to_f32(bits);
}

/* Element offset of (r, k) in a staged 64-row tile of row stride ld.
 * mma.sync: row-major, padded. wgmma: 128-byte-swizzle atoms of 8 rows x
 * 64 elements (1024 bytes), stored atom column after atom column (8 atoms
 * per column for 64 rows), the 16-byte chunk index XORed with r % 8. The
 * same tile is then a K-major operand (rows = M or N, k = K) with stride
 * byte offset 1024, and an MN-major one (rows = K, k = N) with stride byte
 * offset 1024 and leading byte offset 8192 (one atom column). */
template <bool Wg>
__device__ __forceinline__ int adaface_flash_off(int r, int k, int ld) {
    if (Wg) return (((k >> 6) * 8 + (r >> 3)) << 9) + ((r & 7) << 6) + ((((k >> 3) & 7) ^ (r & 7)) << 3) + (k & 7);
    return r * ld + k;
}

/* Issues the cp.async copies of rows [row0, row0 + 64) of a row-major
 * (rows x dim) 16-bit matrix into dst (stride ld); rows past `rows` are
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

/* Accumulators of a 64 x D output tile (O, or dW) for one thread: chunk j
 * holds the n8 fragments 8j .. 8j + 7 of its depth half (fragment f at
 * [f / 8][4 (f % 8)], four floats), so a chunk is the 32 floats of one
 * m64n64 wgmma and fragment f is one mma.m16n8 accumulator. */
#define ADAFACE_FLASH_CHUNKS (ADAFACE_FLASH_NF / 8)
#define ADAFACE_FLASH_FRAG(acc, f) (&(acc)[(f) >> 3][4 * ((f) & 7)])

/* Stores the pair (a, b) of an accumulator fragment at out[0], out[1]: one
 * 8-byte store where `paired` (the caller's buffer is 8-byte aligned; the
 * pair's offset is even in every flash layout), else two 4-byte stores
 * (a caller's dW at an odd f32 offset). */
__device__ __forceinline__ void adaface_flash_store_pair(float* out, float a, float b, bool paired) {
    if (paired) {
        adaface_check_aligned(out, 8);
        *reinterpret_cast<float2*>(out) = make_float2(a, b);
    } else {
        out[0] = a;
        out[1] = b;
    }
}

/* Per-row constants of the two rows (g, g + 8 of its warp's 16) a thread
 * holds in the S and output layouts. */
template <typename L>
struct AdafaceFlashRows {
    int64_t label[2];
    float a[2], b[2], thr[2], inv_norm[2];
    float lse2[2]; /* the row's log-sum-exp times log2(e) (dw: p = 2^(logit log2(e) - lse2)) */
    float t; /* CurricularFace's t (detached; unused while thr is +inf) */
    bool ok[2];
    __device__ __forceinline__ void load(const AdafaceTileParams& p, int64_t row0, bool with_lse) {
        const int lane = (int)threadIdx.x & 31;
        const int warp = (int)threadIdx.x >> 5;
        t = (float)((const AdafaceStepRecord*)p.record)->state_t;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t i = row0 + 16 * (warp & 3) + (lane >> 2) + 8 * h;
            ok[h] = i < p.batch;
            label[h] = ok[h] ? adaface_label_at((const L*)p.labels, i) - p.class_offset : -1;
            a[h] = ok[h] ? ((const float*)p.row_a)[i] : 0.0f;
            b[h] = ok[h] ? ((const float*)p.row_b)[i] : 0.0f;
            thr[h] = ok[h] ? ((const float*)p.row_thr)[i] : INFINITY;
            inv_norm[h] = ok[h] ? 1.0f / ((const float*)p.row_norm)[i] : 0.0f;
            lse2[h] = (ok[h] && with_lse) ? ((const float*)p.lse)[i] * ADAFACE_LOG2E_F : 0.0f;
        }
    }
};

/* The class norms of a staged 64 x D tile of W, 4 threads per class in a
 * fixed order, in two halves so the wgmma forward can run the first while
 * its logit product is in flight.
 *
 * adaface_flash_sq8: the sum of squares of the eight 16-bit elements at p
 * (one 16-byte load). */
template <typename T>
__device__ __forceinline__ float adaface_flash_sq8(const uint16_t* p) {
    uint32_t v8[4];
    adaface_ld_shared_16(v8, p);
    float sq = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const float lo = adaface_flash_decode<T>((uint16_t)(v8[e] & 0xffffu));
        const float hi = adaface_flash_decode<T>((uint16_t)(v8[e] >> 16));
        sq = fmaf(lo, lo, sq);
        sq = fmaf(hi, hi, sq);
    }
    return sq;
}

/* adaface_flash_class_sq: this thread's quarter of ||w_c||^2 (class c =
 * thread / 4), 16-byte loads 32 elements apart: Steps of them (unrolled),
 * or as many as the depth D % 32 == 0 takes (Steps = 0, a loop). */
template <typename T, bool Wg, int Steps = 0>
__device__ __forceinline__ float adaface_flash_class_sq(const uint16_t* w_tile, int ld, int64_t dim) {
    const int c = (int)threadIdx.x >> 2;
    const int q = (int)threadIdx.x & 3;
    float sq = 0.0f;
    if (Steps > 0) {
#pragma unroll
        for (int i = 0; i < Steps; ++i)
            sq += adaface_flash_sq8<T>(w_tile + adaface_flash_off<Wg>(c, 8 * q + 32 * i, ld));
    } else {
        for (int k = 8 * q; k < (int)dim; k += 32)
            sq += adaface_flash_sq8<T>(w_tile + adaface_flash_off<Wg>(c, k, ld));
    }
    return sq;
}

/* adaface_flash_class_norms_finish: from the quarters, inv_cls[c] =
 * 1 / ||w_c||; when `validate`, also stores ||w_c|| and records non-finite
 * elements, zero and overflowing norms (the checks the tiled forward makes
 * on the elements it stages). */
template <typename T, bool Wg>
__device__ __forceinline__ void adaface_flash_class_norms_finish(float sq, const uint16_t* w_tile, int ld, int64_t c0,
                                                                 const AdafaceTileParams& p, float* inv_cls,
                                                                 bool validate) {
    const int c = (int)threadIdx.x >> 2;
    const int q = (int)threadIdx.x & 3;
    const int64_t j = c0 + c;
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

/* Both halves in a row (the mma.sync forward). */
template <typename T, bool Wg>
__device__ __forceinline__ void adaface_flash_class_norms(const uint16_t* w_tile, int ld, int64_t c0,
                                                          const AdafaceTileParams& p, float* inv_cls,
                                                          bool validate) {
    adaface_flash_class_norms_finish<T, Wg>(adaface_flash_class_sq<T, Wg>(w_tile, ld, p.dim), w_tile, ld, c0, p,
                                            inv_cls, validate);
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

/* This thread's place in the warp layout (see the top of this file): the
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

#endif  // ADAFACE_FLASH_LAYOUT_CUH
