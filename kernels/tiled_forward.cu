/* Tiled forward: class-tiled logits with an online softmax.
 *
 * adaface_forward_*: grid (splits, ceil(B / TILE_ROWS)). Block (k, r) owns
 * rows r * TILE_ROWS .. and class tiles k, k + splits, ... For each class
 * tile it streams x and W through shared memory in depth slices, computes
 * the class norms from the same W slices (block row 0 stores them and
 * validates W), forms the logits with the margin on the target, and folds
 * the tile into a running max and sum-exp per row. It writes only
 * O((splits + 1) * B + C) floats: never a B x C matrix. combine.cu then
 * merges the splits. */
#include "common.cuh"

template <typename T, typename L>
__device__ void adaface_forward_impl(const AdafaceTileParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;

    constexpr bool use_mma = AdafaceMma<T>::enabled;
    __shared__ AdafaceTiles tiles;
    __shared__ AdafaceTiles16 tiles16;
    __shared__ float exchange[use_mma ? ADAFACE_TILE_ROWS : 1][ADAFACE_TILE_CLASSES + 1];
    __shared__ float inv_class_norm[ADAFACE_TILE_CLASSES];
    __shared__ float row_inv_norm[ADAFACE_TILE_ROWS];

    const T* x = (const T*)p.x;
    const T* w = (const T*)p.w;
    const L* labels = (const L*)p.labels;
    const int tid = (int)threadIdx.x;
    const int tx = tid % 16;
    const int64_t batch = p.batch;
    const int64_t dim = p.dim;
    const int64_t classes = p.classes;
    const int64_t row0 = (int64_t)blockIdx.y * ADAFACE_TILE_ROWS;
    const bool validates_w = blockIdx.y == 0;
    const int64_t tiles_total = (classes + ADAFACE_TILE_CLASSES - 1) / ADAFACE_TILE_CLASSES;

    if (tid < ADAFACE_TILE_ROWS) {
        const int64_t i = row0 + tid;
        row_inv_norm[tid] = i < batch ? 1.0f / ((const float*)p.row_norm)[i] : 0.0f;
    }

    /* Per-row constants of this thread's two rows. */
    int64_t label[ADAFACE_ACC_ROWS];
    float ra[ADAFACE_ACC_ROWS];
    float rb[ADAFACE_ACC_ROWS];
    float rthr[ADAFACE_ACC_ROWS];
    bool row_ok[ADAFACE_ACC_ROWS];
    const float t = (float)rec->state_t; /* CurricularFace's t (detached) */
    float run_max[ADAFACE_ACC_ROWS];
    float run_sum[ADAFACE_ACC_ROWS];
#pragma unroll
    for (int r = 0; r < ADAFACE_ACC_ROWS; ++r) {
        const int64_t i = row0 + adaface_acc_row(r);
        row_ok[r] = i < batch;
        label[r] = row_ok[r] ? adaface_label_at(labels, i) - p.class_offset : -1;
        ra[r] = row_ok[r] ? ((const float*)p.row_a)[i] : 0.0f;
        rb[r] = row_ok[r] ? ((const float*)p.row_b)[i] : 0.0f;
        rthr[r] = row_ok[r] ? ((const float*)p.row_thr)[i] : INFINITY;
        run_max[r] = -INFINITY;
        run_sum[r] = 0.0f;
    }

    for (int64_t tile = blockIdx.x; tile < tiles_total; tile += p.splits) {
        const int64_t c0 = tile * ADAFACE_TILE_CLASSES;
        float acc[ADAFACE_ACC_ROWS][ADAFACE_ACC_COLS];
#pragma unroll
        for (int r = 0; r < ADAFACE_ACC_ROWS; ++r)
#pragma unroll
            for (int q = 0; q < ADAFACE_ACC_COLS; ++q) acc[r][q] = 0.0f;
        float class_sq = 0.0f; /* threads tid < TILE_CLASSES: class c0 + tid */
        float frag[ADAFACE_MMA_N][4];
        adaface_mma_zero(frag);

        for (int64_t k0 = 0; k0 < dim; k0 += ADAFACE_TILE_DEPTH) {
            __syncthreads();
            /* f32 W always (class norms, validation); x in f32 only for the
             * SIMT product; the 16-bit copies only for the mma product. */
            adaface_stage_rows(use_mma ? (float(*)[ADAFACE_TILE_ROWS + 1])0 : tiles.x, x, row0, batch, k0, dim,
                               (const float*)0, use_mma ? tiles16.x : (uint32_t(*)[ADAFACE_TILE16_STRIDE])0);
            adaface_stage_classes(tiles.w, w, c0, classes, k0, dim, (const float*)0,
                                  validates_w ? rec : (AdafaceStepRecord*)0,
                                  use_mma ? tiles16.w : (uint32_t(*)[ADAFACE_TILE16_STRIDE])0);
            __syncthreads();
            if (tid < ADAFACE_TILE_CLASSES) {
                for (int kk = 0; kk < ADAFACE_TILE_DEPTH; ++kk) {
                    const float v = tiles.w[kk][tid];
                    class_sq = fmaf(v, v, class_sq);
                }
            }
            if constexpr (use_mma) {
                adaface_tile_product_mma<T>(frag, &tiles16);
            } else {
                adaface_tile_product(acc, &tiles);
            }
        }
        if constexpr (use_mma) adaface_mma_to_acc(acc, frag, exchange);

        __syncthreads();
        if (tid < ADAFACE_TILE_CLASSES) {
            const int64_t j = c0 + tid;
            inv_class_norm[tid] = 1.0f / sqrtf(class_sq);
            if (j < classes && validates_w) {
                ((float*)p.class_norm)[j] = sqrtf(class_sq);
                if (class_sq == 0.0f) {
                    adaface_record_error(rec, ADAFACE_ERR_ROWNORM_W, (unsigned long long)(j << 1));
                } else if (!adaface_is_finite(class_sq)) {
                    adaface_record_error(rec, ADAFACE_ERR_ROWNORM_W, (unsigned long long)((j << 1) | 1));
                }
            }
        }
        __syncthreads();

#pragma unroll
        for (int r = 0; r < ADAFACE_ACC_ROWS; ++r) {
            const int lr = adaface_acc_row(r);
            float logit[ADAFACE_ACC_COLS];
            float tile_max = -INFINITY;
#pragma unroll
            for (int q = 0; q < ADAFACE_ACC_COLS; ++q) {
                const int lc = adaface_acc_col(q);
                const int64_t j = c0 + lc;
                logit[q] = -INFINITY;
                if (row_ok[r] && j < classes) {
                    const float dot = acc[r][q] * row_inv_norm[lr] * inv_class_norm[lc];
                    const bool is_target = j == label[r];
                    float dlogit;
                    logit[q] = adaface_logit(dot, is_target, ra[r], rb[r], rthr[r], t, p.s, p.m1, p.eps, &dlogit);
                    if (is_target) {
                        bool passes;
                        ((float*)p.target_logit)[row0 + lr] = logit[q];
                        ((float*)p.target_cos)[row0 + lr] = adaface_clamp_cosine(dot, p.eps, &passes);
                    }
                }
                tile_max = fmaxf(tile_max, logit[q]);
            }
            tile_max = adaface_half_warp_max(tile_max);
            float tile_sum = 0.0f;
            if (tile_max > -INFINITY) {
#pragma unroll
                for (int q = 0; q < ADAFACE_ACC_COLS; ++q) tile_sum += expf(logit[q] - tile_max);
            }
            tile_sum = adaface_half_warp_sum(tile_sum);
            if (tile_max > -INFINITY) {
                const float m = fmaxf(run_max[r], tile_max);
                run_sum[r] = run_sum[r] * expf(run_max[r] - m) + tile_sum * expf(tile_max - m);
                run_max[r] = m;
            }
        }
    }

    if (tx == 0) {
#pragma unroll
        for (int r = 0; r < ADAFACE_ACC_ROWS; ++r) {
            if (row_ok[r]) {
                const int64_t i = row0 + adaface_acc_row(r);
                ((float*)p.partial_max)[(int64_t)blockIdx.x * batch + i] = run_max[r];
                ((float*)p.partial_sum)[(int64_t)blockIdx.x * batch + i] = run_sum[r];
            }
        }
    }
}

ADAFACE_KERNEL(adaface_forward_f32_i32, AdafaceTileParams, (adaface_forward_impl<float, int32_t>(p)))
ADAFACE_KERNEL(adaface_forward_f32_i64, AdafaceTileParams, (adaface_forward_impl<float, int64_t>(p)))
ADAFACE_KERNEL(adaface_forward_bf16_i32, AdafaceTileParams, (adaface_forward_impl<adaface_bf16, int32_t>(p)))
ADAFACE_KERNEL(adaface_forward_bf16_i64, AdafaceTileParams, (adaface_forward_impl<adaface_bf16, int64_t>(p)))
ADAFACE_KERNEL(adaface_forward_f16_i32, AdafaceTileParams, (adaface_forward_impl<adaface_f16, int32_t>(p)))
ADAFACE_KERNEL(adaface_forward_f16_i64, AdafaceTileParams, (adaface_forward_impl<adaface_f16, int64_t>(p)))
