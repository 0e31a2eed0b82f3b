/* Row statistics of a class-sharded step (src/shard/kernels.rs): one block
 * of ADAFACE_THREADS threads. The modes are described with
 * AdafaceShardParams in adaface_params.h; between them the caller
 * all-reduces `rows` across the shards (MAX of the maxima, then SUM of the
 * rest), so a step on K devices never moves a B x C matrix. */
#include "common.cuh"

template <typename L>
__device__ void adaface_shard_rows_impl(const AdafaceShardParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    const int64_t b = p.batch;
    float* rows = (float*)p.rows;
    if (adaface_block_should_abort(rec)) {
        /* This shard found an error (its weights, say) and will not commit:
         * its statistics become NaN, which the all-reduce SUM carries to
         * every shard, whose ownership check then fails too, so no shard
         * commits its state. Without it the others would reduce whatever
         * the buffer held (zeros, or the last step's rows) and commit. */
        if (p.mode == 0)
            for (int64_t i = threadIdx.x; i < 5 * b; i += ADAFACE_THREADS) rows[i] = NAN;
        return;
    }
    const float* pmax = (const float*)p.partial_max;
    const float* psum = (const float*)p.partial_sum;
    for (int64_t i = threadIdx.x; i < b; i += ADAFACE_THREADS) {
        /* The shard's max over its splits, as the combine kernel finds it. */
        float m = -INFINITY;
        if (p.mode != 2) {
            for (int64_t s = 0; s < p.splits; ++s) m = fmaxf(m, pmax[s * b + i]);
        }
        if (p.mode == 0) {
            const int64_t y = adaface_label_at((const L*)p.labels, i) - p.class_offset;
            const bool owned = y >= 0 && y < p.classes;
            float l = 0.0f;
            for (int64_t s = 0; s < p.splits; ++s) l += psum[s * b + i] * expf(pmax[s * b + i] - m);
            rows[i] = m;
            rows[b + i] = l;
            rows[2 * b + i] = owned ? ((const float*)p.target_logit)[i] : 0.0f;
            rows[3 * b + i] = owned ? ((const float*)p.target_cos)[i] : 0.0f;
            rows[4 * b + i] = owned ? 1.0f : 0.0f;
        } else if (p.mode == 1) {
            rows[b + i] *= expf(m - rows[i]);
        } else if (rows[4 * b + i] != 1.0f) {
            adaface_record_error(rec, ADAFACE_ERR_SHARD, (unsigned long long)i);
        }
    }
}

ADAFACE_KERNEL(adaface_shard_rows_i32, AdafaceShardParams, (adaface_shard_rows_impl<int32_t>(p)))
ADAFACE_KERNEL(adaface_shard_rows_i64, AdafaceShardParams, (adaface_shard_rows_impl<int64_t>(p)))
