/* Scalar formulas of the loss, mirroring src/math.rs, for the kernels.
 *
 * Tile quantities (cosines, logits, their derivatives) are f32; the batch
 * statistics and the margin scaler are f64 (B values per step, so their
 * cost does not matter and the EMA state stays as exact as the host's). */
#ifndef ADAFACE_MATH_CUH
#define ADAFACE_MATH_CUH

#include "adaface_portable.cuh"

#define ADAFACE_PI_F 3.14159265358979f

/* `min(max(v, lo), hi)` exactly as `Real::clip` writes it. */
__device__ __forceinline__ double adaface_clip_f64(double v, double lo, double hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

__device__ __forceinline__ float adaface_clip_f32(float v, float lo, float hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* True unless NaN or infinite (no bit tricks: the same in both build modes). */
__device__ __forceinline__ bool adaface_is_finite(float v) {
    return (v - v) == 0.0f;
}

/* The margin scaler z = clip(h (sn - mean) / (std + eps), -1, 1) against
 * the already-updated EMA state (math::margin_scaler). */
__device__ __forceinline__ double adaface_margin_scaler(double sn, double mean, double std_,
                                                        double h, double eps) {
    return adaface_clip_f64(((sn - mean) / (std_ + eps)) * h, -1.0, 1.0);
}

/* The clamped cosine; *passes is the inclusive gradient gate of the clamp
 * (math::clamp_cosine). */
__device__ __forceinline__ float adaface_clamp_cosine(float dot, float eps, bool* passes) {
    const float lo = -1.0f + eps;
    const float hi = 1.0f - eps;
    *passes = lo <= dot && dot <= hi;
    return adaface_clip_f32(dot, lo, hi);
}

/* The target logit s (cos(clip(m1 theta + a, eps, pi - eps)) - b) of a
 * clamped target cosine c, and in *dlogit its derivative with respect to c,
 * zero where the angle clip is active (math::target_logit). */
__device__ __forceinline__ float adaface_target_logit(float c, float a, float b, float s,
                                                      float m1, float eps, float* dlogit) {
    const float theta = acosf(c);
    const float t = m1 * theta + a;
    const float hi = ADAFACE_PI_F - eps;
    const float theta_m = adaface_clip_f32(t, eps, hi);
    const bool passes = eps <= t && t <= hi;
    /* d cos(theta') / dc = sin(theta') m1 / sqrt(1 - c^2); |c| <= 1 - eps. */
    *dlogit = passes ? s * m1 * sinf(theta_m) / sqrtf(1.0f - c * c) : 0.0f;
    return s * (cosf(theta_m) - b);
}

/* The logit of class j for row i and its derivative with respect to the
 * unclamped cosine (clamp gate included): the one place the forward and
 * the backward decide what a logit is. */
__device__ __forceinline__ float adaface_logit(float dot, bool is_target, float a, float b,
                                               float s, float m1, float eps, float* dlogit) {
    bool passes;
    const float c = adaface_clamp_cosine(dot, eps, &passes);
    float d;
    float logit;
    if (is_target) {
        logit = adaface_target_logit(c, a, b, s, m1, eps, &d);
    } else {
        logit = s * c;
        d = s;
    }
    *dlogit = passes ? d : 0.0f;
    return logit;
}

#endif
