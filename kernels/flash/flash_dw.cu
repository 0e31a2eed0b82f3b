/* Flash dW: a block's class tiles (blockIdx.x, + gridDim.x, ...: the grid
 * is at most one block per SM, persistent) against every row tile of x,
 * the gradient A formed from the recomputed logits and the combine's
 * log-sum-exp, dW accumulated in registers and written once per class tile
 * (the design: layout.cuh). The x tiles stream without a break from one
 * class tile to the next, and the next class tile's W is staged while this
 * one's dW goes out. Entries: the mma.sync ones (sm_80+), bf16 and f16, and
 * the bf16 wgmma twins (`_wg`, sm_90a). */
#include "flash/mainloop_mma.cuh"
#include "flash/mainloop_wgmma.cuh"
#include "flash/epilogue.cuh"

template <typename T, typename L, bool Split, bool Wg>
__device__ void adaface_flash_dw_impl(const AdafaceTileParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    ADAFACE_DYNAMIC_SMEM(unsigned char, smem_base);
    AdafaceFlashSmem sm(smem_base, p.dim, Wg);
    adaface_flash_check_depth<Wg>(p.dim);

    const AdafaceFlashLayout lay(p.dim);
    const int g = lay.g, t = lay.t, rw = lay.rw, cw = lay.cw, half = lay.half, nf = lay.nf;
    const int64_t class_tiles = (p.classes + ADAFACE_FLASH_CLASSES - 1) / ADAFACE_FLASH_CLASSES;
    const int64_t row_tiles = (p.batch + ADAFACE_FLASH_ROWS - 1) / ADAFACE_FLASH_ROWS;
    const uint16_t* x = (const uint16_t*)p.x;
    const uint16_t* w = (const uint16_t*)p.w;

    /* The first class tile's W and x row tile 0; later ones are staged by
     * the tile before them. */
    adaface_flash_stage<Wg>(sm.stationary, sm.ld, w, (int64_t)blockIdx.x * ADAFACE_FLASH_CLASSES, p.classes, p.dim);
    adaface_flash_stage<Wg>(sm.stream(0), sm.ld, x, 0, p.batch, p.dim);
    cp_async_commit();
    int buf = 0; /* the x buffer of the current row tile */

    float acc[ADAFACE_FLASH_CHUNKS][32];
    float s[16];
    /* f16: A is scaled per class and row tile by a power of two before the
     * split, acc kept as sigma acc per class (its rows; epilogue.cuh). */
    constexpr bool kScale = adaface_is_f16<T>::value;

    for (int64_t ct = blockIdx.x; ct < class_tiles; ct += gridDim.x) {
        const int64_t c0 = ct * ADAFACE_FLASH_CLASSES;
        const bool has_next_tile = ct + gridDim.x < class_tiles;
        /* The previous class tile's readers of inv_cls passed the barrier
         * before its stores. */
        if (threadIdx.x < 64) {
            const int64_t j = c0 + threadIdx.x;
            sm.inv_cls[threadIdx.x] = j < p.classes ? 1.0f / ((const float*)p.class_norm)[j] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < ADAFACE_FLASH_CHUNKS; ++j)
#pragma unroll
            for (int i = 0; i < 32; ++i) acc[j][i] = 0.0f;
        float sigma[2] = {1.0f, 1.0f};

        for (int64_t rt = 0; rt < row_tiles; ++rt, buf ^= 1) {
            const int64_t row0 = rt * ADAFACE_FLASH_ROWS;
            /* The next x tile: this class tile's next row tile, or row tile 0
             * of the block's next class tile. */
            const bool last_row_tile = rt + 1 == row_tiles;
            const bool stage_x = !last_row_tile || has_next_tile;
            const int64_t next_row0 = last_row_tile ? 0 : row0 + ADAFACE_FLASH_ROWS;
            AdafaceFlashRows<L> rows;
            rows.load(p, row0, true);
            cp_async_wait_group<0>();
            if (Wg) fence_proxy_async_shared();
            __syncthreads(); /* tiles landed; the previous iteration is over everywhere (Wg: issued) */
            if (Wg) {
                adaface_flash_logit_wgmma(s, sm.stream(buf), sm.stationary, p.dim, cw);
                adaface_flash_wgmma_drain(s, acc);
                __syncthreads(); /* every warpgroup's previous dW product has retired: x buffer and A free */
            }
            if (stage_x) adaface_flash_stage<Wg>(sm.stream(buf ^ 1), sm.ld, x, next_row0, p.batch, p.dim);
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
                        float dot, dlogit;
                        bool is_target;
                        const float logit = adaface_flash_margin(rows, h, s[4 * f + i], sm.inv_cls[lc], j, p, &dot,
                                                                 &is_target, &dlogit);
                        const float prob = adaface_exp2(fmaf(logit, ADAFACE_LOG2E_F, -rows.lse2[h]));
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
                 * scales. */
                float ratio[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) ratio[h] = adaface_flash_rescale(sigma[h], class_scale(rw + g + 8 * h));
                adaface_flash_scale_rows(acc, ratio);
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
        if (Wg) adaface_flash_wgmma_drain(s, acc);

        if (kScale) {
            const float unscale[2] = {1.0f / sigma[0], 1.0f / sigma[1]};
            adaface_flash_scale_rows(acc, unscale);
        }

        /* Jacobian of w -> w / ||w||: dW = acc - w (w . acc) / ||w||^2, with
         * the row dot reduced over the quad, then over the two depth halves,
         * applied in place so that W's buffer is free before the stores. */
        float along[2] = {0.0f, 0.0f};
#pragma unroll
        for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
            if (f < nf) {
                const int k = half * (int)(p.dim / 2) + 8 * f + 2 * t;
                const float* c = ADAFACE_FLASH_FRAG(acc, f);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int h = i >> 1;
                    const float wv = adaface_flash_decode<T>(
                        sm.stationary[adaface_flash_off<Wg>(rw + g + 8 * h, k + (i & 1), sm.ld)]);
                    along[h] = fmaf(wv, c[i], along[h]);
                }
            }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            along[h] = adaface_flash_quad_sum(along[h]);
            adaface_flash_publish_row(sm.red, lay, h, along[h]);
        }
        __syncthreads();
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int lc = rw + g + 8 * h;
            const float inv = sm.inv_cls[lc];
            const float scale = (sm.red[lc] + sm.red[64 + lc]) * inv * inv;
#pragma unroll
            for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
                if (f < nf) {
                    const int k = half * (int)(p.dim / 2) + 8 * f + 2 * t;
                    const uint16_t* wr = sm.stationary + adaface_flash_off<Wg>(lc, k, sm.ld);
                    float* c = ADAFACE_FLASH_FRAG(acc, f);
                    c[2 * h] -= adaface_flash_decode<T>(wr[0]) * scale;
                    c[2 * h + 1] -= adaface_flash_decode<T>(wr[1]) * scale;
                }
            }
        }
        __syncthreads(); /* W's buffer, inv_cls and red are read */
        /* The next class tile's W loads while this one's dW is stored. */
        if (has_next_tile)
            adaface_flash_stage<Wg>(sm.stationary, sm.ld, w, (ct + gridDim.x) * ADAFACE_FLASH_CLASSES, p.classes,
                                    p.dim);
        cp_async_commit();
        const bool paired = (p.dw & 7) == 0; /* dW is the caller's buffer */
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t j = c0 + rw + g + 8 * h;
            if (j >= p.classes) continue;
            float* out = (float*)p.dw + j * p.dim + half * (p.dim / 2) + 2 * t;
