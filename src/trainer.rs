//! A stateful loss for training loops: the config and the EMA state in one
//! object, and one call per step that returns the loss and both gradients.
//!
//! Trainer integrations (the `candle` op, the `train` example) go through
//! [`AdaFaceLoss`], so the host compute they use is chosen in one place,
//! `host_step`.

use crate::config::AdaFaceConfig;
use crate::element::Label;
use crate::error::Result;
use crate::output::StepOutput;
use crate::shape::Shape;
use crate::state::EmaState;

/// The AdaFace head as a training loop sees it: call [`step`](Self::step)
/// once per batch; the EMA state moves only when a step succeeds.
///
/// ```
/// use adaface::{trainer::AdaFaceLoss, AdaFaceConfig, Shape};
/// let mut loss = AdaFaceLoss::new(AdaFaceConfig::default());
/// let (x, w, y) = (vec![1.0f32, 2.0, 2.0, 1.0], vec![1.0f32, 0.0, 0.0, 1.0], vec![0u32, 1]);
/// let out = loss.step(Shape::new(2, 2, 2), &x, &w, &y)?;
/// assert_eq!(out.grad_features.len(), 4);
/// assert_eq!(loss.state(), out.state_after());
/// # Ok::<(), adaface::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AdaFaceLoss {
    cfg: AdaFaceConfig,
    state: EmaState,
}

impl AdaFaceLoss {
    /// A loss starting from the config's initial EMA state.
    pub fn new(cfg: AdaFaceConfig) -> Self {
        AdaFaceLoss {
            state: cfg.initial_state(),
            cfg,
        }
    }

    /// The config.
    pub fn config(&self) -> &AdaFaceConfig {
        &self.cfg
    }

    /// The EMA state the next step starts from (store it in checkpoints).
    pub fn state(&self) -> EmaState {
        self.state
    }

    /// Restores an EMA state (from a checkpoint); rejected if unusable.
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        state.validate()?;
        self.state = state;
        Ok(())
    }

    /// One training step on `f32` rows: loss, `dL/dx` (`B x D`), `dL/dW`
    /// (`C x D`) and per-row diagnostics; the EMA state advances. On error
    /// nothing changes.
    pub fn step<L: Label>(
        &mut self,
        shape: Shape,
        features: &[f32],
        weight: &[f32],
        labels: &[L],
    ) -> Result<StepOutput<f32>> {
        let out = host_step(&self.cfg, &self.state, shape, features, weight, labels)?;
        self.state = out.state_after();
        Ok(out)
    }
}

/// The host compute behind every trainer integration: the fused CPU
/// backend ([`crate::cpu`]), which agrees with the `f32` reference to f32
/// precision (tests/cpu_backend.rs) at a fraction of its time and memory.
fn host_step<L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    shape: Shape,
    features: &[f32],
    weight: &[f32],
    labels: &[L],
) -> Result<StepOutput<f32>> {
    crate::cpu::forward_backward_alloc(
        cfg,
        state,
        &crate::cpu::CpuOptions::default(),
        shape,
        features,
        weight,
        labels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn state_advances_only_on_success() {
        let mut loss = AdaFaceLoss::new(AdaFaceConfig::default());
        let start = loss.state();
        let x = [3.0f32, 4.0, 1.0, 2.0, 0.5, -1.0];
        let w = [1.0f32, 0.5, -0.5, 1.0];
        let err = loss.step(Shape::new(3, 2, 2), &x, &w, &[0u32, 1, 2]);
        assert!(matches!(err, Err(Error::LabelOutOfRange { row: 2, .. })));
        assert_eq!(loss.state(), start);
        let out = loss
            .step(Shape::new(3, 2, 2), &x, &w, &[0u32, 1, 1])
            .unwrap();
        assert_ne!(loss.state(), start);
        assert_eq!(loss.state(), out.state_after());
        assert!(loss.set_state(EmaState::new(f64::NAN, 1.0)).is_err());
    }
}
