/* The naive GPU baseline's kernels (adaface::naive::cuda): what a
 * straightforward implementation does around cuBLAS GEMMs, materialising
 * the B x C logits. They are deliberately simple (one block per row, three
 * passes over each logit row) and exist to be measured against the fused
 * kernels, not to be fast. The norm statistics come from adaface_stats.
 *
 * A naive step is:
 *   stats -> normalize -> GEMM cos = xn . wn^T -> softmax (loss row, and the
 *   gradient dL/dcos over the logits in place) -> loss -> GEMMs
 *   gx = G . wn, gw = G^T . xn -> norm_backward.
 */
#include "common.cuh"


__device__ __forceinline__ float adaface_naive_block_max(float v) {
    __shared__ float warp_max[ADAFACE_WARPS];
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < ADAFACE_WARPS; ++w) m = fmaxf(m, warp_max[w]);
    __syncthreads();
    return m;
}

/* grid (B + C): rows of x, then rows of W. Writes xn, wn and ||W_j||
 * (||x_i|| comes from adaface_stats). */
template <typename T>
__device__ void adaface_naive_normalize_impl(const AdafaceNaiveParams& p) {
    if (adaface_block_should_abort((const AdafaceStepRecord*)p.record)) return;
    const int64_t r = blockIdx.x;
    const bool is_x = r < p.batch;
    const int64_t row = is_x ? r : r - p.batch;
    const T* src = (const T*)(is_x ? p.x : p.w) + row * p.dim;
    T* dst = (T*)(is_x ? p.xn : p.wn) + row * p.dim;
    float norm;
    if (is_x) {
        norm = ((const float*)p.row_norm)[row];
    } else {
        float ss = 0.0f;
        for (int64_t k = threadIdx.x; k < p.dim; k += ADAFACE_THREADS) {
            const float v = to_float(src[k]);
            ss = fmaf(v, v, ss);
        }
        norm = sqrtf(adaface_block_sum_f32(ss));
        if (threadIdx.x == 0) ((float*)p.class_norm)[row] = norm;
    }
    const float inv = 1.0f / norm;
    for (int64_t k = threadIdx.x; k < p.dim; k += ADAFACE_THREADS) dst[k] = from_float<T>(to_float(src[k]) * inv);
}

/* grid (B): one logit row per block. Three passes over the row: max,
 * sum-exp, then the gradient written over the cosines (and in T). */
template <typename T, typename L>
__device__ void adaface_naive_softmax_impl(const AdafaceNaiveParams& p) {
    if (adaface_block_should_abort((const AdafaceStepRecord*)p.record)) return;
    const int64_t i = blockIdx.x;
    const int64_t label = adaface_label_at((const L*)p.labels, i);
    const float a = ((const float*)p.row_a)[i];
    const float b = ((const float*)p.row_b)[i];
    float* row = (float*)p.logits + i * p.classes;
    T* row16 = (T*)p.grad16 + i * p.classes;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < p.classes; j += ADAFACE_THREADS) {
        float d;
        m = fmaxf(m, adaface_affine_logit(row[j], j == label, a, b, p.s, p.m1, p.eps, &d));
    }
    m = adaface_naive_block_max(m);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < p.classes; j += ADAFACE_THREADS) {
        float d;
        sum += expf(adaface_affine_logit(row[j], j == label, a, b, p.s, p.m1, p.eps, &d) - m);
    }
    const float lse = m + logf(adaface_block_sum_f32(sum));
    for (int64_t j = threadIdx.x; j < p.classes; j += ADAFACE_THREADS) {
        float d;
        const float logit = adaface_affine_logit(row[j], j == label, a, b, p.s, p.m1, p.eps, &d);
        if (j == label) ((float*)p.sample_loss)[i] = lse - logit;
        const float g = (expf(logit - lse) - (j == label ? 1.0f : 0.0f)) * p.inv_batch * d;
        row[j] = g;
        row16[j] = from_float<T>(g);
    }
}

