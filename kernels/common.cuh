/* Helpers shared by the AdaFace kernels: the step's error record, fixed-order
 * reductions, tile staging and the tile product (the seam where tensor-core
 * code replaces the SIMT loop). */
#ifndef ADAFACE_COMMON_CUH
#define ADAFACE_COMMON_CUH

#include "intrinsics.cuh"
#include "adaface_params.h"
#include "math.cuh"

#define ADAFACE_NO_ERROR 0xffffffffffffffffull
#define ADAFACE_WARPS (ADAFACE_THREADS / 32)

/* Records an error; the smallest key wins (the host's reporting order). */
__device__ __forceinline__ void adaface_record_error(AdafaceStepRecord* rec, unsigned long long kind,
                                                     unsigned long long detail) {
    /* uint64_t is unsigned long (LP64); the atomic takes unsigned long long,
     * the same size and representation. */
    atomicMin((unsigned long long*)&rec->error_key, (kind << 56) | detail);
}

/* The record's error key as the other blocks left it so far. */
__device__ __forceinline__ uint64_t adaface_error_key(const AdafaceStepRecord* rec) {
    return *(volatile const uint64_t*)&rec->error_key;
}

/* Whether an earlier kernel of this step (or this one, so far) recorded an
 * error, read by thread 0 and broadcast, so the whole block agrees. Every
 * kernel calls it before anything else and returns when it is true. */
__device__ __forceinline__ bool adaface_block_should_abort(const AdafaceStepRecord* rec) {
    __shared__ int abort_flag;
    if (threadIdx.x == 0) {
        abort_flag = adaface_error_key(rec) != ADAFACE_NO_ERROR;
    }
    __syncthreads();
    const bool result = abort_flag != 0;
    __syncthreads();
    return result;
}

/* Sum over the warp by a fixed butterfly: every lane gets a result, lane 0's
 * is the one used, and it is the same on every run. */
__device__ __forceinline__ float adaface_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

/* Block-wide sum in a fixed order (per-thread partials -> tree in shared
 * memory). Returns the total to every thread. */
__device__ __forceinline__ double adaface_block_sum_f64(double v) {
    __shared__ double buf[ADAFACE_THREADS];
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int stride = ADAFACE_THREADS / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    const double total = buf[0];
    __syncthreads();
    return total;
}

__device__ __forceinline__ float adaface_block_sum_f32(float v) {
    __shared__ float warp_sums[ADAFACE_WARPS];
    v = adaface_warp_sum(v);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < ADAFACE_WARPS; ++w) total += warp_sums[w];
    __syncthreads();
    return total;
}

/* The gradient with respect to x_i / ||x_i||, held in dx[i], becomes the one
 * with respect to x_i (the Jacobian of the normalisation), a block per row:
 * dx = (g - xh (xh . g)) / ||x|| + radial xh, with xh . g summed in a fixed
 * order; radial is dL/d||x_i|| where the loss depends on the norm itself
 * (MagFace), else 0. */
template <typename T>
__device__ __forceinline__ void adaface_normalise_row_grad(const T* x, float* dx, int64_t i, int64_t dim,
                                                           float inv_n, float radial) {
    float along = 0.0f;
    for (int64_t k = threadIdx.x; k < dim; k += ADAFACE_THREADS)
        along = fmaf(to_float(x[i * dim + k]), dx[i * dim + k], along);
    along = adaface_block_sum_f32(along) * inv_n;
    for (int64_t k = threadIdx.x; k < dim; k += ADAFACE_THREADS) {
        const float xh = to_float(x[i * dim + k]) * inv_n;
        dx[i * dim + k] = fmaf(radial, xh, (dx[i * dim + k] - xh * along) * inv_n);
    }
}

__device__ __forceinline__ int64_t adaface_label_at(const int32_t* labels, int64_t i) {
    return (int64_t)labels[i];
}
__device__ __forceinline__ int64_t adaface_label_at(const int64_t* labels, int64_t i) {
    return (int64_t)labels[i];
}

