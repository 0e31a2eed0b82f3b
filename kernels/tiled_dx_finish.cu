/* Tiled dX finish: the last step of the tiled path, after tiled_backward.cu.
 *
 * adaface_dx_finish_*: grid (B). Sums dx_partial over splits in order and
 * applies the Jacobian of x -> x / ||x|| (and MagFace's radial term). */
#include "common.cuh"

template <typename T>
__device__ void adaface_dx_finish_impl(const AdafaceDxParams& p) {
    const AdafaceStepRecord* rec = (const AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    const T* x = (const T*)p.x;
    const float* dxp = (const float*)p.dx_partial;
    float* dx = (float*)p.dx;
    const int64_t i = blockIdx.x;
    const int64_t dim = p.dim;
    const int64_t row_stride = p.batch * dim;
    const float inv_n = 1.0f / ((const float*)p.row_norm)[i];

    /* gx (splits in order) into dx, then the normalisation's Jacobian. */
    for (int64_t k = threadIdx.x; k < dim; k += ADAFACE_THREADS) {
        float g = 0.0f;
        for (int64_t s = 0; s < p.splits; ++s) g += dxp[s * row_stride + i * dim + k];
        dx[i * dim + k] = g;
    }
    adaface_normalise_row_grad(x, dx, i, dim, inv_n, p.row_radial ? ((const float*)p.row_radial)[i] : 0.0f);
}

ADAFACE_KERNEL(adaface_dx_finish_f32, AdafaceDxParams, (adaface_dx_finish_impl<float>(p)))
ADAFACE_KERNEL(adaface_dx_finish_bf16, AdafaceDxParams, (adaface_dx_finish_impl<adaface_bf16>(p)))
ADAFACE_KERNEL(adaface_dx_finish_f16, AdafaceDxParams, (adaface_dx_finish_impl<adaface_f16>(p)))
