/* Combine: merges the per-split running max and sum-exp that a forward
 * (tiled_forward.cu or flash/flash_forward.cu) leaves into each row's
 * log-sum-exp and loss.
 *
 * adaface_combine: one block. Per row, the log-sum-exp of the splits in
 * split order; the mean loss (f64, fixed order); the EMA commit (with
 * CurricularFace's t when the caller keeps it). MagFace: each row's loss
 * adds its regulariser, and the row's gradient through ||x_i|| (margin and
 * regulariser), which needs p_y, is reduced here to one coefficient that
 * dx_finish applies along x_i / ||x_i||. */
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
        const float target_logit = ((const float*)p.target_logit)[i];
        float sample = lse - target_logit;
        if (p.row_mag) {
            const float* mag = (const float*)p.row_mag;
            float dcos_dmargin;
            adaface_arc_cosine(((const float*)p.target_cos)[i], ((const float*)p.row_a)[i], p.eps, &dcos_dmargin);
            const float dlogit_dnorm = p.s * dcos_dmargin * mag[i];
            const float p_target = expf(target_logit - lse);
            ((float*)p.row_radial)[i] = ((p_target - 1.0f) * dlogit_dnorm + mag[2 * p.batch + i]) / (float)p.batch;
            sample += mag[p.batch + i];
        }
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
            if (p.curricular_t) *(double*)p.curricular_t = rec->state_t;
        }
    }
}

ADAFACE_KERNEL(adaface_combine, AdafaceCombineParams, (adaface_combine_impl(p)))
