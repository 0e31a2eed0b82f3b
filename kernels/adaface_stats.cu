/* Norm statistics: one block of ADAFACE_THREADS threads per step.
 *
 * Resets the step record, validates the labels and x (recording the error
 * the host checks would report first), then computes ||x_i||, the batch
 * mean and unbiased std of the clipped norms (f64, fixed order), the
 * updated EMA state (into the record: the combine kernel commits it), and
 * the per-row scaler z_i with the margin offsets (a_i, b_i). */
#include "adaface_common.cuh"

template <typename T, typename L>
__device__ void adaface_stats_impl(const AdafaceStatsParams& p) {
    AdafaceStepRecord* rec = (AdafaceStepRecord*)p.record;
    const T* x = (const T*)p.x;
    const L* labels = (const L*)p.labels;
    float* row_norm = (float*)p.row_norm;
    const int64_t batch = p.batch;
    const int64_t dim = p.dim;
    const int tid = (int)threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;

    if (tid == 0) {
        rec->error_key = ADAFACE_NO_ERROR;
        rec->error_value = 0;
    }
    __syncthreads();

    for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) {
        const int64_t label = adaface_label_at(labels, i);
        if (label < 0 || label >= p.classes) {
            adaface_record_error(rec, ADAFACE_ERR_LABEL, (unsigned long long)i);
        }
    }

    /* One warp per row: sum of squares in f32, as the host check does. */
    for (int64_t i = warp; i < batch; i += ADAFACE_WARPS) {
        float ss = 0.0f;
        for (int64_t k = lane; k < dim; k += 32) {
            const int64_t idx = i * dim + k;
            const float v = to_float(x[idx]);
            if (!adaface_is_finite(v)) adaface_record_error(rec, ADAFACE_ERR_NONFINITE_X, (unsigned long long)idx);
            ss = fmaf(v, v, ss);
        }
        ss = adaface_warp_sum(ss);
        if (lane == 0) {
            if (ss == 0.0f) {
                adaface_record_error(rec, ADAFACE_ERR_ROWNORM_X, (unsigned long long)(i << 1));
            } else if (!adaface_is_finite(ss)) {
                adaface_record_error(rec, ADAFACE_ERR_ROWNORM_X, (unsigned long long)((i << 1) | 1));
            }
            row_norm[i] = sqrtf(ss);
        }
    }
    __syncthreads();

    /* The offending label's value, for the typed error. */
    if (tid == 0) {
        const uint64_t key = adaface_error_key(rec);
        if (key != ADAFACE_NO_ERROR && (key >> 56) == ADAFACE_ERR_LABEL) {
            rec->error_value = adaface_label_at(labels, (int64_t)(key & ((1ull << 56) - 1)));
        }
    }
    if (adaface_block_should_abort(rec)) return;

    double sum = 0.0;
    for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) {
        sum += adaface_clip_f64((double)row_norm[i], p.clip_min, p.clip_max);
    }
    const double mean = adaface_block_sum_f64(sum) / (double)batch;
    double sq = 0.0;
    for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) {
        const double d = adaface_clip_f64((double)row_norm[i], p.clip_min, p.clip_max) - mean;
        sq += d * d;
    }
    sq = adaface_block_sum_f64(sq);

    const double* state = (const double*)p.state;
    const double keep = 1.0 - p.t_alpha;
    const double state_mean = mean * p.t_alpha + keep * state[0];
    double norm_std;
    double state_std;
    if (batch > 1) {
        norm_std = sqrt(sq / (double)(batch - 1));
        state_std = norm_std * p.t_alpha + keep * state[1];
    } else {
        /* B = 1: the unbiased std does not exist; the std term keeps its
         * previous value (README, "batches of one row"). */
        norm_std = -1.0;
        state_std = state[1];
    }
    if (tid == 0) {
        rec->norm_mean = mean;
        rec->norm_std = norm_std;
        rec->state_mean = state_mean;
        rec->state_std = state_std;
    }

    float* row_z = (float*)p.row_z;
    float* row_a = (float*)p.row_a;
    float* row_b = (float*)p.row_b;
    for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) {
        const double sn = adaface_clip_f64((double)row_norm[i], p.clip_min, p.clip_max);
        const double z = adaface_margin_scaler(sn, state_mean, state_std, p.h, p.eps);
        row_z[i] = (float)z;
        row_a[i] = (float)(p.a0 + p.a1 * z);
        row_b[i] = (float)(p.b0 + p.b1 * z);
    }
}

ADAFACE_KERNEL(adaface_stats_f32_i32, AdafaceStatsParams, (adaface_stats_impl<float, int32_t>(p)))
ADAFACE_KERNEL(adaface_stats_f32_i64, AdafaceStatsParams, (adaface_stats_impl<float, int64_t>(p)))
ADAFACE_KERNEL(adaface_stats_bf16_i32, AdafaceStatsParams, (adaface_stats_impl<adaface_bf16, int32_t>(p)))
ADAFACE_KERNEL(adaface_stats_bf16_i64, AdafaceStatsParams, (adaface_stats_impl<adaface_bf16, int64_t>(p)))
ADAFACE_KERNEL(adaface_stats_f16_i32, AdafaceStatsParams, (adaface_stats_impl<adaface_f16, int32_t>(p)))
ADAFACE_KERNEL(adaface_stats_f16_i64, AdafaceStatsParams, (adaface_stats_impl<adaface_f16, int64_t>(p)))
