//! Hyper-parameters of the loss, validated once when they are made.

use crate::error::{Error, Result};
use crate::state::EmaState;

/// How the target logit of each row is modified.
///
/// The four *affine* policies (AdaFace, ArcFace, CosFace, Combined; see
/// [`is_affine`](Self::is_affine)) are one formula with different per-row
/// constants: the target logit is
/// `s * (cos(clip(m1 * theta + a_i, eps, pi - eps)) - b_i)` with
/// `theta = acos(c_iy)`. AdaFace takes `a_i = -m z_i`, `b_i = m + m z_i`
/// from the per-row margin scaler `z_i`; the fixed margins are constants.
/// One formula means one code path in every backend.
///
/// SphereFace, CurricularFace and MagFace do not fit that formula (a
/// multiplicative margin, modulated negatives, a norm-dependent margin with
/// a regulariser); the reference, the fast CPU backend and the fused
/// kernels (`sim`, `cuda`) compute them, and the other backends (the naive
/// and chunked baselines, the class-sharded step) reject them with
/// [`Error::UnsupportedMargin`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MarginPolicy {
    /// AdaFace: the margin adapts to the feature norm. `m` is the margin,
    /// `h` the concentration of the scaler (0.333 in the paper). Any finite
    /// `h >= 0` is accepted, as in the official code: `h = 0` makes every
    /// scaler 0 (CosFace), and a large `h` saturates the scalers at -1 or +1.
    AdaFace {
        /// Margin.
        m: f64,
        /// Scaler concentration.
        h: f64,
    },
    /// ArcFace: additive angular margin, `cos(theta + m)`.
    ArcFace {
        /// Angular margin.
        m: f64,
    },
    /// CosFace: additive cosine margin, `cos(theta) - m`.
    CosFace {
        /// Cosine margin.
        m: f64,
    },
    /// insightface's combined margin, `cos(m1 * theta + m2) - m3`.
    Combined {
        /// Multiplicative angular margin.
        m1: f64,
        /// Additive angular margin.
        m2: f64,
        /// Additive cosine margin.
        m3: f64,
    },
    /// SphereFace (Liu et al. 2017), the multiplicative angular margin with
    /// its annealing: the target logit is `s (lambda cos(theta) + psi(theta))
    /// / (1 + lambda)` with `psi(theta) = (-1)^k cos(m theta) - 2k` on
    /// `[k pi / m, (k + 1) pi / m]`, `k = 0..m-1`. `lambda` is the annealing
    /// weight at this step (the paper starts it large and lowers it to 5 for
    /// `m = 4`; a trainer anneals by changing the config). The angle comes
    /// from the clamped cosine; it is not clipped again.
    SphereFace {
        /// Integer angular multiplier, 1 to [`MarginPolicy::SPHEREFACE_MAX_M`] (paper: 4).
        m: u32,
        /// Annealing weight `lambda >= 0` (0: pure `psi`).
        lambda: f64,
    },
    /// CurricularFace (Huang et al. 2020): the target logit is
    /// `s cos(clip(theta + m, eps, pi - eps))` (ArcFace), and every negative
    /// cosine `c_ij` above that target cosine `cos(theta_y + m)` (a hard
    /// negative) becomes `c_ij (t + c_ij)`. `t` is an EMA of the batch mean of
    /// the (clamped) target cosines, `t <- t_alpha mean + (1 - t_alpha) t`,
    /// updated before it is used in every step (forward or training) and
    /// detached (no gradient flows through `t` or the hard-negative mask). It
    /// is kept in [`EmaState::curricular_t`] and starts at 0; `t_alpha` is
    /// the config's EMA weight (0.01, the paper's momentum).
    CurricularFace {
        /// Angular margin (paper: 0.5, with `s = 64`).
        m: f64,
    },
    /// MagFace (Meng et al. 2021): ArcFace with a margin that grows with the
    /// feature norm `a = ||x||`,
    /// `m(a) = (u_m - l_m) / (u_a - l_a) (a - l_a) + l_m` for `a` clamped to
    /// `[l_a, u_a]`, target logit
    /// `s cos(clip(theta + m(a), eps, pi - eps))`, plus the norm regulariser
    /// `lambda_g g(a)`, `g(a) = a / u_a^2 + 1 / a`, averaged over the batch
    /// and added to the loss (as the official MagFace loss does). The norm is
    /// not detached: the gradient through `m(a)` and `g(a)` reaches the raw
    /// features (zero where the clamp is active).
    MagFace {
        /// Lower norm bound `l_a > 0` (paper: 10).
        l_a: f64,
        /// Upper norm bound `u_a > l_a` (paper: 110).
        u_a: f64,
        /// Margin at `l_a` (paper: 0.45).
        l_m: f64,
        /// Margin at `u_a`, `>= l_m` (paper: 0.8).
        u_m: f64,
        /// Weight of the regulariser (paper: 35; the official code's default
        /// is 20).
        lambda_g: f64,
    },
}

