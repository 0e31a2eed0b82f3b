/* Combine: merges the per-split running max and sum-exp that a forward
 * (tiled_forward.cu or flash/flash_forward.cu) leaves into each row's
 * log-sum-exp and loss.
 *
 * adaface_combine: one block. Per row, the log-sum-exp of the splits in
 * split order; the mean loss (f64, fixed order); the EMA commit. */
#include "common.cuh"

__device__ void adaface_combine_impl(const AdafaceCombineParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    if (adaface_block_should_abort(rec)) return;
    const float* pmax = (const float*)p.partial_max;
    const float* psum = (const float*)p.partial_sum;
    double loss = 0.0;
    for (int64_t i = threadIdx.x; i < p.batch; i += ADAFACE_THREADS) {
        float m = -INFINITY;
        for (int64_t s = 0; s < p.splits; ++s) m = fmaxf(m, pmax[s * p.batch + i]);
        float l = 0.0f;
        for (int64_t s = 0; s < p.splits; ++s) l += psum[s * p.batch + i] * expf(pmax[s * p.batch + i] - m);
        const float lse = m + logf(l);
        const float sample = lse - ((const float*)p.target_logit)[i];
        ((float*)p.lse)[i] = lse;
        ((float*)p.sample_loss)[i] = sample;
        loss += (double)sample;
    }
    loss = adaface_block_sum_f64(loss);
    if (threadIdx.x == 0) {
        rec->loss = loss / (double)p.batch;
        if (p.commit_state) {
            double* state = (double*)p.state;
            state[0] = rec->state_mean;
            state[1] = rec->state_std;
        }
    }
}

ADAFACE_KERNEL(adaface_combine, AdafaceCombineParams, (adaface_combine_impl(p)))
