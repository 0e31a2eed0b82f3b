/* Tiled backward: recompute the logit tiles, form A = dloss/dc, and produce
 * dW and the per-split partial gx (dX is finished in tiled_dx_finish.cu).
 *
 * adaface_backward_*: grid (splits). Block k owns class tiles k, k + splits,
 * ... and walks ALL rows for each of them, TILE_ROWS at a time:
 *   1. S = x_rows . W_tile^T (depth slices through shared memory),
 *   2. A_ij = (exp(logit_ij - lse_i) - [j = y_i]) / B * dlogit_ij in shared
 *      memory (margin and clamp derivatives: README.md, Semantics),
 *   3. per depth slice: gw_tile += A^T . xh_rows (into dW, which this block
 *      owns for its classes: no atomics) and gx_rows += A . wh_tile (into
 *      this split's slice of dx_partial, which it also owns).
 * After the last row chunk it applies the Jacobian of w -> w / ||w|| to its
 * dW rows. Every sum has a fixed order: same inputs, same bits. */
#include "common.cuh"

template <typename T, typename L>
__device__ void adaface_backward_impl(const AdafaceTileParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    const float curricular_t = (float)rec->state_t; /* CurricularFace's t (detached) */

    constexpr bool use_mma = AdafaceMma<T>::enabled;
    constexpr bool mma_grads = AdafaceMma<T>::gradients;
    __shared__ AdafaceTiles tiles;
    __shared__ AdafaceTiles16 tiles16;
    __shared__ AdafaceGradTiles16 grad16[1]; /* mma_grads instantiations only */
    __shared__ float grad_tile[ADAFACE_TILE_ROWS][ADAFACE_TILE_CLASSES + 1];
    __shared__ float inv_class_norm[ADAFACE_TILE_CLASSES];
    __shared__ float row_inv_norm[ADAFACE_TILE_ROWS];

    const T* x = (const T*)p.x;
    const T* w = (const T*)p.w;
    const L* labels = (const L*)p.labels;
    float* dw = (float*)p.dw;
    float* dxp = (float*)p.dx_partial + (int64_t)blockIdx.x * p.batch * p.dim;
    const int tid = (int)threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int64_t batch = p.batch;
    const int64_t dim = p.dim;
    const int64_t classes = p.classes;
    const int64_t tiles_total = (classes + ADAFACE_TILE_CLASSES - 1) / ADAFACE_TILE_CLASSES;

    for (int64_t tile = blockIdx.x; tile < tiles_total; tile += p.splits) {
        const int64_t c0 = tile * ADAFACE_TILE_CLASSES;
        const bool first_tile = tile == (int64_t)blockIdx.x;
        __syncthreads();
        if (tid < ADAFACE_TILE_CLASSES) {
            const int64_t j = c0 + tid;
            inv_class_norm[tid] = j < classes ? 1.0f / ((const float*)p.class_norm)[j] : 0.0f;
        }

        for (int64_t row0 = 0; row0 < batch; row0 += ADAFACE_TILE_ROWS) {
            __syncthreads();
            if (tid < ADAFACE_TILE_ROWS) {
                const int64_t i = row0 + tid;
                row_inv_norm[tid] = i < batch ? 1.0f / ((const float*)p.row_norm)[i] : 0.0f;
            }

            /* 1. Recompute the cosines of this tile. */
            float acc[ADAFACE_ACC_ROWS][ADAFACE_ACC_COLS];
#pragma unroll
            for (int r = 0; r < ADAFACE_ACC_ROWS; ++r)
#pragma unroll
                for (int q = 0; q < ADAFACE_ACC_COLS; ++q) acc[r][q] = 0.0f;
            float frag[ADAFACE_MMA_N][4];
            adaface_mma_zero(frag);
            for (int64_t k0 = 0; k0 < dim; k0 += ADAFACE_TILE_DEPTH) {
                __syncthreads();
                if constexpr (use_mma) {
                    adaface_stage_rows((float(*)[ADAFACE_TILE_ROWS + 1])0, x, row0, batch, k0, dim,
                                       (const float*)0, tiles16.x);
                    adaface_stage_classes((float(*)[ADAFACE_TILE_CLASSES + 1])0, w, c0, classes, k0, dim,
                                          (const float*)0, (AdafaceStepRecord*)0, tiles16.w);
                } else {
                    adaface_stage_rows(tiles.x, x, row0, batch, k0, dim, (const float*)0);
                    adaface_stage_classes(tiles.w, w, c0, classes, k0, dim, (const float*)0,
                                          (AdafaceStepRecord*)0);
                }
                __syncthreads();
                if constexpr (use_mma) {
                    adaface_tile_product_mma<T>(frag, &tiles16);
                } else {
                    adaface_tile_product(acc, &tiles);
                }
            }
            /* grad_tile is free here (written again in step 2, after the
             * exchange's closing barrier). */
            if constexpr (use_mma) adaface_mma_to_acc(acc, frag, grad_tile);

            /* 2. The gradient with respect to the unclamped cosines (f16:
             * first into registers, for the tile's scales). */
            constexpr bool scaled = mma_grads && adaface_is_f16<T>::value;
            float gv[ADAFACE_ACC_ROWS][ADAFACE_ACC_COLS];
            float peak_w = 0.0f, peak_x = 0.0f;
#pragma unroll
            for (int r = 0; r < ADAFACE_ACC_ROWS; ++r) {
                const int lr = adaface_acc_row(r);
                const int64_t i = row0 + lr;
                const bool row_ok = i < batch;
                const int64_t label = row_ok ? adaface_label_at(labels, i) - p.class_offset : -1;
                const float a = row_ok ? ((const float*)p.row_a)[i] : 0.0f;
                const float b = row_ok ? ((const float*)p.row_b)[i] : 0.0f;
                const float thr = row_ok ? ((const float*)p.row_thr)[i] : INFINITY;
                const float lse = row_ok ? ((const float*)p.lse)[i] : 0.0f;
#pragma unroll
                for (int q = 0; q < ADAFACE_ACC_COLS; ++q) {
                    const int lc = adaface_acc_col(q);
                    const int64_t j = c0 + lc;
                    float g = 0.0f;
                    if (row_ok && j < classes) {
                        const float dot = acc[r][q] * row_inv_norm[lr] * inv_class_norm[lc];
                        const bool is_target = j == label;
                        float dlogit;
                        const float logit = adaface_logit(dot, is_target, a, b, thr, curricular_t, p.s, p.m1, p.eps, &dlogit);
                        const float prob = expf(logit - lse);
                        g = (prob - (is_target ? 1.0f : 0.0f)) * p.inv_batch * dlogit;
                    }
                    if constexpr (scaled) {
                        gv[r][q] = g;
                        peak_w = fmaxf(peak_w, fabsf(g * row_inv_norm[lr]));
                        peak_x = fmaxf(peak_x, fabsf(g * inv_class_norm[lc]));
                    } else if constexpr (mma_grads) {
                        adaface_put_grad16<T>(&grad16[0], lr, lc, g, row_inv_norm[lr], inv_class_norm[lc]);
                    } else {
                        grad_tile[lr][lc] = g;
                    }
                }
            }
            /* Block-wide peaks (grad_tile's first row is free in the f16
             * instantiation), then the scaled split tiles. */
            float scale_w = 1.0f, scale_x = 1.0f;
            if constexpr (scaled) {
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) {
                    peak_w = fmaxf(peak_w, __shfl_xor_sync(0xffffffffu, peak_w, o));
                    peak_x = fmaxf(peak_x, __shfl_xor_sync(0xffffffffu, peak_x, o));
                }
                if (lane == 0) {
                    grad_tile[0][warp] = peak_w;
                    grad_tile[0][ADAFACE_WARPS + warp] = peak_x;
                }
                __syncthreads();
                for (int v = 0; v < ADAFACE_WARPS; ++v) {
                    peak_w = fmaxf(peak_w, grad_tile[0][v]);
                    peak_x = fmaxf(peak_x, grad_tile[0][ADAFACE_WARPS + v]);
                }
                scale_w = adaface_grad16_scale(peak_w);
                scale_x = adaface_grad16_scale(peak_x);
#pragma unroll
                for (int r = 0; r < ADAFACE_ACC_ROWS; ++r)
#pragma unroll
                    for (int q = 0; q < ADAFACE_ACC_COLS; ++q) {
                        const int lr = adaface_acc_row(r);
                        const int lc = adaface_acc_col(q);
                        adaface_put_grad16<T>(&grad16[0], lr, lc, gv[r][q], row_inv_norm[lr], inv_class_norm[lc],
                                              scale_w, scale_x);
                    }
            }
            const float unscale_w = 1.0f / scale_w, unscale_x = 1.0f / scale_x;

            if constexpr (mma_grads) {
                /* 3 (tensor cores). gw and gx per depth slice from the split
                 * gradient tiles and the raw, transposed x and W. */
                AdafaceGradTiles16* gt = &grad16[0];
                for (int64_t k0 = 0; k0 < dim; k0 += ADAFACE_TILE_DEPTH) {
                    __syncthreads();
                    adaface_stage_transposed(gt, x, w, row0, batch, c0, classes, k0, dim);
                    __syncthreads();
                    const int g = lane >> 2;
                    const int tq = lane & 3;
                    {
                        /* gw: warp -> classes 16 (warp / 2) .., depth 16 (warp % 2) .. */
                        const int m0 = (warp >> 1) * 16;
                        const int n0 = (warp & 1) * 16;
                        float d[2][4];
                        adaface_mma_zero(d);
                        adaface_mma_split<T, 2>(d, &gt->gw_hi[0][0], &gt->gw_lo[0][0], ADAFACE_GW_STRIDE, m0,
                                                &gt->xt[0][0], ADAFACE_GW_STRIDE, n0, ADAFACE_TILE_ROWS / 16);
#pragma unroll
                        for (int n = 0; n < 2; ++n)
#pragma unroll
                            for (int e = 0; e < 4; ++e) {
                                const int64_t j = c0 + m0 + g + ((e & 2) ? 8 : 0);
                                const int64_t k = k0 + n0 + 8 * n + 2 * tq + (e & 1);
                                if (j < classes && k < dim) {
                                    float* out = dw + j * dim + k;
                                    const float v = d[n][e] * unscale_w;
                                    *out = row0 == 0 ? v : *out + v;
                                }
                            }
                    }
                    {
                        /* gx: warp -> rows 16 (warp / 4) .., depth 8 (warp % 4) .. */
                        const int m0 = (warp >> 2) * 16;
                        const int n0 = (warp & 3) * 8;
                        float d[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
                        adaface_mma_split<T, 1>(d, &gt->gx_hi[0][0], &gt->gx_lo[0][0], ADAFACE_GX_STRIDE, m0,
                                                &gt->wt[0][0], ADAFACE_GX_STRIDE, n0, ADAFACE_TILE_CLASSES / 16);
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const int64_t i = row0 + m0 + g + ((e & 2) ? 8 : 0);
                            const int64_t k = k0 + n0 + 2 * tq + (e & 1);
                            if (i < batch && k < dim) {
                                float* out = dxp + i * dim + k;
                                const float v = d[0][e] * unscale_x;
                                *out = first_tile ? v : *out + v;
                            }
                        }
                    }
                }
                continue;
            }

            /* 3. gw and gx, one depth slice at a time. */
            for (int64_t k0 = 0; k0 < dim; k0 += ADAFACE_TILE_DEPTH) {
                __syncthreads();
                adaface_stage_rows(tiles.x, x, row0, batch, k0, dim, row_inv_norm);
                adaface_stage_classes(tiles.w, w, c0, classes, k0, dim, inv_class_norm,
                                      (AdafaceStepRecord*)0);
                __syncthreads();
                const int kk = lane;
                const int64_t k = k0 + kk;
                /* gw[c][kk] = sum_r A[r][c] xh[r][kk], rows in order. */
                for (int c = warp; c < ADAFACE_TILE_CLASSES; c += ADAFACE_WARPS) {
                    float s = 0.0f;
#pragma unroll 8
                    for (int r = 0; r < ADAFACE_TILE_ROWS; ++r) s = fmaf(grad_tile[r][c], tiles.x[kk][r], s);
                    const int64_t j = c0 + c;
                    if (j < classes && k < dim) {
                        float* out = dw + j * dim + k;
                        *out = row0 == 0 ? s : *out + s;
                    }
                }
                /* gx[r][kk] = sum_c A[r][c] wh[c][kk], classes in order. */
                for (int r = warp; r < ADAFACE_TILE_ROWS; r += ADAFACE_WARPS) {
                    float s = 0.0f;
#pragma unroll 8
                    for (int c = 0; c < ADAFACE_TILE_CLASSES; ++c) s = fmaf(grad_tile[r][c], tiles.w[kk][c], s);
                    const int64_t i = row0 + r;
                    if (i < batch && k < dim) {
                        float* out = dxp + i * dim + k;
                        *out = first_tile ? s : *out + s;
                    }
                }
            }
        }

        /* The Jacobian of w -> w / ||w|| on this tile's dW rows, one warp per
         * class: dw = (gw - wh (wh . gw)) / r. */
        __syncthreads();
        for (int c = warp; c < ADAFACE_TILE_CLASSES; c += ADAFACE_WARPS) {
            const int64_t j = c0 + c;
            if (j >= classes) continue;
            const float inv_r = inv_class_norm[c];
            float along = 0.0f;
            for (int64_t k = lane; k < dim; k += 32) along = fmaf(to_float(w[j * dim + k]), dw[j * dim + k], along);
            along = adaface_warp_sum(along) * inv_r;
            for (int64_t k = lane; k < dim; k += 32) {
                const float wh = to_float(w[j * dim + k]) * inv_r;
                dw[j * dim + k] = (dw[j * dim + k] - wh * along) * inv_r;
            }
        }
    }
}

ADAFACE_KERNEL(adaface_backward_f32_i32, AdafaceTileParams, (adaface_backward_impl<float, int32_t>(p)))
ADAFACE_KERNEL(adaface_backward_f32_i64, AdafaceTileParams, (adaface_backward_impl<float, int64_t>(p)))
ADAFACE_KERNEL(adaface_backward_bf16_i32, AdafaceTileParams, (adaface_backward_impl<adaface_bf16, int32_t>(p)))
ADAFACE_KERNEL(adaface_backward_bf16_i64, AdafaceTileParams, (adaface_backward_impl<adaface_bf16, int64_t>(p)))
ADAFACE_KERNEL(adaface_backward_f16_i32, AdafaceTileParams, (adaface_backward_impl<adaface_f16, int32_t>(p)))
ADAFACE_KERNEL(adaface_backward_f16_i64, AdafaceTileParams, (adaface_backward_impl<adaface_f16, int64_t>(p)))