/* Shared-memory tiles of one depth slice, stored k-major with one column of
 * padding so that both the staging stores and the product's loads are free
 * of bank conflicts (the SIMT product; f32 inputs). */
struct AdafaceTiles {
    float x[ADAFACE_TILE_DEPTH][ADAFACE_TILE_ROWS + 1];
    float w[ADAFACE_TILE_DEPTH][ADAFACE_TILE_CLASSES + 1];
};

/* Row stride, in 32-bit words, of the 16-bit tiles of the tensor-core
 * product: DEPTH / 2 words of data plus 4 of padding (80 bytes), so the
 * fragment loads of a warp (8 rows x 4 consecutive words) hit 32 different
 * banks. */
#define ADAFACE_TILE16_STRIDE (ADAFACE_TILE_DEPTH / 2 + 4)

/* The 16-bit (bf16 or f16) copy of one depth slice for the mma product:
 * row-major, depth contiguous, two elements per word (lower k in the low
 * half, as the mma fragments take them). */
struct AdafaceTiles16 {
    uint32_t x[ADAFACE_TILE_ROWS][ADAFACE_TILE16_STRIDE];
    uint32_t w[ADAFACE_TILE_CLASSES][ADAFACE_TILE16_STRIDE];
};

/* Raw storage bits of a 16-bit element (0 for f32, which never uses them). */
__device__ __forceinline__ uint16_t adaface_raw_bits(float) { return 0; }
__device__ __forceinline__ uint16_t adaface_raw_bits(adaface_bf16 v) { return v.bits; }
__device__ __forceinline__ uint16_t adaface_raw_bits(adaface_f16 v) { return v.bits; }

/* Stores one element of a 16-bit tile (row r, depth kk). */
__device__ __forceinline__ void adaface_tile16_put(uint32_t (*dst)[ADAFACE_TILE16_STRIDE], int r, int kk,
                                                   uint16_t bits) {
    ((uint16_t*)&dst[r][0])[kk] = bits;
}

/* Stages x[row0 .. row0 + ROWS, k0 .. k0 + DEPTH] times row_scale[r]
 * (zero outside the matrix: the K tail is zero padding) into dst (f32,
 * k-major) and/or dst16 (raw 16-bit bits, unscaled; row_scale must be null
 * then). Either destination may be null. */
template <typename T>
__device__ __forceinline__ void adaface_stage_rows(float (*dst)[ADAFACE_TILE_ROWS + 1], const T* src,
                                                   int64_t row0, int64_t rows, int64_t k0, int64_t dim,
                                                   const float* row_scale,
                                                   uint32_t (*dst16)[ADAFACE_TILE16_STRIDE] = 0) {
    for (int e = threadIdx.x; e < ADAFACE_TILE_ROWS * ADAFACE_TILE_DEPTH; e += ADAFACE_THREADS) {
        const int kk = e % ADAFACE_TILE_DEPTH;
        const int r = e / ADAFACE_TILE_DEPTH;
        const int64_t row = row0 + r;
        const int64_t k = k0 + kk;
        float v = 0.0f;
        uint16_t bits = 0;
        if (row < rows && k < dim) {
            const T raw = src[row * dim + k];
            bits = adaface_raw_bits(raw);
            v = to_float(raw);
            if (row_scale) v *= row_scale[r];
        }
        if (dst) dst[kk][r] = v;
        if (dst16) adaface_tile16_put(dst16, r, kk, bits);
    }
}

/* Stages W[c0 .. c0 + CLASSES, k0 .. k0 + DEPTH] times class_scale[c] into
 * dst and/or dst16 (as adaface_stage_rows). When rec is not null, every
 * element read is checked for NaN and infinity (the forward's validation of
 * W, done on the tiles the product reads). */