/// A margin in the form the kernels take it: per-row offsets affine in the
/// margin scaler, `a_i = a0 + a1 z_i` (angular) and `b_i = b0 + b1 z_i`
/// (additive), and the angle factor `m1` of `adaface_target_logit`
/// (`kernels/math.cuh`). SphereFace travels in the same fields:
/// `m1 = -m` (a negative factor selects it) and `b_i = lambda`. See
/// [`MarginPolicy::affine_in_z`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineMargin {
    /// Angular offset at `z = 0`.
    pub a0: f64,
    /// Angular offset per unit of `z`.
    pub a1: f64,
    /// Additive offset at `z = 0`.
    pub b0: f64,
    /// Additive offset per unit of `z`.
    pub b1: f64,
    /// Factor on the angle; negative for SphereFace's multiplier.
    pub m1: f64,
}

impl MarginPolicy {
    /// The largest SphereFace multiplier accepted.
    pub const SPHEREFACE_MAX_M: u32 = 16;

    /// SphereFace with the paper's `m = 4` and the final annealing weight
    /// `lambda = 5`.
    pub const fn sphere_face() -> Self {
        MarginPolicy::SphereFace { m: 4, lambda: 5.0 }
    }

    /// CurricularFace with the paper's `m = 0.5` (use it with `s = 64`).
    pub const fn curricular_face() -> Self {
        MarginPolicy::CurricularFace { m: 0.5 }
    }

    /// MagFace with the paper's `l_a = 10`, `u_a = 110`, `l_m = 0.45`,
    /// `u_m = 0.8`, `lambda_g = 35` (use it with `s = 64`).
    pub const fn mag_face() -> Self {
        MarginPolicy::MagFace {
            l_a: 10.0,
            u_a: 110.0,
            l_m: 0.45,
            u_m: 0.8,
            lambda_g: 35.0,
        }
    }