#pragma unroll
            for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
                if (f < nf) {
                    const float* c = ADAFACE_FLASH_FRAG(acc, f);
                    adaface_flash_store_pair(out + 8 * f, c[2 * h], c[2 * h + 1], paired);
                }
            }
        }
    }
    cp_async_wait_group<0>();
}

#define ADAFACE_FLASH_DW_ENTRIES(T, e, L, suffix, wg, Wg)                                                         \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_dw_##e##_##suffix, AdafaceTileParams, ADAFACE_THREADS, 1,           \
                          (adaface_flash_dw_impl<T, L, true, Wg>(p)))                                            \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_dw_single_##e##_##suffix, AdafaceTileParams, ADAFACE_THREADS, 1,    \
                          (adaface_flash_dw_impl<T, L, false, Wg>(p)))

ADAFACE_FLASH_DW_ENTRIES(adaface_bf16, bf16, int32_t, i32, , false)
ADAFACE_FLASH_DW_ENTRIES(adaface_bf16, bf16, int32_t, i32, _wg, true)
ADAFACE_FLASH_DW_ENTRIES(adaface_f16, f16, int32_t, i32, , false)
ADAFACE_FLASH_DW_ENTRIES(adaface_bf16, bf16, int64_t, i64, , false)
ADAFACE_FLASH_DW_ENTRIES(adaface_bf16, bf16, int64_t, i64, _wg, true)
ADAFACE_FLASH_DW_ENTRIES(adaface_f16, f16, int64_t, i64, , false)
