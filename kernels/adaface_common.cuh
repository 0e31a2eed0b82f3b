/* Helpers shared by the AdaFace kernels: the step's error record, fixed-order
 * reductions, tile staging and the tile product (the seam where tensor-core
 * code replaces the SIMT loop). */
#ifndef ADAFACE_COMMON_CUH
#define ADAFACE_COMMON_CUH

#include "adaface_portable.cuh"
#include "adaface_params.h"
#include "adaface_math.cuh"

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

__device__ __forceinline__ int64_t adaface_label_at(const int32_t* labels, int64_t i) {
    return (int64_t)labels[i];
}
__device__ __forceinline__ int64_t adaface_label_at(const int64_t* labels, int64_t i) {
    return (int64_t)labels[i];
}

/* Shared-memory tiles of one depth slice, stored k-major with one column of
 * padding so that both the staging stores and the product's loads are free
 * of bank conflicts. */
struct AdafaceTiles {
    float x[ADAFACE_TILE_DEPTH][ADAFACE_TILE_ROWS + 1];
    float w[ADAFACE_TILE_DEPTH][ADAFACE_TILE_CLASSES + 1];
};

/* Stages x[row0 .. row0 + ROWS, k0 .. k0 + DEPTH] times row_scale[r]
 * (zero outside the matrix) into tiles->x. row_scale may be null (1). */
template <typename T>
__device__ __forceinline__ void adaface_stage_rows(float (*dst)[ADAFACE_TILE_ROWS + 1], const T* src,
                                                   int64_t row0, int64_t rows, int64_t k0, int64_t dim,
                                                   const float* row_scale) {
    for (int e = threadIdx.x; e < ADAFACE_TILE_ROWS * ADAFACE_TILE_DEPTH; e += ADAFACE_THREADS) {
        const int kk = e % ADAFACE_TILE_DEPTH;
        const int r = e / ADAFACE_TILE_DEPTH;
        const int64_t row = row0 + r;
        const int64_t k = k0 + kk;
        float v = 0.0f;
        if (row < rows && k < dim) {
            v = to_float(src[row * dim + k]);
            if (row_scale) v *= row_scale[r];
        }
        dst[kk][r] = v;
    }
}

/* Stages W[c0 .. c0 + CLASSES, k0 .. k0 + DEPTH] times class_scale[c] into
 * tiles->w. When rec is not null, every element read is checked for NaN
 * and infinity (the forward's validation of W, done on the tiles the
 * product reads). */
template <typename T>
__device__ __forceinline__ void adaface_stage_classes(float (*dst)[ADAFACE_TILE_CLASSES + 1], const T* src,
                                                      int64_t c0, int64_t classes, int64_t k0, int64_t dim,
                                                      const float* class_scale, AdafaceStepRecord* rec) {
    for (int e = threadIdx.x; e < ADAFACE_TILE_CLASSES * ADAFACE_TILE_DEPTH; e += ADAFACE_THREADS) {
        const int kk = e % ADAFACE_TILE_DEPTH;
        const int c = e / ADAFACE_TILE_DEPTH;
        const int64_t j = c0 + c;
        const int64_t k = k0 + kk;
        float v = 0.0f;
        if (j < classes && k < dim) {
            const int64_t idx = j * dim + k;
            v = to_float(src[idx]);
            if (rec && !adaface_is_finite(v)) {
                adaface_record_error(rec, ADAFACE_ERR_NONFINITE_W, (unsigned long long)idx);
            }
            if (class_scale) v *= class_scale[c];
        }
        dst[kk][c] = v;
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
 * the seam for tensor cores (issue 4): an mma version keeps the signature
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
