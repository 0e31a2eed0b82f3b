/* Flash dX finish: the per-split row gradients O of flash_forward.cu
 * merged with the combine's log-sum-exp, the target term added in f32,
 * then the Jacobian of x -> x / ||x|| (the design: layout.cuh). */
#include "common.cuh"

template <typename T, typename L>
__device__ void adaface_flash_dx_finish_impl(const AdafaceTileParams& p) {
    const AdafaceStepRecord* rec = (const AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    const T* x = (const T*)p.x;
    const T* w = (const T*)p.w;
    const float* o = (const float*)p.dx_partial;
    const float* pmax = (const float*)p.partial_max;
    float* dx = (float*)p.dx;
    const int64_t i = blockIdx.x;
    const int64_t dim = p.dim;
    const float lse = ((const float*)p.lse)[i];
    const int64_t y = adaface_label_at((const L*)p.labels, i) - p.class_offset;
    /* A class-sharded step: the target term belongs to the shard holding
     * the label (always this one when W holds every class). */
    const bool has_target = y >= 0 && y < p.classes;
    const float p_target = has_target ? expf(((const float*)p.target_logit)[i] - lse) : 0.0f;
    const float target_coef = has_target ? (p_target - 1.0f) * ((const float*)p.target_dlogit)[i] : 0.0f;
    for (int64_t k = threadIdx.x; k < dim; k += ADAFACE_THREADS) {
        float g = 0.0f;
        for (int64_t s = 0; s < p.splits; ++s) {
            const float m = pmax[s * p.batch + i];
            if (m != -INFINITY) g = fmaf(expf(m - lse), o[(s * p.batch + i) * dim + k], g);
        }
        if (has_target) g = fmaf(target_coef, to_float(w[y * dim + k]), g);
        dx[i * dim + k] = g * p.inv_batch;
    }
    const float radial = p.row_radial ? ((const float*)p.row_radial)[i] : 0.0f;
    adaface_normalise_row_grad(x, dx, i, dim, 1.0f / ((const float*)p.row_norm)[i], radial);
}

ADAFACE_KERNEL(adaface_flash_dx_finish_bf16_i32, AdafaceTileParams,
               (adaface_flash_dx_finish_impl<adaface_bf16, int32_t>(p)))
ADAFACE_KERNEL(adaface_flash_dx_finish_f16_i32, AdafaceTileParams,
               (adaface_flash_dx_finish_impl<adaface_f16, int32_t>(p)))
ADAFACE_KERNEL(adaface_flash_dx_finish_bf16_i64, AdafaceTileParams,
               (adaface_flash_dx_finish_impl<adaface_bf16, int64_t>(p)))
ADAFACE_KERNEL(adaface_flash_dx_finish_f16_i64, AdafaceTileParams,
               (adaface_flash_dx_finish_impl<adaface_f16, int64_t>(p)))
