/* The flash kernels' epilogue, shared by both instruction sets: the margin
 * on a logit tile, the online softmax's row reductions, and the f16 scaling
 * of the gradient tiles.
 *
 * f16 scaling: the gradient factors (P in the forward, A in dw) leave f16's
 * range (dlogit / ||w|| overflows for small weight rows, probabilities fall
 * below the normal range), so each tile is multiplied by a power of two per
 * accumulator row (sigma) before the hi + lo split, and the accumulator is
 * kept as sigma times its value: when sigma moves, the accumulator rows are
 * rescaled by the ratio, and at the end by 1 / sigma, all exact. */
#ifndef ADAFACE_FLASH_EPILOGUE_CUH
#define ADAFACE_FLASH_EPILOGUE_CUH

#include "flash/layout.cuh"

/* The margin epilogue of one element s of S for row h of the thread: the
 * cosine (s over both norms), whether class j is the row's target, and
 * the logit with its derivative dlogit. */
template <typename L>
__device__ __forceinline__ float adaface_flash_margin(const AdafaceFlashRows<L>& rows, int h, float s, float inv_cls,
                                                      int64_t j, const AdafaceTileParams& p, float* dot,
                                                      bool* is_target, float* dlogit) {
    *dot = s * rows.inv_norm[h] * inv_cls;
    *is_target = j == rows.label[h];
    return adaface_logit(*dot, *is_target, rows.a[h], rows.b[h], rows.thr[h], rows.t, p.s, p.m1, p.eps, dlogit);
}

/* Max and sum over the quad of lanes (t = 0 .. 3) that hold one row of S. */
__device__ __forceinline__ float adaface_flash_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float adaface_flash_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* Publishes the quad's value v of row h (rw + g + 8h) for its depth half
 * (class half of S) in a 2 x 64 exchange array; after a barrier, row lr
 * reads red[lr] and red[64 + lr]. */
__device__ __forceinline__ void adaface_flash_publish_row(float* red, const AdafaceFlashLayout& lay, int h, float v) {
    if (lay.t == 0) red[lay.half * 64 + lay.rw + lay.g + 8 * h] = v;
}

/* Online softmax: from this thread's partial row maxima of a logit tile,
 * the tile's row maxima (over the quad, then the two class halves through
 * red), the new running maxima, their log2(e) multiples max2 (the shift of
 * adaface_flash_softmax_exp), and alpha = 2^(run_max2 - max2) = exp(old -
 * new), the factor by which the running sum and O shrink (0 while the old
 * maximum is -inf). alpha moves them from the old shift to the new one
 * exactly as rounded, so every term of the running sum is 2^(v log2(e) -
 * max2) whatever tile it came from. */
__device__ __forceinline__ void adaface_flash_online_max(float (&local_max)[2], const float (&run_max)[2],
                                                         const float (&run_max2)[2], float* red,
                                                         const AdafaceFlashLayout& lay, float (&new_max)[2],
                                                         float (&max2)[2], float (&alpha)[2]) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        local_max[h] = adaface_flash_quad_max(local_max[h]);
        adaface_flash_publish_row(red, lay, h, local_max[h]);
    }
    __syncthreads(); /* red (max) */
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int lr = lay.rw + lay.g + 8 * h;
        const float tile_max = fmaxf(red[lr], red[64 + lr]);
        new_max[h] = fmaxf(run_max[h], tile_max);
        max2[h] = new_max[h] * ADAFACE_LOG2E_F;
        alpha[h] = run_max[h] == -INFINITY ? 0.0f : adaface_exp2(run_max2[h] - max2[h]);
    }
}

/* exp(v - m) of a logit v against its row's running maximum m, given as
 * max2 = m log2(e): one fma and one ex2 instead of expf's range reduction.
 * max2 is m log2(e) rounded; the running sum and O share it, so the softmax
 * they form does not see the rounding, and what it leaves in a split's
 * log-sum-exp (at most half an ulp of m log2(e), a few 1e-6 at |m| ~ 64)
 * is of the size of storing the log-sum-exp in f32. -inf (a masked logit)
 * gives 0. */
__device__ __forceinline__ float adaface_flash_softmax_exp(float v, float max2) {
    return v == -INFINITY ? 0.0f : adaface_exp2(fmaf(v, ADAFACE_LOG2E_F, -max2));
}

/* f16 scaling: moves a row's scale sigma to `next` and returns next / sigma
 * (powers of two: the rescale is exact). */
__device__ __forceinline__ float adaface_flash_rescale(float& sigma, float next) {
    const float ratio = next / sigma;
    sigma = next;
    return ratio;
}

/* Multiplies the two rows (g, g + 8) this thread holds of a 64 x D output
 * tile by k[0] and k[1]. */
__device__ __forceinline__ void adaface_flash_scale_rows(float (&acc)[ADAFACE_FLASH_CHUNKS][32], const float (&k)[2]) {
#pragma unroll
    for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
        float* c = ADAFACE_FLASH_FRAG(acc, f);
        c[0] *= k[0];
        c[1] *= k[0];
        c[2] *= k[1];
        c[3] *= k[1];
    }
}

/* Writes v as hi + lo 16-bit values into the two 64 x 64 P / A tiles at [row][col]
 * (hi = v rounded once alone unless Split). */
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

#endif  // ADAFACE_FLASH_EPILOGUE_CUH