template <typename T>
__device__ __forceinline__ void adaface_stage_classes(float (*dst)[ADAFACE_TILE_CLASSES + 1], const T* src,
                                                      int64_t c0, int64_t classes, int64_t k0, int64_t dim,
                                                      const float* class_scale, AdafaceStepRecord* rec,
                                                      uint32_t (*dst16)[ADAFACE_TILE16_STRIDE] = 0) {
    for (int e = threadIdx.x; e < ADAFACE_TILE_CLASSES * ADAFACE_TILE_DEPTH; e += ADAFACE_THREADS) {
        const int kk = e % ADAFACE_TILE_DEPTH;
        const int c = e / ADAFACE_TILE_DEPTH;
        const int64_t j = c0 + c;
        const int64_t k = k0 + kk;
        float v = 0.0f;
        uint16_t bits = 0;
        if (j < classes && k < dim) {
            const int64_t idx = j * dim + k;
            const T raw = src[idx];
            bits = adaface_raw_bits(raw);
            v = to_float(raw);
            if (rec && !adaface_is_finite(v)) {
                adaface_record_error(rec, ADAFACE_ERR_NONFINITE_W, (unsigned long long)idx);
            }
            if (class_scale) v *= class_scale[c];
        }
        if (dst) dst[kk][c] = v;
        if (dst16) adaface_tile16_put(dst16, c, kk, bits);
    }
}

/* Thread layout of a ROWS x CLASSES output tile: 16 x 16 threads, each with
 * 2 rows (2 ty, 2 ty + 1) and 4 classes (tx + 16 q). The 16 threads of a row
 * pair are 16 consecutive lanes of one warp, so per-row reductions over the
 * tile are shuffles within half a warp. */
#define ADAFACE_ACC_ROWS 2
#define ADAFACE_ACC_COLS 4

__device__ __forceinline__ int adaface_acc_row(int r) { return (int)(threadIdx.x / 16) * ADAFACE_ACC_ROWS + r; }
__device__ __forceinline__ int adaface_acc_col(int q) { return (int)(threadIdx.x % 16) + 16 * q; }

/* acc += X_tile . W_tile^T over one depth slice: the tile product. This is
 * the seam for tensor cores: the mma product keeps the signature
 * and the accumulator layout contract (adaface_acc_row / adaface_acc_col). */
__device__ __forceinline__ void adaface_tile_product(float acc[ADAFACE_ACC_ROWS][ADAFACE_ACC_COLS],
                                                     const AdafaceTiles* tiles) {
    const int r0 = adaface_acc_row(0);
    const int c0 = adaface_acc_col(0);
#pragma unroll 4
    for (int kk = 0; kk < ADAFACE_TILE_DEPTH; ++kk) {
        float a[ADAFACE_ACC_ROWS];
        float b[ADAFACE_ACC_COLS];
#pragma unroll
        for (int r = 0; r < ADAFACE_ACC_ROWS; ++r) a[r] = tiles->x[kk][r0 + r];
#pragma unroll
        for (int q = 0; q < ADAFACE_ACC_COLS; ++q) b[q] = tiles->w[kk][c0 + 16 * q];
#pragma unroll
        for (int r = 0; r < ADAFACE_ACC_ROWS; ++r) {
#pragma unroll
            for (int q = 0; q < ADAFACE_ACC_COLS; ++q) acc[r][q] = fmaf(a[r], b[q], acc[r][q]);
        }
    }
}

/* ---------------------------------------------------------------------------
 * Tensor-core tile product (bf16 and f16 inputs, sm_80 and newer, and the
 * simulator): acc += X_tile . W_tile^T with mma.m16n8k16 and f32
 * accumulation, from the 16-bit tiles.
 *
 * Warp w owns rows 16 (w / 4) .. + 16 and classes 16 (w % 4) .. + 16 of the
 * 32 x 64 tile: one A fragment and two 16 x 8 B fragments per k step of 16,
 * accumulated in d[2][4] (the mma C layout) over all depth slices. After
 * the last slice adaface_mma_to_acc moves the tile through shared memory
 * into the SIMT layout (adaface_acc_row / adaface_acc_col), so the
 * epilogue (norms, margin, online max and sum-exp, all f32) is the same for
 * every dtype.
 * ------------------------------------------------------------------------- */
#if defined(ADAFACE_SIM) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define ADAFACE_HAS_MMA 1
#else
#define ADAFACE_HAS_MMA 0
#endif

