//! Scalar formulas of the loss, shared by the CPU paths so that there is one
//! definition of each (the kernels mirror them in `kernels/math.cuh`).

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

/// SphereFace's `psi(theta) = (-1)^k cos(m theta) - 2k` on
/// `[k pi / m, (k + 1) pi / m]` for the cosine `c = cos(theta)`, and its
/// derivative with respect to `c`. `cos(m theta)` is the Chebyshev
/// polynomial `T_m(c)` and its derivative `m U_{m-1}(c)`, both by their
/// recurrences, so neither divides by `sin(theta)`.
#[inline]
pub fn sphere_psi<T: Real>(c: T, m: u32) -> (T, T) {
    // T_0 = 1, T_1 = c; U_0 = 1, U_1 = 2c; both obey X_{n+1} = 2c X_n - X_{n-1}.
    let two_c = c + c;
    let (mut t_prev, mut t_cur) = (T::ONE, c);
    let (mut u_prev, mut u_cur) = (T::ZERO, T::ONE); // U_{-1} = 0, U_0 = 1
    for _ in 1..m {
        let t_next = two_c * t_cur - t_prev;
        t_prev = t_cur;
        t_cur = t_next;
        let u_next = two_c * u_cur - u_prev;
        u_prev = u_cur;
        u_cur = u_next;
    }
    // t_cur = T_m(c), u_cur = U_{m-1}(c).
    let theta = c.to_f64().clamp(-1.0, 1.0).acos();
    let k = ((m as f64 * theta / std::f64::consts::PI).floor() as u32).min(m - 1);
    let sign = if k % 2 == 0 { T::ONE } else { -T::ONE };
    let mf = T::from_f64(m as f64);
    (
        sign * t_cur - T::from_f64(2.0 * k as f64),
        sign * mf * u_cur,
    )
}

/// The SphereFace target logit `s (lambda c + psi(c)) / (1 + lambda)` and its
/// derivative with respect to `c`.
#[inline]
pub fn sphere_target_logit<T: Real>(c: T, m: u32, lambda: T, s: T) -> (T, T) {
    let (psi, dpsi) = sphere_psi(c, m);
    let denom = T::ONE + lambda;
    (s * (lambda * c + psi) / denom, s * (lambda + dpsi) / denom)
}

/// The cosine `cos(clip(acos(c) + margin, eps, pi - eps))` of an additive
/// angular margin, and the derivative of that cosine with respect to the
/// margin (zero where the clip is active). CurricularFace's hard-negative
/// threshold and MagFace's margin gradient.
#[inline]
pub fn arc_cosine<T: Real>(c: T, margin: T, eps: T) -> (T, T) {
    let t = c.acos() + margin;
    let hi = T::PI - eps;
    let theta_m = t.clip(eps, hi);
    let d = if eps <= t && t <= hi {
        -theta_m.sin()
    } else {
        T::ZERO
    };
    (theta_m.cos(), d)
}

/// MagFace's per-row terms for a feature norm `a`: the margin `m(a)`, its
/// slope `dm/da`, the regulariser `g(a) = a / u_a^2 + 1 / a` and `dg/da`,
/// all with `a` clamped to `[l_a, u_a]` (both derivatives zero outside).
#[inline]
pub fn magface_terms<T: Real>(a: T, l_a: f64, u_a: f64, l_m: f64, u_m: f64) -> MagTerms<T> {
    let (la, ua) = (T::from_f64(l_a), T::from_f64(u_a));
    let slope = T::from_f64((u_m - l_m) / (u_a - l_a));
    let ac = a.clip(la, ua);
    let inside = la <= a && a <= ua;
    let inv_ua2 = T::ONE / (ua * ua);
    MagTerms {
        margin: slope * (ac - la) + T::from_f64(l_m),
        dmargin: if inside { slope } else { T::ZERO },
        g: ac * inv_ua2 + T::ONE / ac,
        dg: if inside {
            inv_ua2 - T::ONE / (ac * ac)
        } else {
            T::ZERO
        },
    }
}

/// See [`magface_terms`].
#[derive(Debug, Clone, Copy)]
pub struct MagTerms<T> {
    /// `m(a)`.
    pub margin: T,
    /// `dm/da` (0 outside the clamp).
    pub dmargin: T,
    /// `g(a)`.
    pub g: T,
    /// `dg/da` (0 outside the clamp).
    pub dg: T,
}

/// One row's target under any policy: everything the backends need beyond
/// the affine formula.
#[derive(Debug, Clone, Copy)]
pub struct RowTarget<T> {
    /// Target logit.
    pub logit: T,
    /// `d logit / d c` (not yet gated by the cosine clamp).
    pub dlogit: T,
    /// `d logit / d ||x||` (MagFace's margin; 0 for the others).
    pub dlogit_dnorm: T,
    /// Regulariser added to the row's loss (MagFace's `lambda_g g(a)`).
    pub reg: T,
    /// `d reg / d ||x||`.
    pub dreg_dnorm: T,
    /// CurricularFace's hard-negative threshold `cos(theta_y + m)`: a
    /// negative cosine above it is modulated (`+inf` for the others).
    pub threshold: T,
}

/// The target of a row with clamped target cosine `c`, margin scaler `z`
/// and feature norm `norm`, for any policy (the affine ones through
/// [`target_logit`], bit-identically).
#[inline]
pub fn row_target<T: Real>(
    policy: &crate::config::MarginPolicy,
    c: T,
    z: T,
    norm: T,
    k: &MarginConsts<T>,
) -> RowTarget<T> {
    use crate::config::MarginPolicy as P;
    let plain = |logit, dlogit| RowTarget {
        logit,
        dlogit,
        dlogit_dnorm: T::ZERO,
        reg: T::ZERO,
        dreg_dnorm: T::ZERO,
        threshold: T::from_f64(f64::INFINITY),
    };
    match *policy {
        P::SphereFace { m, lambda } => {
            let (l, d) = sphere_target_logit(c, m, T::from_f64(lambda), k.s);
            plain(l, d)
        }
        P::CurricularFace { m } => {
            let (l, d) = target_logit(c, T::from_f64(m), T::ZERO, k);
            let (threshold, _) = arc_cosine(c, T::from_f64(m), k.eps);
            RowTarget {
                threshold,
                ..plain(l, d)
            }
        }
        P::MagFace {
            l_a,
            u_a,
            l_m,
            u_m,
            lambda_g,
        } => {
            let mt = magface_terms(norm, l_a, u_a, l_m, u_m);
            let (l, d) = target_logit(c, mt.margin, T::ZERO, k);
            let (_, dcos_dmargin) = arc_cosine(c, mt.margin, k.eps);
            let lg = T::from_f64(lambda_g);
            RowTarget {
                logit: l,
                dlogit: d,
                dlogit_dnorm: k.s * dcos_dmargin * mt.dmargin,
                reg: lg * mt.g,
                dreg_dnorm: lg * mt.dg,
                threshold: T::from_f64(f64::INFINITY),
            }
        }
        _ => {
            let (a, b) = policy.row_offsets(z.to_f64());
            let (l, d) = target_logit(c, T::from_f64(a), T::from_f64(b), k);
            plain(l, d)
        }
    }
}

/// CurricularFace's modulated negative logit `s c (t + c)` and its
/// derivative `s (t + 2c)` for a cosine `c` above the row's threshold.
#[inline]
pub fn curricular_negative<T: Real>(c: T, t: T, s: T) -> (T, T) {
    (s * c * (t + c), s * (t + c + c))
}
