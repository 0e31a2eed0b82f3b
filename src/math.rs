//! Scalar formulas of the loss, shared by the CPU paths so that there is one
//! definition of each (the kernels mirror them in `kernels/adaface_math.cuh`).

use crate::config::AdaFaceConfig;
use crate::real::Real;
use crate::state::{BatchStats, EmaState};

/// Per-step constants of the margin, in the compute precision.
#[derive(Debug, Clone, Copy)]
pub struct MarginConsts<T> {
    /// Logit scale.
    pub s: T,
    /// Cosine clamp / angle clip margin.
    pub eps: T,
    /// Angle factor `m1`.
    pub m1: T,
    /// Norm clip bounds.
    pub clip_min: T,
    /// Norm clip bounds.
    pub clip_max: T,
    /// Scaler concentration.
    pub h: T,
}

impl<T: Real> MarginConsts<T> {
    /// The constants of `cfg`, rounded to `T`.
    pub fn new(cfg: &AdaFaceConfig) -> Self {
        MarginConsts {
            s: T::from_f64(cfg.s()),
            eps: T::from_f64(cfg.eps()),
            m1: T::from_f64(cfg.margin().angle_scale()),
            clip_min: T::from_f64(cfg.norm_clip_min()),
            clip_max: T::from_f64(cfg.norm_clip_max()),
            h: T::from_f64(cfg.h()),
        }
    }
}

/// The margin scaler `z = clip(h (sn - mean) / (std + eps), -1, 1)` of a row
/// whose clipped norm is `sn`, against the already-updated `state`.
#[inline]
pub fn margin_scaler<T: Real>(sn: T, state: &EmaState, k: &MarginConsts<T>) -> T {
    let mean = T::from_f64(state.batch_mean);
    let std = T::from_f64(state.batch_std);
    (((sn - mean) / (std + k.eps)) * k.h).clip(-T::ONE, T::ONE)
}

/// The detached norm statistics of a batch, as the official head takes
/// them: the norms are clipped, the EMA moves towards this batch's mean and
/// unbiased std BEFORE it is used, then each row gets its margin scaler.
/// Returns the batch statistics and the scalers.
pub fn batch_scalers<T: Real>(
    norms: &[T],
    state: &EmaState,
    cfg: &AdaFaceConfig,
    k: &MarginConsts<T>,
) -> (BatchStats<T>, Vec<T>) {
    let clipped: Vec<T> = norms
        .iter()
        .map(|&n| n.clip(k.clip_min, k.clip_max))
        .collect();
    let stats = state.update(&clipped, cfg.t_alpha());
    let scalers = clipped
        .iter()
        .map(|&sn| margin_scaler(sn, &stats.state_after, k))
        .collect();
    (stats, scalers)
}

/// The clamped cosine and whether the clamp passes the gradient.
#[inline]
pub fn clamp_cosine<T: Real>(dot: T, eps: T) -> (T, bool) {
    let lo = -T::ONE + eps;
    let hi = T::ONE - eps;
    (dot.clip(lo, hi), lo <= dot && dot <= hi)
}

/// The target logit `s (cos(clip(m1 theta + a, eps, pi - eps)) - b)` of a
/// clamped target cosine `c`, and its derivative with respect to `c`
/// (zero where the angle clip is active).
#[inline]
pub fn target_logit<T: Real>(c: T, a: T, b: T, k: &MarginConsts<T>) -> (T, T) {
    let theta = c.acos();
    let t = k.m1 * theta + a;
    let hi = T::PI - k.eps;
    let theta_m = t.clip(k.eps, hi);
    let logit = k.s * (theta_m.cos() - b);
    let passes = k.eps <= t && t <= hi;
    let d = if passes {
        // d cos(theta')/dc = sin(theta') * m1 / sqrt(1 - c^2)
        k.s * k.m1 * theta_m.sin() / (T::ONE - c * c).sqrt()
    } else {
        T::ZERO
    };
    (logit, d)
}