/* Which instantiations use tensor cores: bf16 and f16 where mma exists. */
template <typename T>
struct AdafaceMma {
    static constexpr bool enabled = false;
    static constexpr bool gradients = false;
};
template <>
struct AdafaceMma<adaface_bf16> {
    static constexpr bool enabled = ADAFACE_HAS_MMA != 0;
    /* The backward's gradient products also run on tensor cores: bf16 has
     * f32's exponent range, so A / ||x|| and A / ||w|| always fit. */
    static constexpr bool gradients = enabled;
    static __device__ __forceinline__ void run(float d[4], const uint32_t a[4], const uint32_t b[2]) {
        mma_m16n8k16_bf16_f32(d, a, b, d);
    }
};
template <>
struct AdafaceMma<adaface_f16> {
    static constexpr bool enabled = ADAFACE_HAS_MMA != 0;
    /* Also for f16: A / ||w|| can exceed 65504 (small weight rows) and
     * probabilities fall below f16's normal range, so each tile's gradients
     * are scaled by a power of two that puts their largest magnitude near
     * 2^14 before the split (adaface_grad16_scales), and the products are
     * scaled back, exactly, when they are added up. */
    static constexpr bool gradients = enabled;
    static __device__ __forceinline__ void run(float d[4], const uint32_t a[4], const uint32_t b[2]) {
        mma_m16n8k16_f16_f32(d, a, b, d);
    }
};

#define ADAFACE_MMA_N 2 /* 16 x 8 output fragments per warp */
static_assert(ADAFACE_WARPS == 8 && ADAFACE_TILE_ROWS == 32 && ADAFACE_TILE_CLASSES == 64 &&
                  ADAFACE_TILE_DEPTH % 16 == 0,
              "the mma warp layout covers a 32 x 64 tile with 8 warps");

__device__ __forceinline__ void adaface_mma_zero(float d[ADAFACE_MMA_N][4]) {
#pragma unroll
    for (int n = 0; n < ADAFACE_MMA_N; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) d[n][i] = 0.0f;
}

/* d += X_tile . W_tile^T over one depth slice (all 32 lanes of every warp
 * must call it: mma is warp-wide). */
template <typename T>
__device__ __forceinline__ void adaface_tile_product_mma(float d[ADAFACE_MMA_N][4], const AdafaceTiles16* t) {
    const int lane = (int)threadIdx.x & 31;
    const int warp = (int)threadIdx.x >> 5;
    const int g = lane >> 2;
    const int tq = lane & 3;
    const int row = (warp >> 2) * 16 + g;
    const int col = (warp & 3) * 16 + g;
#pragma unroll
    for (int ks = 0; ks < ADAFACE_TILE_DEPTH / 16; ++ks) {
        const int kw = ks * 8 + tq; /* the word holding k = 16 ks + 2 tq, + 1 */
        uint32_t a[4];
        a[0] = t->x[row][kw];
        a[1] = t->x[row + 8][kw];
        a[2] = t->x[row][kw + 4];
        a[3] = t->x[row + 8][kw + 4];
#pragma unroll
        for (int n = 0; n < ADAFACE_MMA_N; ++n) {
            uint32_t b[2];
            b[0] = t->w[col + 8 * n][kw];
            b[1] = t->w[col + 8 * n][kw + 4];
            AdafaceMma<T>::run(d[n], a, b);
        }
    }
}

/* Moves the mma accumulators into the SIMT accumulator layout through
 * `exchange` (a ROWS x (CLASSES + 1) f32 tile). Every thread of the block
 * must call it; it begins and ends with a barrier, so `exchange` may alias
 * memory that other threads read just before or write just after. */