    /// The policy's name, as the eval tool and the Python package spell it.
    pub fn name(&self) -> &'static str {
        match self {
            MarginPolicy::AdaFace { .. } => "adaface",
            MarginPolicy::ArcFace { .. } => "arcface",
            MarginPolicy::CosFace { .. } => "cosface",
            MarginPolicy::Combined { .. } => "combined",
            MarginPolicy::SphereFace { .. } => "sphereface",
            MarginPolicy::CurricularFace { .. } => "curricularface",
            MarginPolicy::MagFace { .. } => "magface",
        }
    }

    /// Whether the policy is the one formula affine in the margin scaler
    /// (AdaFace, ArcFace, CosFace, Combined), which every backend computes.
    /// The others run on the reference, the fast CPU backend and the fused
    /// kernels.
    pub fn is_affine(&self) -> bool {
        matches!(
            self,
            MarginPolicy::AdaFace { .. }
                | MarginPolicy::ArcFace { .. }
                | MarginPolicy::CosFace { .. }
                | MarginPolicy::Combined { .. }
        )
    }

    /// `Ok` for an affine policy, [`Error::UnsupportedMargin`] naming
    /// `backend` otherwise: the check of the backends that only compute the
    /// affine formula.
    pub fn require_affine(&self, backend: &'static str) -> Result<()> {
        if self.is_affine() {
            Ok(())
        } else {
            Err(Error::UnsupportedMargin {
                policy: self.name(),
                backend,
            })
        }
    }

    /// The policy's target logit as per-row offsets affine in the margin
    /// scaler `z_i` ([`AffineMargin`]), when it has that form: the affine
    /// policies and SphereFace. `None` for CurricularFace and MagFace, whose
    /// logits depend on more than `z_i` (a batch EMA of target cosines, the
    /// raw feature norm): the kernels take those through their own per-row
    /// terms, computed by the stats kernel.
    pub fn affine_in_z(&self) -> Option<AffineMargin> {
        match *self {
            // A constant additive term and a negative angle factor, which
            // selects the SphereFace branch of the kernels' target logit.
            MarginPolicy::SphereFace { m, lambda } => Some(AffineMargin {
                a0: 0.0,
                a1: 0.0,
                b0: lambda,
                b1: 0.0,
                m1: -(m as f64),
            }),
            _ if self.is_affine() => {
                let (a0, b0) = self.row_offsets(0.0);
                let (a1, b1) = self.row_offsets(1.0);
                Some(AffineMargin {
                    a0,
                    a1: a1 - a0,
                    b0,
                    b1: b1 - b0,
                    m1: self.angle_scale(),
                })
            }
            _ => None,
        }
    }

    /// `m1`, the factor on the angle (1 for all but [`MarginPolicy::Combined`];
    /// meaningful for the affine policies only).
    pub fn angle_scale(&self) -> f64 {
        match *self {
            MarginPolicy::Combined { m1, .. } => m1,
            _ => 1.0,
        }
    }

    /// The per-row `(a, b)`: angular offset and additive offset of the target
    /// logit, for a row whose margin scaler is `z` (meaningful for the affine
    /// policies only: the others return `(0, 0)`).
    pub fn row_offsets(&self, z: f64) -> (f64, f64) {
        match *self {
            MarginPolicy::AdaFace { m, .. } => (-m * z, m + m * z),
            MarginPolicy::ArcFace { m } => (m, 0.0),
            MarginPolicy::CosFace { m } => (0.0, m),
            MarginPolicy::Combined { m2, m3, .. } => (m2, m3),
            MarginPolicy::SphereFace { .. }
            | MarginPolicy::CurricularFace { .. }
            | MarginPolicy::MagFace { .. } => (0.0, 0.0),
        }
    }

    fn validate(&self) -> Result<()> {
        let check = |parameter, value: f64, ok: bool, requirement| {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::InvalidConfig {
                    parameter,
                    value,
                    requirement,
                })
            }
        };
        match *self {
            MarginPolicy::AdaFace { m, h } => {
                check("m", m, m >= 0.0, "finite and >= 0")?;
                check("h", h, h >= 0.0, "finite and >= 0")
            }
            MarginPolicy::ArcFace { m } | MarginPolicy::CosFace { m } => {
                check("m", m, m >= 0.0, "finite and >= 0")
            }
            MarginPolicy::Combined { m1, m2, m3 } => {
                check("m1", m1, m1 > 0.0, "finite and > 0")?;
                check("m2", m2, m2 >= 0.0, "finite and >= 0")?;
                check("m3", m3, m3 >= 0.0, "finite and >= 0")
            }
            MarginPolicy::SphereFace { m, lambda } => {
                check(
                    "m",
                    m as f64,
                    (1..=Self::SPHEREFACE_MAX_M).contains(&m),
                    "an integer in 1..=16",
                )?;
                check("lambda", lambda, lambda >= 0.0, "finite and >= 0")
            }
            MarginPolicy::CurricularFace { m } => check(
                "m",
                m,
                (0.0..std::f64::consts::PI).contains(&m),
                "finite, >= 0 and < pi",
            ),
            MarginPolicy::MagFace {
                l_a,
                u_a,
                l_m,
                u_m,
                lambda_g,
            } => {
                check("l_a", l_a, l_a > 0.0, "finite and > 0")?;
                check("u_a", u_a, u_a > l_a, "finite and > l_a")?;
                check(
                    "l_m",
                    l_m,
                    (0.0..std::f64::consts::PI).contains(&l_m),
                    "finite, >= 0 and < pi",
                )?;
                check(
                    "u_m",
                    u_m,
                    u_m >= l_m && u_m < std::f64::consts::PI,
                    "finite, >= l_m and < pi",
                )?;
                check("lambda_g", lambda_g, lambda_g >= 0.0, "finite and >= 0")
            }
        }
    }
}

