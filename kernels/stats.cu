/* Norm statistics, in two phases within one launch of any number of
 * blocks of ADAFACE_THREADS threads:
 *
 * 1. Every block: one warp per row (grid-stride) sums the squares of x_i in
 *    f32, with 16-byte loads where the rows allow, and writes ||x_i||.
 * 2. The block that arrives last (a counter in the step record; the
 *    arrivals are published with __threadfence) validates the labels, finds
 *    the error the host checks would report first (rows whose norm is zero
 *    or not finite are scanned again for their first non-finite element:
 *    the slow path runs only for bad input), writes it into the record or
 *    clears it, then computes the batch mean and unbiased std of the clipped
 *    norms (f64, fixed order), the updated EMA state (into the record: the
 *    combine kernel commits it), and the per-row scaler z_i with the margin
 *    offsets (a_i, b_i), and resets the counter for the next step.
 *
 * CurricularFace also needs every row's target cosine before any logit:
 * phase 1 computes it beside the norm (the same warp reads w_{y_i}), and
 * phase 2 moves t towards the batch mean (record->state_t) and turns each
 * cosine into the row's hard-negative threshold. MagFace's margin and
 * regulariser come from the norm alone (phase 2).
 *
 * Phase 2 reads every row, so its result does not depend on which block
 * finishes last: the statistics are deterministic for any grid. */
#include "common.cuh"

/* Sum of squares of one row by one warp (every lane gets the total). */
template <typename T>
__device__ __forceinline__ float adaface_row_sum_squares(const T* row, int64_t dim, bool vector_loads,
                                                         int lane) {
    constexpr int VEC = 16 / (int)sizeof(T);
    float ss = 0.0f;
    if (vector_loads) {
        const int64_t vectors = dim / VEC;
        for (int64_t v = lane; v < vectors; v += 32) {
            alignas(16) T vals[VEC];
            adaface_check_aligned(row + v * VEC, 16);
            *reinterpret_cast<uint4*>(vals) = *reinterpret_cast<const uint4*>(row + v * VEC);
#pragma unroll
            for (int j = 0; j < VEC; ++j) {
                const float f = to_float(vals[j]);
                ss = fmaf(f, f, ss);
            }
        }
    } else {
        for (int64_t k = lane; k < dim; k += 32) {
            const float f = to_float(row[k]);
            ss = fmaf(f, f, ss);
        }
    }
    return adaface_warp_sum(ss);
}

/* CurricularFace: the sum of squares of row i and its clamped target
 * cosine x_i . w_y / (||x_i|| ||w_y||), in one pass over x_i and w_y by one
 * warp (every lane gets both). The cosine is 0 for a label out of range
 * (phase 2 reports it; nothing uses the value). */
template <typename T>
__device__ __forceinline__ float adaface_row_norm_and_target_cosine(const T* x_row, const T* w, int64_t label,
                                                                    int64_t dim, int64_t classes, float eps,
                                                                    int lane, float* cosine) {
    const bool has_target = label >= 0 && label < classes;
    const T* w_row = w + (has_target ? label : 0) * dim;
    float xx = 0.0f, ww = 0.0f, xw = 0.0f;
    for (int64_t k = lane; k < dim; k += 32) {
        const float xv = to_float(x_row[k]);
        xx = fmaf(xv, xv, xx);
        if (has_target) {
            const float wv = to_float(w_row[k]);
            ww = fmaf(wv, wv, ww);
            xw = fmaf(xv, wv, xw);
        }
    }
    xx = adaface_warp_sum(xx);
    ww = adaface_warp_sum(ww);
    xw = adaface_warp_sum(xw);
    bool passes;
    *cosine = has_target ? adaface_clamp_cosine(xw / (sqrtf(xx) * sqrtf(ww)), eps, &passes) : 0.0f;
    return xx;
}

/* The first error of row i, as the host checks order them (the smallest
 * key), or ADAFACE_NO_ERROR. */
