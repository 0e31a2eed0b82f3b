/* The flash kernels' products on mma.sync (sm_80+): operands read by
 * ldmatrix from padded row-major tiles, every product complete when the
 * call returns. */
#ifndef ADAFACE_FLASH_MAINLOOP_MMA_CUH
#define ADAFACE_FLASH_MAINLOOP_MMA_CUH

#include "flash/layout.cuh"

/* c += a . b on mma.m16n8k16 for the element type. */
template <typename T>
__device__ __forceinline__ void adaface_flash_mma(float* c, const uint32_t a[4], const uint32_t b[2]) {
    if (adaface_is_f16<T>::value)
        mma_m16n8k16_f16_f32(c, a, b, c);
    else
        mma_m16n8k16_bf16_f32(c, a, b, c);
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

#endif  // ADAFACE_FLASH_MAINLOOP_MMA_CUH
