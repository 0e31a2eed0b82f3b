/* Scalar formulas of the loss, mirroring src/math.rs, for the kernels.
 *
 * Tile quantities (cosines, logits, their derivatives) are f32; the batch
 * statistics and the margin scaler are f64 (B values per step, so their
 * cost does not matter and the EMA state stays as exact as the host's). */
#ifndef ADAFACE_MATH_CUH
#define ADAFACE_MATH_CUH

#include "portable.cuh"

#define ADAFACE_PI_F 3.14159265358979f
/* log2(e): the flash epilogues take exp(v - m) as 2^(v log2(e) - m log2(e)). */
#define ADAFACE_LOG2E_F 1.44269504088896341f

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

/* SphereFace's target logit s (lambda c + psi(theta)) / (1 + lambda),
 * psi(theta) = (-1)^k cos(m theta) - 2k on [k pi / m, (k + 1) pi / m], of a
 * clamped target cosine c, and in *dlogit its derivative with respect to c
 * (math::sphere_target_logit). cos(m theta) is the Chebyshev polynomial
 * T_m(c), its derivative m U_{m-1}(c), both by their recurrence (no division
 * by sin(theta)); m is 1..16 (validated by the config). */
__device__ __forceinline__ float adaface_sphere_target_logit(float c, int m, float lambda, float s,
                                                             float* dlogit) {
    const float two_c = c + c;
    float t_prev = 1.0f, t_cur = c;  /* T_0, T_1 */
    float u_prev = 0.0f, u_cur = 1.0f; /* U_{-1}, U_0 */
    for (int n = 1; n < m; ++n) {
        const float t_next = two_c * t_cur - t_prev;
        t_prev = t_cur;
        t_cur = t_next;
        const float u_next = two_c * u_cur - u_prev;
        u_prev = u_cur;
        u_cur = u_next;
    }
    int k = (int)floorf((float)m * acosf(c) / ADAFACE_PI_F);
    k = k > m - 1 ? m - 1 : k;
    const float sign = (k & 1) ? -1.0f : 1.0f;
    const float psi = sign * t_cur - 2.0f * (float)k;
    const float denom = 1.0f + lambda;
    *dlogit = s * (lambda + sign * (float)m * u_cur) / denom;
    return s * (lambda * c + psi) / denom;
}

/* The target logit s (cos(clip(m1 theta + a, eps, pi - eps)) - b) of a
 * clamped target cosine c, and in *dlogit its derivative with respect to c,
 * zero where the angle clip is active (math::target_logit).
 *
 * A negative m1 selects SphereFace instead, with multiplier m = -m1 and
 * annealing weight lambda = b (the launch plan encodes it so: see
 * kernel_margin in src/launch/params.rs); no parameter struct changes. */
__device__ __forceinline__ float adaface_target_logit(float c, float a, float b, float s,
                                                      float m1, float eps, float* dlogit) {
    if (m1 < 0.0f) {
        return adaface_sphere_target_logit(c, (int)(-m1), b, s, dlogit);
    }
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
 * the backward decide what a logit is. A negative whose clamped cosine
 * exceeds the row's threshold thr is CurricularFace's hard negative,
 * s c (t + c) with derivative s (t + 2c) (t and the mask detached); thr is
 * +inf for every other policy, so the comparison never holds. */
__device__ __forceinline__ float adaface_logit(float dot, bool is_target, float a, float b, float thr, float t,
                                               float s, float m1, float eps, float* dlogit) {
    bool passes;
    const float c = adaface_clamp_cosine(dot, eps, &passes);
    float d;
    float logit;
    if (is_target) {
        logit = adaface_target_logit(c, a, b, s, m1, eps, &d);
    } else if (c > thr) {
        logit = s * c * (t + c);
        d = s * (t + c + c);
    } else {
        logit = s * c;
        d = s;
    }
    *dlogit = passes ? d : 0.0f;
    return logit;
}

/* adaface_logit for the affine policies alone, which never modulate a
 * negative (the naive and chunked paths, which take only those). */
__device__ __forceinline__ float adaface_affine_logit(float dot, bool is_target, float a, float b, float s, float m1,
                                                      float eps, float* dlogit) {
    return adaface_logit(dot, is_target, a, b, INFINITY, 0.0f, s, m1, eps, dlogit);
}

/* MagFace's per-row terms of a feature norm a (math::magface_terms), f64:
 * the margin m(a), its slope dm/da, and the weighted regulariser
 * lambda_g g(a) with its derivative, a clamped to [l_a, u_a] (both
 * derivatives zero outside). */
struct AdafaceMagTerms {
    double margin, dmargin, reg, dreg;
};
__device__ __forceinline__ AdafaceMagTerms adaface_magface_terms(double a, double l_a, double u_a, double l_m,
                                                                 double u_m, double lambda_g) {
    const double slope = (u_m - l_m) / (u_a - l_a);
    const double ac = adaface_clip_f64(a, l_a, u_a);
    const bool inside = l_a <= a && a <= u_a;
    const double inv_ua2 = 1.0 / (u_a * u_a);
    AdafaceMagTerms r;
    r.margin = slope * (ac - l_a) + l_m;
    r.dmargin = inside ? slope : 0.0;
    r.reg = lambda_g * (ac * inv_ua2 + 1.0 / ac);
    r.dreg = inside ? lambda_g * (inv_ua2 - 1.0 / (ac * ac)) : 0.0;
    return r;
}

/* cos(clip(acos(c) + margin, eps, pi - eps)) and, in *dmargin, its
 * derivative with respect to the margin (zero where the clip is active):
 * CurricularFace's threshold and MagFace's margin gradient
 * (math::arc_cosine). */
__device__ __forceinline__ float adaface_arc_cosine(float c, float margin, float eps, float* dmargin) {
    const float t = acosf(c) + margin;
    const float hi = ADAFACE_PI_F - eps;
    const float theta_m = adaface_clip_f32(t, eps, hi);
    *dmargin = (eps <= t && t <= hi) ? -sinf(theta_m) : 0.0f;
    return cosf(theta_m);
}

#endif
