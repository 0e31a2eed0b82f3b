//! Host-side checks of a call before anything is launched.

use crate::error::{Result, Tensor};
use crate::shape::Shape;

/// Host-side checks of one call before anything is launched: shape,
/// buffer lengths and output lengths. Labels, non-finite values and zero
/// norms are checked on the device.
pub fn check_call(
    shape: &Shape,
    x_len: usize,
    w_len: usize,
    labels_len: usize,
    outputs: Option<(usize, usize)>,
) -> Result<()> {
    crate::shape::check_sizes(shape, x_len, w_len, labels_len, outputs)
}

/// The gradient buffers of a step of `shape`: `dX` of `B x D` and `dW` of
/// `C x D` elements (for a class shard, `C` is the shard's classes), checked
/// in that order.
pub fn check_grads(shape: &Shape, dx_len: usize, dw_len: usize) -> Result<()> {
    shape.check_len(Tensor::GradFeatures, dx_len)?;
    shape.check_len(Tensor::GradWeight, dw_len)
}
