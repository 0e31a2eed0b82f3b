//! Results of a forward or a training step, shared by the host backends.

use crate::state::{BatchStats, EmaState};

/// Per-row values a trainer may want to log or inspect.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Diagnostics<T> {
    /// `||x_i||`, unclipped.
    pub norms: Vec<T>,
    /// The clipped margin scaler `z_i`.
    pub margin_scaler: Vec<T>,
    /// The clamped target cosine `c_{i, y_i}`, before the margin.
    pub target_cosine: Vec<T>,
    /// Per-row cross-entropy `logsumexp_j(logit_ij) - logit_{i, y_i}`
    /// (MagFace: plus the row's regulariser `lambda_g g(||x_i||)`, so the
    /// loss is always the mean of these).
    pub sample_loss: Vec<T>,
}

/// Result of a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardOutput<T> {
    /// Mean loss over the batch.
    pub loss: T,
    /// The `B x C` logits, row-major, when the backend materialises them
    /// (the reference does; fused backends return an empty vector).
    pub logits: Vec<T>,
    /// Per-row values.
    pub diagnostics: Diagnostics<T>,
    /// This batch's norm statistics and the EMA state after it.
    pub stats: BatchStats<T>,
}

/// Result of a training step (forward and backward).
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput<T> {
    /// Mean loss over the batch.
    pub loss: T,
    /// `d loss / d x` for the raw features, `B x D` row-major.
    pub grad_features: Vec<T>,
    /// `d loss / d W` for the raw class weights, `C x D` row-major.
    pub grad_weight: Vec<T>,
    /// Per-row values.
    pub diagnostics: Diagnostics<T>,
    /// This batch's norm statistics and the EMA state after it.
    pub stats: BatchStats<T>,
}

impl<T> StepOutput<T> {
    /// The EMA state after this step.
    pub fn state_after(&self) -> EmaState {
        self.stats.state_after
    }
}

impl<T> ForwardOutput<T> {
    /// The EMA state after this forward.
    pub fn state_after(&self) -> EmaState {
        self.stats.state_after
    }
}
