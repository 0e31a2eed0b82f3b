//! The EMA statistics of the feature norms that AdaFace's margin scaler uses.

use crate::error::{Error, Result};
use crate::real::Real;

/// Exponential moving averages of the batch mean and std of the clipped
/// feature norms, and CurricularFace's `t`. Plain data: read it, store it in
/// a checkpoint, restore it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmaState {
    /// EMA of the batch mean of the clipped norms.
    pub batch_mean: f64,
    /// EMA of the unbiased batch std of the clipped norms.
    pub batch_std: f64,
    /// CurricularFace's `t`: the EMA of the batch mean target cosine
    /// (starts at 0). Only [`MarginPolicy::CurricularFace`](crate::MarginPolicy::CurricularFace)
    /// reads and moves it; every other policy carries it through unchanged.
    pub curricular_t: f64,
}

/// Statistics of one batch and the state they lead to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchStats<T> {
    /// Mean of this batch's clipped norms.
    pub mean: T,
    /// Unbiased std of this batch's clipped norms; `None` for a batch of one
    /// row, whose unbiased std does not exist.
    pub std: Option<T>,
    /// The EMA state after this batch.
    pub state_after: EmaState,
}

impl Default for EmaState {
    /// The official initial state, `(20, 100)`, and CurricularFace's `t = 0`.
    fn default() -> Self {
        EmaState {
            batch_mean: 20.0,
            batch_std: 100.0,
            curricular_t: 0.0,
        }
    }
}

impl EmaState {
    /// The largest magnitude either value may have: every backend keeps the
    /// state in `f32` at least, and the scaler subtracts, divides and
    /// multiplies with it, so the bound leaves `f32` (max about 3.4e38) a wide
    /// margin. Real states are feature norms, far below it.
    pub const MAX_MAGNITUDE: f64 = 1e30;

    /// The state `(batch_mean, batch_std)` with CurricularFace's `t = 0`.
    pub const fn new(batch_mean: f64, batch_std: f64) -> Self {
        EmaState {
            batch_mean,
            batch_std,
            curricular_t: 0.0,
        }
    }

    /// Checks that the state can be used: both values finite and at most
    /// [`MAX_MAGNITUDE`](Self::MAX_MAGNITUDE) in magnitude, std >= 0, and
    /// `curricular_t` in `[-1, 1]` (an average of cosines).
    pub fn validate(&self) -> Result<()> {
        if !(-1.0..=1.0).contains(&self.curricular_t) {
            return Err(Error::InvalidState {
                reason: "curricular_t must be in [-1, 1] (an average of cosines)",
            });
        }
        if !self.batch_mean.is_finite() || !self.batch_std.is_finite() {
            return Err(Error::InvalidState {
                reason: "batch_mean and batch_std must be finite",
            });
        }
        if self.batch_mean.abs() > Self::MAX_MAGNITUDE || self.batch_std > Self::MAX_MAGNITUDE {
            return Err(Error::InvalidState {
                reason: "batch_mean and batch_std must be at most 1e30 in magnitude \
                         (the state is kept in f32)",
            });
        }
        if self.batch_std < 0.0 {
            return Err(Error::InvalidState {
                reason: "batch_std must be >= 0",
            });
        }
        Ok(())
    }

    /// The official update, computed in `T`: the EMA moves towards this
    /// batch's mean and unbiased std of the clipped norms, BEFORE the scaler
    /// uses it.
    ///
    /// With one row the unbiased std is undefined (the official code stores
    /// NaN and never recovers); here the std term keeps its previous value
    /// while the mean is still updated, so no NaN ever enters the state.
    /// `clipped_norms` must not be empty.
    pub fn update<T: Real>(&self, clipped_norms: &[T], t_alpha: f64) -> BatchStats<T> {
        let n = clipped_norms.len();
        debug_assert!(n > 0, "EmaState::update needs at least one norm");
        let count = T::from_f64(n as f64);
        let mean = clipped_norms.iter().copied().sum::<T>() / count;
        let std = (n > 1).then(|| {
            let ss: T = clipped_norms.iter().map(|&v| (v - mean) * (v - mean)).sum();
            (ss / T::from_f64((n - 1) as f64)).sqrt()
        });
        let t = T::from_f64(t_alpha);
        let keep = T::from_f64(1.0 - t_alpha);
        let batch_mean = mean * t + keep * T::from_f64(self.batch_mean);
        let batch_std = match std {
            Some(sd) => sd * t + keep * T::from_f64(self.batch_std),
            None => T::from_f64(self.batch_std),
        };
        BatchStats {
            mean,
            std,
            state_after: EmaState {
                batch_mean: batch_mean.to_f64(),
                batch_std: batch_std.to_f64(),
                curricular_t: self.curricular_t,
            },
        }
    }
}

/// CurricularFace's update of `t`, computed in `T`: the EMA moves towards
/// the mean of this batch's clamped target cosines with weight `t_alpha`.
/// `target_cosines` must not be empty.
pub fn curricular_t_update<T: Real>(t: f64, target_cosines: &[T], t_alpha: f64) -> T {
    let count = T::from_f64(target_cosines.len() as f64);
    let mean = target_cosines.iter().copied().sum::<T>() / count;
    mean * T::from_f64(t_alpha) + T::from_f64(1.0 - t_alpha) * T::from_f64(t)
}
