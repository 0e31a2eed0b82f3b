/* The class-chunked cuBLAS path's row kernels (adaface::chunked). It runs
 * the naive path's pipeline one chunk of Cc classes at a time, so that its
 * workspace is O(B x Cc) instead of O(B x C):
 *
 *   stats -> normalize (rows of x)
 *   for each chunk: normalize (rows of W_c) -> GEMM cos_c = xn . wn_c^T
 *                   -> chunk_stats (merge the chunk's max / sum-exp into
 *                      per-row running statistics)
 *   for each chunk: normalize (W_c) -> GEMM cos_c -> chunk_grad (dL/dcos_c
 *                   with the global log-sum-exp; the target's loss) ->
 *                   GEMMs dXn += G_c . wn_c (beta 1 after the first chunk),
 *                   dWn_c = G_c^T . xn -> norm_backward (rows of W_c)
 *   loss -> norm_backward (rows of x).
 *
 * The normalize, loss and norm_backward kernels are the naive ones
 * (naive.cu), launched on a chunk through a shifted copy of the
 * naive parameters. Every reduction has a fixed order: the path is
 * deterministic. */
#include "common.cuh"

/* The chunk kernels' parameters: the naive parameters with `logits` and
 * `grad16` pointing at the chunk's B x Cc buffers (row stride Cc), and: */
typedef struct AdafaceChunkedParams {
    AdafaceNaiveParams naive;
    uint64_t row_max;    /* float[B]: running max of the logits */
    uint64_t row_sum;    /* float[B]: running sum of exp(logit - row_max) */
    int64_t chunk_start; /* first class of the chunk */
    int64_t chunk_len;   /* classes in the chunk (the buffers' row stride) */
} AdafaceChunkedParams;

__device__ __forceinline__ float adaface_chunked_block_max(float v) {
    __shared__ float warp_max[ADAFACE_WARPS];
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < ADAFACE_WARPS; ++w) m = fmaxf(m, warp_max[w]);
    __syncthreads();
    return m;
}

/* grid (B): the chunk's max and sum-exp of row i, merged into the running
 * statistics (the first chunk overwrites them). */
template <typename L>
__device__ void adaface_chunked_stats_impl(const AdafaceChunkedParams& cp) {
    const AdafaceNaiveParams& p = cp.naive;
    if (adaface_block_should_abort((const AdafaceStepRecord*)p.record)) return;
    const int64_t i = blockIdx.x;
    const int64_t label = adaface_label_at((const L*)p.labels, i) - cp.chunk_start;
    const float a = ((const float*)p.row_a)[i];
    const float b = ((const float*)p.row_b)[i];
    const float* row = (const float*)p.logits + i * cp.chunk_len;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < cp.chunk_len; j += ADAFACE_THREADS) {
        float d;
        m = fmaxf(m, adaface_affine_logit(row[j], j == label, a, b, p.s, p.m1, p.eps, &d));
    }
    m = adaface_chunked_block_max(m);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < cp.chunk_len; j += ADAFACE_THREADS) {
        float d;
        sum += expf(adaface_affine_logit(row[j], j == label, a, b, p.s, p.m1, p.eps, &d) - m);
    }
    sum = adaface_block_sum_f32(sum);
    if (threadIdx.x == 0) {
        float* run_max = (float*)cp.row_max + i;
        float* run_sum = (float*)cp.row_sum + i;
        if (cp.chunk_start == 0) {
            *run_max = m;
            *run_sum = sum;
        } else {
            const float m0 = *run_max;
            const float m1 = fmaxf(m0, m);
            *run_sum = *run_sum * expf(m0 - m1) + sum * expf(m - m1);
            *run_max = m1;
        }
    }
}

/* grid (B): dL/dcos over the chunk's row i, written over the cosines (and
 * in T), with the log-sum-exp of the whole row; the chunk holding the
 * label writes the row's loss. */
template <typename T, typename L>
__device__ void adaface_chunked_grad_impl(const AdafaceChunkedParams& cp) {
    const AdafaceNaiveParams& p = cp.naive;
    if (adaface_block_should_abort((const AdafaceStepRecord*)p.record)) return;
    const int64_t i = blockIdx.x;
    const int64_t label = adaface_label_at((const L*)p.labels, i) - cp.chunk_start;
    const float a = ((const float*)p.row_a)[i];
    const float b = ((const float*)p.row_b)[i];
    const float lse = ((const float*)cp.row_max)[i] + logf(((const float*)cp.row_sum)[i]);
    float* row = (float*)p.logits + i * cp.chunk_len;
    T* row16 = (T*)p.grad16 + i * cp.chunk_len;
    for (int64_t j = threadIdx.x; j < cp.chunk_len; j += ADAFACE_THREADS) {
        float d;
        const float logit = adaface_affine_logit(row[j], j == label, a, b, p.s, p.m1, p.eps, &d);
        if (j == label) ((float*)p.sample_loss)[i] = lse - logit;
        const float g = (expf(logit - lse) - (j == label ? 1.0f : 0.0f)) * p.inv_batch * d;
        row[j] = g;
        row16[j] = from_float<T>(g);
    }
}

ADAFACE_KERNEL(adaface_chunked_stats_i32, AdafaceChunkedParams, (adaface_chunked_stats_impl<int32_t>(p)))
ADAFACE_KERNEL(adaface_chunked_stats_i64, AdafaceChunkedParams, (adaface_chunked_stats_impl<int64_t>(p)))
ADAFACE_KERNEL(adaface_chunked_grad_f32_i32, AdafaceChunkedParams, (adaface_chunked_grad_impl<float, int32_t>(p)))
ADAFACE_KERNEL(adaface_chunked_grad_f32_i64, AdafaceChunkedParams, (adaface_chunked_grad_impl<float, int64_t>(p)))
ADAFACE_KERNEL(adaface_chunked_grad_bf16_i32, AdafaceChunkedParams,
               (adaface_chunked_grad_impl<adaface_bf16, int32_t>(p)))
ADAFACE_KERNEL(adaface_chunked_grad_bf16_i64, AdafaceChunkedParams,
               (adaface_chunked_grad_impl<adaface_bf16, int64_t>(p)))
ADAFACE_KERNEL(adaface_chunked_grad_f16_i32, AdafaceChunkedParams,
               (adaface_chunked_grad_impl<adaface_f16, int32_t>(p)))
ADAFACE_KERNEL(adaface_chunked_grad_f16_i64, AdafaceChunkedParams,
               (adaface_chunked_grad_impl<adaface_f16, int64_t>(p)))
