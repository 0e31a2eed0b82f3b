//! The straightforward materialising CPU implementation: the reference in
//! `f32` after widening the inputs. It holds several `B x C` arrays
//! (logits, their derivatives, the softmax gradient) and normalised copies
//! of `X` and `W`, exactly the memory the fused backend avoids.

use crate::config::AdaFaceConfig;
use crate::cpu::CpuElement;
use crate::element::Label;
use crate::error::Result;
use crate::output::{ForwardOutput, StepOutput};
use crate::reference;
use crate::shape::Shape;
use crate::state::EmaState;

fn widen<E: CpuElement>(v: &[E]) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    E::widen(v, &mut out);
    out
}

/// Naive forward: materialises and returns the `B x C` logits.
pub fn forward<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    shape: Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
) -> Result<ForwardOutput<f32>> {
    reference::forward(cfg, state, shape, &widen(features), &widen(weight), labels)
}

/// Naive training step: returns freshly allocated gradients.
pub fn forward_backward<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    shape: Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
) -> Result<StepOutput<f32>> {
    reference::forward_backward(cfg, state, shape, &widen(features), &widen(weight), labels)
}