template <typename T, typename L>
__device__ uint64_t adaface_row_error(const T* x, const L* labels, float norm, int64_t i, int64_t dim,
                                      int64_t classes) {
    uint64_t key = ADAFACE_NO_ERROR;
    const int64_t label = adaface_label_at(labels, i);
    if (label < 0 || label >= classes) {
        key = ((uint64_t)ADAFACE_ERR_LABEL << 56) | (uint64_t)i;
    }
    if (norm > 0.0f && adaface_is_finite(norm)) return key;
    for (int64_t k = 0; k < dim; ++k) {
        if (!adaface_is_finite(to_float(x[i * dim + k]))) {
            const uint64_t e = ((uint64_t)ADAFACE_ERR_NONFINITE_X << 56) | (uint64_t)(i * dim + k);
            key = e < key ? e : key;
            break;
        }
    }
    const uint64_t overflow = norm == 0.0f ? 0u : 1u;
    const uint64_t e = ((uint64_t)ADAFACE_ERR_ROWNORM_X << 56) | (((uint64_t)i << 1) | overflow);
    return e < key ? e : key;
}

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

    /* Phase 1: the row norms. */
    const bool vector_loads = (p.x % 16 == 0) && ((dim * (int64_t)sizeof(T)) % 16 == 0);
    const int64_t warps = (int64_t)gridDim.x * ADAFACE_WARPS;
    for (int64_t i = (int64_t)blockIdx.x * ADAFACE_WARPS + warp; i < batch; i += warps) {
        float ss;
        if (p.kind == ADAFACE_MARGIN_CURRICULAR) {
            /* Phase 2 reads the cosine from row_thr and replaces it. */
            float c;
            ss = adaface_row_norm_and_target_cosine(x + i * dim, (const T*)p.w, adaface_label_at(labels, i), dim,
                                                    p.classes, (float)p.eps, lane, &c);
            if (lane == 0) ((float*)p.row_thr)[i] = c;
        } else {
            ss = adaface_row_sum_squares(x + i * dim, dim, vector_loads, lane);
        }
        if (lane == 0) row_norm[i] = sqrtf(ss);
    }

    /* Publish this block's norms, then count it in; the last one goes on. */
    __shared__ int is_last;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        const unsigned arrived = atomicAdd((unsigned*)&rec->stats_arrivals, 1u);
        is_last = arrived == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    /* Other blocks' norms: read past the (incoherent) L1. */
    const volatile float* norms = row_norm;

    /* Phase 2: errors, in the host checks' order. */
    __shared__ unsigned long long first_error;
    if (tid == 0) {
        first_error = ADAFACE_NO_ERROR;
        rec->stats_arrivals = 0;
    }
    __syncthreads();
    unsigned long long key = ADAFACE_NO_ERROR;
    for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) {
        const uint64_t e = adaface_row_error(x, labels, norms[i], i, dim, p.classes);
        key = e < key ? e : key;
    }
    if (key != ADAFACE_NO_ERROR) atomicMin(&first_error, key);
    __syncthreads();
    if (tid == 0) {
        rec->error_key = first_error;
        rec->error_value = 0;
        if (first_error != ADAFACE_NO_ERROR && (first_error >> 56) == ADAFACE_ERR_LABEL) {
            rec->error_value = adaface_label_at(labels, (int64_t)(first_error & ((1ull << 56) - 1)));
        }
    }
    if (first_error != ADAFACE_NO_ERROR) return;

    double sum = 0.0;
    for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) {
        sum += adaface_clip_f64((double)norms[i], p.clip_min, p.clip_max);
    }
    const double mean = adaface_block_sum_f64(sum) / (double)batch;
    double sq = 0.0;
    for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) {
        const double d = adaface_clip_f64((double)norms[i], p.clip_min, p.clip_max) - mean;
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

    /* CurricularFace: t moves towards this batch's mean target cosine
     * (f64, fixed order) before any logit uses it. */
    const double t_before = p.curricular_t ? *(const double*)p.curricular_t : 0.0;
    const bool curricular = p.kind == ADAFACE_MARGIN_CURRICULAR;
    const bool magface = p.kind == ADAFACE_MARGIN_MAGFACE;
    volatile float* row_thr = (float*)p.row_thr;
    double t_after = t_before;
    if (curricular) {
        double csum = 0.0;
        for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) csum += (double)row_thr[i];
        const double cmean = adaface_block_sum_f64(csum) / (double)batch;
        t_after = cmean * p.t_alpha + keep * t_before;
    }
    if (tid == 0) rec->state_t = t_after;

    float* row_z = (float*)p.row_z;
    float* row_a = (float*)p.row_a;
    float* row_b = (float*)p.row_b;
    float* row_mag = (float*)p.row_mag;
    for (int64_t i = tid; i < batch; i += ADAFACE_THREADS) {
        const double sn = adaface_clip_f64((double)norms[i], p.clip_min, p.clip_max);
        const double z = adaface_margin_scaler(sn, state_mean, state_std, p.h, p.eps);
        row_z[i] = (float)z;
        if (magface) {
            const AdafaceMagTerms mt = adaface_magface_terms((double)norms[i], p.mag_l_a, p.mag_u_a, p.mag_l_m,
                                                             p.mag_u_m, p.mag_lambda_g);
            row_a[i] = (float)mt.margin;
            row_b[i] = 0.0f;
            row_mag[i] = (float)mt.dmargin;
            row_mag[batch + i] = (float)mt.reg;
            row_mag[2 * batch + i] = (float)mt.dreg;
        } else {
            row_a[i] = (float)(p.a0 + p.a1 * z);
            row_b[i] = (float)(p.b0 + p.b1 * z);
        }
        if (curricular) {
            float unused;
            row_thr[i] = adaface_arc_cosine(row_thr[i], row_a[i], (float)p.eps, &unused);
        } else if (row_thr) {
            row_thr[i] = INFINITY;
        }
    }
}

ADAFACE_KERNEL(adaface_stats_f32_i32, AdafaceStatsParams, (adaface_stats_impl<float, int32_t>(p)))
ADAFACE_KERNEL(adaface_stats_f32_i64, AdafaceStatsParams, (adaface_stats_impl<float, int64_t>(p)))
ADAFACE_KERNEL(adaface_stats_bf16_i32, AdafaceStatsParams, (adaface_stats_impl<adaface_bf16, int32_t>(p)))
ADAFACE_KERNEL(adaface_stats_bf16_i64, AdafaceStatsParams, (adaface_stats_impl<adaface_bf16, int64_t>(p)))
ADAFACE_KERNEL(adaface_stats_f16_i32, AdafaceStatsParams, (adaface_stats_impl<adaface_f16, int32_t>(p)))
ADAFACE_KERNEL(adaface_stats_f16_i64, AdafaceStatsParams, (adaface_stats_impl<adaface_f16, int64_t>(p)))