/* One block: the mean loss (f64, fixed order) and the EMA commit. */
__device__ void adaface_naive_loss_impl(const AdafaceNaiveParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    double loss = 0.0;
    for (int64_t i = threadIdx.x; i < p.batch; i += ADAFACE_THREADS) loss += (double)((const float*)p.sample_loss)[i];
    loss = adaface_block_sum_f64(loss);
    if (threadIdx.x == 0) {
        rec->loss = loss / (double)p.batch;
        double* state = (double*)p.state;
        state[0] = rec->state_mean;
        state[1] = rec->state_std;
    }
}

/* grid (B + C): the Jacobian of v -> v / ||v|| on each row of dX and dW,
 * in place: out = (g - vh (vh . g)) / ||v||. */
template <typename T>
__device__ void adaface_naive_norm_backward_impl(const AdafaceNaiveParams& p) {
    if (adaface_block_should_abort((const AdafaceStepRecord*)p.record)) return;
    const int64_t r = blockIdx.x;
    const bool is_x = r < p.batch;
    const int64_t row = is_x ? r : r - p.batch;
    const T* v = (const T*)(is_x ? p.x : p.w) + row * p.dim;
    float* g = (float*)(is_x ? p.dx : p.dw) + row * p.dim;
    const float inv = 1.0f / ((const float*)(is_x ? p.row_norm : p.class_norm))[row];
    float along = 0.0f;
    for (int64_t k = threadIdx.x; k < p.dim; k += ADAFACE_THREADS) along = fmaf(to_float(v[k]), g[k], along);
    along = adaface_block_sum_f32(along) * inv;
    for (int64_t k = threadIdx.x; k < p.dim; k += ADAFACE_THREADS) g[k] = (g[k] - to_float(v[k]) * inv * along) * inv;
}

ADAFACE_KERNEL(adaface_naive_normalize_f32, AdafaceNaiveParams, (adaface_naive_normalize_impl<float>(p)))
ADAFACE_KERNEL(adaface_naive_normalize_bf16, AdafaceNaiveParams, (adaface_naive_normalize_impl<adaface_bf16>(p)))
ADAFACE_KERNEL(adaface_naive_normalize_f16, AdafaceNaiveParams, (adaface_naive_normalize_impl<adaface_f16>(p)))
ADAFACE_KERNEL(adaface_naive_softmax_f32_i32, AdafaceNaiveParams, (adaface_naive_softmax_impl<float, int32_t>(p)))
ADAFACE_KERNEL(adaface_naive_softmax_f32_i64, AdafaceNaiveParams, (adaface_naive_softmax_impl<float, int64_t>(p)))
ADAFACE_KERNEL(adaface_naive_softmax_bf16_i32, AdafaceNaiveParams,
               (adaface_naive_softmax_impl<adaface_bf16, int32_t>(p)))
ADAFACE_KERNEL(adaface_naive_softmax_bf16_i64, AdafaceNaiveParams,
               (adaface_naive_softmax_impl<adaface_bf16, int64_t>(p)))
ADAFACE_KERNEL(adaface_naive_softmax_f16_i32, AdafaceNaiveParams, (adaface_naive_softmax_impl<adaface_f16, int32_t>(p)))
ADAFACE_KERNEL(adaface_naive_softmax_f16_i64, AdafaceNaiveParams, (adaface_naive_softmax_impl<adaface_f16, int64_t>(p)))
ADAFACE_KERNEL(adaface_naive_loss, AdafaceNaiveParams, (adaface_naive_loss_impl(p)))
ADAFACE_KERNEL(adaface_naive_norm_backward_f32, AdafaceNaiveParams, (adaface_naive_norm_backward_impl<float>(p)))
ADAFACE_KERNEL(adaface_naive_norm_backward_bf16, AdafaceNaiveParams,
               (adaface_naive_norm_backward_impl<adaface_bf16>(p)))
ADAFACE_KERNEL(adaface_naive_norm_backward_f16, AdafaceNaiveParams,
               (adaface_naive_norm_backward_impl<adaface_f16>(p)))