/// Validated hyper-parameters of the loss.
///
/// Made with [`AdaFaceConfig::builder`] (or [`Default`], the official
/// training defaults); fields are read through accessors so that a config,
/// once made, is always valid.
///
/// ```
/// let cfg = adaface::AdaFaceConfig::builder().m(0.4).s(64.0).t_alpha(0.01).build()?;
/// assert_eq!(cfg.s(), 64.0);
/// assert!(adaface::AdaFaceConfig::builder().s(-1.0).build().is_err());
/// # Ok::<(), adaface::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaFaceConfig {
    margin: MarginPolicy,
    s: f64,
    t_alpha: f64,
    eps: f64,
    norm_clip_min: f64,
    norm_clip_max: f64,
    initial_state: EmaState,
}

impl Default for AdaFaceConfig {
    /// m = 0.4, h = 0.333, s = 64, t_alpha = 0.01 (the official training
    /// default), eps = 1e-3, norm clip [0.001, 100], EMA state (20, 100).
    fn default() -> Self {
        AdaFaceConfig {
            margin: MarginPolicy::AdaFace { m: 0.4, h: 0.333 },
            s: 64.0,
            t_alpha: 0.01,
            eps: 1e-3,
            norm_clip_min: 1e-3,
            norm_clip_max: 100.0,
            initial_state: EmaState::new(20.0, 100.0),
        }
    }
}

impl AdaFaceConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> AdaFaceConfigBuilder {
        AdaFaceConfigBuilder {
            cfg: AdaFaceConfig::default(),
        }
    }

    /// A builder starting from this config.
    pub fn to_builder(&self) -> AdaFaceConfigBuilder {
        AdaFaceConfigBuilder { cfg: *self }
    }

    /// The margin policy.
    pub fn margin(&self) -> MarginPolicy {
        self.margin
    }
    /// Logit scale `s`.
    pub fn s(&self) -> f64 {
        self.s
    }
    /// EMA weight of the new batch statistics.
    pub fn t_alpha(&self) -> f64 {
        self.t_alpha
    }
    /// Cosine clamp and angle clip margin, and the std offset in the scaler.
    pub fn eps(&self) -> f64 {
        self.eps
    }
    /// Lower bound of the detached norm clip.
    pub fn norm_clip_min(&self) -> f64 {
        self.norm_clip_min
    }
    /// Upper bound of the detached norm clip.
    pub fn norm_clip_max(&self) -> f64 {
        self.norm_clip_max
    }
    /// EMA state before the first step.
    pub fn initial_state(&self) -> EmaState {
        self.initial_state
    }
    /// Scaler concentration `h` (0 for the fixed margins, which ignore it).
    pub fn h(&self) -> f64 {
        match self.margin {
            MarginPolicy::AdaFace { h, .. } => h,
            _ => 0.0,
        }
    }

    fn validate(&self) -> Result<()> {
        self.margin.validate()?;
        let check = |parameter, value: f64, ok: bool, requirement| {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::InvalidConfig {
                    parameter,
                    value,
                    requirement,
                })
            }
        };
        check(
            "s",
            self.s,
            (Self::MIN_S..=Self::MAX_S).contains(&self.s),
            "in [1e-3, 1e4] (what f16 tiles carry)",
        )?;
        check(
            "t_alpha",
            self.t_alpha,
            self.t_alpha > 0.0 && self.t_alpha <= 1.0,
            "in (0, 1]",
        )?;
        check(
            "eps",
            self.eps,
            self.eps > 0.0 && self.eps < 0.5,
            "in (0, 0.5)",
        )?;
        check(
            "norm_clip_min",
            self.norm_clip_min,
            self.norm_clip_min > 0.0,
            "finite and > 0",
        )?;
        check(
            "norm_clip_max",
            self.norm_clip_max,
            self.norm_clip_max >= self.norm_clip_min && self.norm_clip_max <= Self::MAX_NORM_CLIP,
            "finite, >= norm_clip_min and <= 1e15",
        )?;
        self.initial_state
            .validate()
            .map_err(|_| Error::InvalidConfig {
                parameter: "initial_state",
                value: if self.initial_state.batch_mean.is_finite() {
                    self.initial_state.batch_std
                } else {
                    self.initial_state.batch_mean
                },
                requirement: "finite, at most 1e30 in magnitude, with batch_std >= 0",
            })
    }

    /// The smallest logit scale accepted: below it the `f16` kernels' softmax
    /// gradients (about `s / B`) leave the range their tiles are scaled into.
    pub const MIN_S: f64 = 1e-3;
    /// The largest `norm_clip_max` accepted: the batch std squares
    /// deviations of clipped norms, which must sum without overflow in `f32`.
    pub const MAX_NORM_CLIP: f64 = 1e15;
    /// The largest logit scale accepted: above it the logits and their
    /// gradients leave what `f16` tiles carry (the official code uses 64).
    pub const MAX_S: f64 = 1e4;
}