__device__ __forceinline__ void adaface_mma_to_acc(float acc[ADAFACE_ACC_ROWS][ADAFACE_ACC_COLS],
                                                   const float d[ADAFACE_MMA_N][4],
                                                   float (*exchange)[ADAFACE_TILE_CLASSES + 1]) {
    const int lane = (int)threadIdx.x & 31;
    const int warp = (int)threadIdx.x >> 5;
    const int row = (warp >> 2) * 16 + (lane >> 2);
    const int col = (warp & 3) * 16 + 2 * (lane & 3);
    __syncthreads();
#pragma unroll
    for (int n = 0; n < ADAFACE_MMA_N; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) exchange[row + ((i & 2) ? 8 : 0)][col + 8 * n + (i & 1)] = d[n][i];
    __syncthreads();
#pragma unroll
    for (int r = 0; r < ADAFACE_ACC_ROWS; ++r)
#pragma unroll
        for (int q = 0; q < ADAFACE_ACC_COLS; ++q) acc[r][q] = exchange[adaface_acc_row(r)][adaface_acc_col(q)];
    __syncthreads();
}

/* ---------------------------------------------------------------------------
 * Tensor-core gradient products of the backward (bf16 and f16; see AdafaceMma):
 *   gw[c][kk] += sum_r A[r][c] / ||x_r|| * x[r][kk]   (M = 64 classes, K = 32 rows)
 *   gx[r][kk] += sum_c A[r][c] / ||w_c|| * w[c][kk]   (M = 32 rows, K = 64 classes)
 * The norms are folded into A (so x and W enter the mma unrounded, as
 * stored), and A is split into hi + lo in the element type (two mma per fragment),
 * which keeps about 16 significant bits of the f32 gradient: accuracy stays
 * near the f32 level of the SIMT product.
 * ------------------------------------------------------------------------- */
#define ADAFACE_GW_STRIDE (ADAFACE_TILE_ROWS / 2 + 4)    /* words per class row of the gw A tile */
#define ADAFACE_GX_STRIDE (ADAFACE_TILE_CLASSES / 2 + 4) /* words per row of the gx A tile */

struct AdafaceGradTiles16 {
    uint32_t gw_hi[ADAFACE_TILE_CLASSES][ADAFACE_GW_STRIDE]; /* A[r][c] / ||x_r||, [c][r] */
    uint32_t gw_lo[ADAFACE_TILE_CLASSES][ADAFACE_GW_STRIDE];
    uint32_t gx_hi[ADAFACE_TILE_ROWS][ADAFACE_GX_STRIDE];    /* A[r][c] / ||w_c||, [r][c] */
    uint32_t gx_lo[ADAFACE_TILE_ROWS][ADAFACE_GX_STRIDE];
    uint32_t xt[ADAFACE_TILE_DEPTH][ADAFACE_GW_STRIDE];      /* x slice transposed, [kk][r] */
    uint32_t wt[ADAFACE_TILE_DEPTH][ADAFACE_GX_STRIDE];      /* W slice transposed, [kk][c] */
};

__device__ __forceinline__ void adaface_put16(uint32_t* row, int idx, uint16_t bits) {
    ((uint16_t*)row)[idx] = bits;
}

/* v = hi + lo (+ a rounding error of |v| 2^-17 for bf16), both in T. */
template <typename T>
__device__ __forceinline__ void adaface_split16(float v, uint16_t* hi, uint16_t* lo) {
    const T h = from_float<T>(v);
    *hi = h.bits;
    *lo = from_float<T>(v - to_float(h)).bits;
}

/* Stores the gradient A[lr][lc] of one accumulator position into both A
 * tiles, the gw one times scale_w and the gx one times scale_x. */
template <typename T>
__device__ __forceinline__ void adaface_put_grad16(AdafaceGradTiles16* t, int lr, int lc, float g, float row_inv,
                                                   float class_inv, float scale_w = 1.0f, float scale_x = 1.0f) {
    uint16_t hi, lo;
    adaface_split16<T>(g * row_inv * scale_w, &hi, &lo);
    adaface_put16(t->gw_hi[lc], lr, hi);
    adaface_put16(t->gw_lo[lc], lr, lo);
    adaface_split16<T>(g * class_inv * scale_x, &hi, &lo);
    adaface_put16(t->gx_hi[lr], lc, hi);
    adaface_put16(t->gx_lo[lr], lc, lo);
}

