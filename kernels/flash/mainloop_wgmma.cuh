/* The flash kernels' products on wgmma (sm_90a, bf16): operands read
 * through matrix descriptors from 128-byte-swizzled tiles, products issued
 * asynchronously and retired by adaface_flash_wgmma_drain. */
#ifndef ADAFACE_FLASH_MAINLOOP_WGMMA_CUH
#define ADAFACE_FLASH_MAINLOOP_WGMMA_CUH

#include "flash/layout.cuh"

/* The wgmma issue sequences exist for D = 128, 256, 384 and 512 only; the
 * host plan never launches another depth, and a launch that did would trap
 * rather than read past the tiles. */
template <bool Wg>
__device__ __forceinline__ void adaface_flash_check_depth(int64_t dim) {
    if (Wg && (dim % 128 != 0 || dim > ADAFACE_FLASH_MAX_DIM)) __trap();
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

/* The forward's logit product with the class norms under it: issues S as
 * adaface_flash_logit_wgmma does, computes this thread's quarter of the
 * sums of squares of the W tile's class norms (adaface_flash_class_sq)
 * while it runs, waits for it, and returns the quarter. Each depth is one
 * straight-line sequence that ends in its own wait: had the sequences
 * joined with the product in flight, ptxas would move the accumulators at
 * the join and wait there first (C7517), before the norms. */
template <typename T, int Cols>
__device__ __forceinline__ float adaface_flash_logit_norms_wgmma_n(float (&s)[16], uint32_t a0, uint32_t b0,
                                                                   const uint16_t* w_tile) {
    wgmma_fence();
    adaface_flash_logit_wgmma_n<Cols>(s, a0, b0);
    wgmma_commit();
    const float sq = adaface_flash_class_sq<T, true, 2 * Cols>(w_tile, 64 * Cols, 64 * Cols);
    wgmma_wait<0>();
    wgmma_fence_operands(s);
    return sq;
}

template <typename T>
__device__ __forceinline__ float adaface_flash_logit_norms_wgmma(float (&s)[16], const uint16_t* a_tile,
                                                                 const uint16_t* w_tile, int64_t dim, int class0) {
    const uint32_t a0 = adaface_smem_addr(a_tile);
    const uint32_t b0 = adaface_smem_addr(w_tile) + (uint32_t)(class0 / 8) * 1024u;
    if (dim == 512) return adaface_flash_logit_norms_wgmma_n<T, 8>(s, a0, b0, w_tile);
    if (dim == 384) return adaface_flash_logit_norms_wgmma_n<T, 6>(s, a0, b0, w_tile);
    if (dim == 256) return adaface_flash_logit_norms_wgmma_n<T, 4>(s, a0, b0, w_tile);
    return adaface_flash_logit_norms_wgmma_n<T, 2>(s, a0, b0, w_tile);
}

/* wgmma twin of adaface_flash_grad_product: issues acc (64 x the depth
 * half from n0, Chunks chunks of 64) += (A_hi + A_lo) . B over K = 64,
 * with A 64 x 64 K-major and B (64 x D) MN-major, both swizzled: per
 * 16-deep step one m64n(64 Chunks)k16 over the whole depth half, its
 * 64-element groups one atom column (8192 bytes, the leading byte offset)
 * apart, so each A tile is read once per step. */
template <bool Split, int Chunks>
__device__ __forceinline__ void adaface_flash_grad_wgmma_n(float (&acc)[ADAFACE_FLASH_CHUNKS][32], uint32_t hi0,
                                                           uint32_t lo0, uint32_t b0) {
#pragma unroll
    for (int k = 0; k < 64; k += 16) {
        const uint64_t d_b = adaface_wgmma_desc(b0 + (uint32_t)(k / 8) * 1024u, 8192, 1024);
        wgmma_m64nNk16_bf16<Chunks, true>(acc, adaface_wgmma_desc(hi0 + 2u * (uint32_t)k, 16, 1024), d_b);
        if (Split) wgmma_m64nNk16_bf16<Chunks, true>(acc, adaface_wgmma_desc(lo0 + 2u * (uint32_t)k, 16, 1024), d_b);
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

#endif  // ADAFACE_FLASH_MAINLOOP_WGMMA_CUH