/// Builds an [`AdaFaceConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone, Copy)]
pub struct AdaFaceConfigBuilder {
    cfg: AdaFaceConfig,
}

impl AdaFaceConfigBuilder {
    /// Sets the margin policy.
    pub fn margin(mut self, margin: MarginPolicy) -> Self {
        self.cfg.margin = margin;
        self
    }
    /// Sets AdaFace's margin `m` (switches the policy to AdaFace, keeping `h`).
    pub fn m(mut self, m: f64) -> Self {
        let h = self.cfg.h_or_default();
        self.cfg.margin = MarginPolicy::AdaFace { m, h };
        self
    }
    /// Sets AdaFace's scaler concentration `h` (switches the policy to AdaFace, keeping `m`).
    pub fn h(mut self, h: f64) -> Self {
        let m = self.cfg.m_or_default();
        self.cfg.margin = MarginPolicy::AdaFace { m, h };
        self
    }
    /// Sets the logit scale `s`.
    pub fn s(mut self, s: f64) -> Self {
        self.cfg.s = s;
        self
    }
    /// Sets the EMA weight of the new batch statistics (1.0: no history).
    pub fn t_alpha(mut self, t_alpha: f64) -> Self {
        self.cfg.t_alpha = t_alpha;
        self
    }
    /// Sets `eps`.
    pub fn eps(mut self, eps: f64) -> Self {
        self.cfg.eps = eps;
        self
    }
    /// Sets the detached norm clip `[min, max]`.
    pub fn norm_clip(mut self, min: f64, max: f64) -> Self {
        self.cfg.norm_clip_min = min;
        self.cfg.norm_clip_max = max;
        self
    }
    /// Sets the EMA state before the first step.
    pub fn initial_state(mut self, state: EmaState) -> Self {
        self.cfg.initial_state = state;
        self
    }
    /// Validates and returns the config.
    pub fn build(self) -> Result<AdaFaceConfig> {
        self.cfg.validate()?;
        Ok(self.cfg)
    }
}

impl AdaFaceConfig {
    fn h_or_default(&self) -> f64 {
        match self.margin {
            MarginPolicy::AdaFace { h, .. } => h,
            _ => 0.333,
        }
    }
    fn m_or_default(&self) -> f64 {
        match self.margin {
            MarginPolicy::AdaFace { m, .. } => m,
            _ => 0.4,
        }
    }
}