/* Whether T is f16 (no <type_traits> under NVRTC). */
template <typename T>
struct adaface_is_f16 {
    static constexpr bool value = false;
};
template <>
struct adaface_is_f16<adaface_f16> {
    static constexpr bool value = true;
};

/* The power of two that brings a tile's largest gradient magnitude `peak`
 * to [2^13, 2^14) (1 for a zero tile; exponents clamped to +-60 so the
 * scale, its inverse and the ratio of two scales stay normal floats).
 * Exact: scaling by it and back changes no bit of a float that stays in
 * range. */
__device__ __forceinline__ float adaface_grad16_scale(float peak) {
    if (!(peak > 0.0f)) return 1.0f;
    int e;
    (void)frexpf(peak, &e); /* peak = m 2^e, m in [0.5, 1) */
    return ldexpf(1.0f, min(max(14 - e, -60), 60));
}

/* Stages the raw x and W of one depth slice, transposed (zero outside). */
template <typename T>
__device__ __forceinline__ void adaface_stage_transposed(AdafaceGradTiles16* t, const T* x, const T* w,
                                                         int64_t row0, int64_t rows, int64_t c0, int64_t classes,
                                                         int64_t k0, int64_t dim) {
    for (int e = threadIdx.x; e < ADAFACE_TILE_ROWS * ADAFACE_TILE_DEPTH; e += ADAFACE_THREADS) {
        const int kk = e % ADAFACE_TILE_DEPTH;
        const int r = e / ADAFACE_TILE_DEPTH;
        const int64_t i = row0 + r;
        const int64_t k = k0 + kk;
        adaface_put16(t->xt[kk], r, (i < rows && k < dim) ? adaface_raw_bits(x[i * dim + k]) : (uint16_t)0);
    }
    for (int e = threadIdx.x; e < ADAFACE_TILE_CLASSES * ADAFACE_TILE_DEPTH; e += ADAFACE_THREADS) {
        const int kk = e % ADAFACE_TILE_DEPTH;
        const int c = e / ADAFACE_TILE_DEPTH;
        const int64_t j = c0 + c;
        const int64_t k = k0 + kk;
        adaface_put16(t->wt[kk], c, (j < classes && k < dim) ? adaface_raw_bits(w[j * dim + k]) : (uint16_t)0);
    }
}

/* d += A_tile(rows m0.., hi and lo) . B_tile(rows n0..)^T over k_steps of 16,
 * with A and B both stored [m or n][k] in words of two (stride in words). */
template <typename T, int NFRAG>
__device__ __forceinline__ void adaface_mma_split(float d[NFRAG][4], const uint32_t* a_hi, const uint32_t* a_lo,
                                                  int a_stride, int m0, const uint32_t* b, int b_stride, int n0,
                                                  int k_steps) {
    const int lane = (int)threadIdx.x & 31;
    const int g = lane >> 2;
    const int tq = lane & 3;
    for (int ks = 0; ks < k_steps; ++ks) {
        const int kw = ks * 8 + tq;
        const int ra = (m0 + g) * a_stride + kw;
        const int rb = (m0 + g + 8) * a_stride + kw;
        const uint32_t hi[4] = {a_hi[ra], a_hi[rb], a_hi[ra + 4], a_hi[rb + 4]};
        const uint32_t lo[4] = {a_lo[ra], a_lo[rb], a_lo[ra + 4], a_lo[rb + 4]};
#pragma unroll
        for (int n = 0; n < NFRAG; ++n) {
            const int bn = (n0 + 8 * n + g) * b_stride + kw;
            const uint32_t bf[2] = {b[bn], b[bn + 4]};
            AdafaceMma<T>::run(d[n], hi, bf);
            AdafaceMma<T>::run(d[n], lo, bf);
        }
    }
}

/* Max and sum over the 16 lanes holding one row pair (fixed butterfly). */
__device__ __forceinline__ float adaface_half_warp_max(float v) {
    for (int offset = 8; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
__device__ __forceinline__ float adaface_half_warp_sum(float v) {
    for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

#endif
