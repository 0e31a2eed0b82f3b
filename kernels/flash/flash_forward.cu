/* Flash forward: the logits of a block's 64 rows against its split's class
 * tiles with the online softmax, and with _dx the running row gradient O
 * (the design: layout.cuh). Entries: the mma.sync ones (sm_80+), bf16 and
 * f16, and the bf16 wgmma twins (`_wg`, sm_90a). */
#include "flash/mainloop_mma.cuh"
#include "flash/mainloop_wgmma.cuh"
#include "flash/epilogue.cuh"

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
    int buf = 0;

    AdafaceFlashRows<L> rows;
    rows.load(p, row0, false);
    float run_max[2] = {-INFINITY, -INFINITY};
    float run_max2[2] = {-INFINITY, -INFINITY}; /* run_max log2(e), the shift of the running sum and O */
    float run_sum[2] = {0.0f, 0.0f};
    /* f16: P is scaled per row and tile by a power of two before the split,
     * O kept as sigma O (epilogue.cuh). */
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

    for (int64_t tile = split; tile < tiles_total; tile += p.splits, buf ^= 1) {
        const int64_t c0 = tile * ADAFACE_FLASH_CLASSES;
        const uint16_t* w_tile = sm.stream(buf);
        const bool has_next = tile + p.splits < tiles_total;
        /* Prefetch of the next class tile into the other buffer. */
        auto stage_next = [&] {
            if (has_next)
                adaface_flash_stage<Wg>(sm.stream(buf ^ 1), sm.ld, w, (tile + p.splits) * ADAFACE_FLASH_CLASSES,
                                        p.classes, p.dim);
            cp_async_commit();
        };
        cp_async_wait_group<0>();
        if (Wg) fence_proxy_async_shared(); /* the copies are read by wgmma (async proxy) */
        __syncthreads(); /* tile landed; the previous iteration is over everywhere (Wg: its O product retired) */
        /* The other buffer held the previous tile, whose reads (O product
         * included) are over: refill it now, a whole iteration ahead. */
        stage_next();
        if (Wg) {
            /* The class norms' sums of squares run under the logit product;
             * what branches (the store, the validation) waits for it. */
            const float sq = adaface_flash_logit_norms_wgmma<T>(s, sm.stationary, w_tile, p.dim, cw);
            adaface_flash_class_norms_finish<T, Wg>(sq, w_tile, sm.ld, c0, p, sm.inv_cls, validates);
        } else {
            adaface_flash_class_norms<T, Wg>(w_tile, sm.ld, c0, p, sm.inv_cls, validates);
            adaface_flash_logit_product<T>(s, sm.stationary, w_tile, sm.ld, p.dim, rw, cw);
        }
        __syncthreads(); /* inv_cls */

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
                    float dot, dlogit;
                    bool is_target;
                    logit = adaface_flash_margin(rows, h, s[4 * f + i], sm.inv_cls[lc], j, p, &dot, &is_target, &dlogit);
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
        float new_max[2], max2[2], alpha[2];
        adaface_flash_online_max(local_max, run_max, run_max2, sm.red, lay, new_max, max2, alpha);

        float local_sum[2] = {0.0f, 0.0f};
        float pv[16], peak[2] = {0.0f, 0.0f};
#pragma unroll
        for (int f = 0; f < 4; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int h = i >> 1;
                const float e = adaface_flash_softmax_exp(s[4 * f + i], max2[h]);
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
            local_sum[h] = adaface_flash_quad_sum(local_sum[h]);
            adaface_flash_publish_row(sm.red2, lay, h, local_sum[h]);
        }
        float o_scale[2] = {alpha[0], alpha[1]};
        if (kScale) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                peak[h] = adaface_flash_quad_max(peak[h]);
                adaface_flash_publish_row(sm.red3, lay, h, peak[h]);
            }
            __syncthreads(); /* red3 (row peaks of P) */
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int lr = rw + g + 8 * h;
                const float next = adaface_grad16_scale(fmaxf(sm.red3[lr], sm.red3[64 + lr]));
                o_scale[h] = alpha[h] * adaface_flash_rescale(sigma[h], next);
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
            run_max2[h] = max2[h];
        }
        if (WithDx) {
            adaface_flash_scale_rows(o, o_scale);
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
            /* The pair's offset is even (D % 32 == 0): 8-byte stores where the
             * workspace region starts on 8 bytes. */
            const bool paired = (p.dx_partial & 7) == 0;
            const float unscale = 1.0f / sigma[h];
#pragma unroll
            for (int f = 0; f < ADAFACE_FLASH_NF; ++f) {
                if (f < nf) {
                    const float* c = ADAFACE_FLASH_FRAG(o, f);
                    adaface_flash_store_pair(out + 8 * f, c[2 * h] * unscale, c[2 * h + 1] * unscale, paired);
                }
            }
        }
    }
}

#define ADAFACE_FLASH_FORWARD_ENTRIES(T, e, L, suffix, wg, Wg)                                                    \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_forward_##e##_##suffix, AdafaceTileParams, ADAFACE_THREADS, 1,      \
                          (adaface_flash_forward_impl<T, L, false, true, Wg>(p)))                                \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_forward_dx_##e##_##suffix, AdafaceTileParams, ADAFACE_THREADS, 1,   \
                          (adaface_flash_forward_impl<T, L, true, true, Wg>(p)))                                 \
    ADAFACE_KERNEL_BOUNDS(adaface_flash##wg##_forward_dx_single_##e##_##suffix, AdafaceTileParams,               \
                          ADAFACE_THREADS, 1, (adaface_flash_forward_impl<T, L, true, false, Wg>(p)))

ADAFACE_FLASH_FORWARD_ENTRIES(adaface_bf16, bf16, int32_t, i32, , false)
ADAFACE_FLASH_FORWARD_ENTRIES(adaface_bf16, bf16, int32_t, i32, _wg, true)
ADAFACE_FLASH_FORWARD_ENTRIES(adaface_f16, f16, int32_t, i32, , false)
ADAFACE_FLASH_FORWARD_ENTRIES(adaface_bf16, bf16, int64_t, i64, , false)
ADAFACE_FLASH_FORWARD_ENTRIES(adaface_bf16, bf16, int64_t, i64, _wg, true)
ADAFACE_FLASH_FORWARD_ENTRIES(adaface_f16, f16, int64_t, i64, , false)
