//! Problem shapes and the host-side input checks every backend shares.

use crate::element::{Dtype, Element, Label};
use crate::error::{Error, Result, Tensor};
use rayon::prelude::*;

/// Sizes of one training step: `B` rows of `D` features against `C` classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Rows in the batch, `B`.
    pub batch: usize,
    /// Embedding dimension, `D`.
    pub dim: usize,
    /// Number of classes, `C`.
    pub classes: usize,
}

impl Shape {
    /// A shape; nothing is checked until it meets inputs.
    pub fn new(batch: usize, dim: usize, classes: usize) -> Self {
        Shape {
            batch,
            dim,
            classes,
        }
    }

    /// Elements of the features, `B * D`.
    pub fn features_len(&self) -> Result<usize> {
        self.batch
            .checked_mul(self.dim)
            .ok_or(Error::TooLarge { what: "B * D" })
    }

    /// Elements of the weight, `C * D`.
    pub fn weight_len(&self) -> Result<usize> {
        self.classes
            .checked_mul(self.dim)
            .ok_or(Error::TooLarge { what: "C * D" })
    }

    /// Checks that no dimension is zero.
    pub fn check_nonempty(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::EmptyBatch);
        }
        if self.dim == 0 {
            return Err(Error::EmptyDimension { dimension: "dim" });
        }
        if self.classes == 0 {
            return Err(Error::EmptyDimension {
                dimension: "classes",
            });
        }
        Ok(())
    }

    /// Checks that `actual` elements fit `tensor` of this shape.
    pub fn check_len(&self, tensor: Tensor, actual: usize) -> Result<()> {
        let expected = match tensor {
            Tensor::Features | Tensor::GradFeatures => self.features_len()?,
            Tensor::Weight | Tensor::GradWeight => self.weight_len()?,
            Tensor::Labels => self.batch,
            Tensor::MarginScaler => self.batch,
        };
        if expected != actual {
            return Err(Error::ShapeMismatch {
                tensor,
                expected,
                actual,
            });
        }
        Ok(())
    }
}

/// The sizes of a step's inputs, then of its gradient buffers (when given),
/// in that order: a wrong [`Shape`] is reported against the inputs, and a
/// wrong buffer names the gradient it holds.
pub fn check_sizes(
    shape: &Shape,
    features_len: usize,
    weight_len: usize,
    labels_len: usize,
    grads: Option<(usize, usize)>,
) -> Result<()> {
    shape.check_nonempty()?;
    shape.check_len(Tensor::Features, features_len)?;
    shape.check_len(Tensor::Weight, weight_len)?;
    shape.check_len(Tensor::Labels, labels_len)?;
    if let Some((dx, dw)) = grads {
        shape.check_len(Tensor::GradFeatures, dx)?;
        shape.check_len(Tensor::GradWeight, dw)?;
    }
    Ok(())
}

/// All host-side checks of one step's inputs, in the order errors are
/// reported: shapes, labels, non-finite values, zero-norm rows.
pub fn validate_inputs<E: Element, L: Label>(
    shape: &Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
) -> Result<()> {
    shape.check_nonempty()?;
    shape.check_len(Tensor::Features, features.len())?;
    shape.check_len(Tensor::Weight, weight.len())?;
    shape.check_len(Tensor::Labels, labels.len())?;
    check_labels(labels, shape.classes)?;
    check_finite(Tensor::Features, features)?;
    // The weight is the big tensor: one parallel sweep gives every row's
    // squared norm, which is non-finite for any row holding a NaN or an
    // infinity, so the finiteness scan only revisits such rows.
    let weight_sq = row_square_sums(weight, shape.dim);
    for (row, sq) in weight_sq.iter().enumerate() {
        if !sq.is_finite() {
            let start = row * shape.dim;
            check_finite(Tensor::Weight, &weight[start..start + shape.dim]).map_err(
                |e| match e {
                    Error::NonFinite { tensor, index } => Error::NonFinite {
                        tensor,
                        index: start + index,
                    },
                    other => other,
                },
            )?;
        }
    }
    check_nonzero_rows(Tensor::Features, features, shape.dim)?;
    first_bad_norm(Tensor::Weight, &weight_sq)
}

/// Every label in `0..classes`.
pub fn check_labels<L: Label>(labels: &[L], classes: usize) -> Result<()> {
    for (row, &l) in labels.iter().enumerate() {
        let label = l.to_i64();
        if label < 0 || label as u64 >= classes as u64 {
            return Err(Error::LabelOutOfRange {
                row,
                label,
                classes,
            });
        }
    }
    Ok(())
}

/// No NaN or infinity. Blocks are scanned in parallel without branches (so
/// the scan vectorises); the error still names the first offending index.
pub fn check_finite<E: Element>(tensor: Tensor, data: &[E]) -> Result<()> {
    const BLOCK: usize = 1 << 14;
    let bad_block = data
        .par_chunks(BLOCK)
        .position_first(|block| !block.iter().fold(true, |ok, v| ok & v.is_finite()));
    match bad_block {
        Some(b) => {
            let offset = data[b * BLOCK..]
                .iter()
                .position(|v| !v.is_finite())
                .unwrap_or(0);
            Err(Error::NonFinite {
                tensor,
                index: b * BLOCK + offset,
            })
        }
        None => Ok(()),
    }
}

/// Every row has a norm that is neither zero nor overflows, with its sum of
/// squares taken in the precision the backends accumulate in (`f64` for
/// `f64` inputs, `f32` for the rest): such a row cannot be normalised.
pub fn check_nonzero_rows<E: Element>(tensor: Tensor, data: &[E], dim: usize) -> Result<()> {
    first_bad_norm(tensor, &row_square_sums(data, dim))
}

/// The first zero or overflowing squared norm, as an error.
fn first_bad_norm(tensor: Tensor, square_sums: &[f64]) -> Result<()> {
    match square_sums
        .iter()
        .position(|sq| *sq == 0.0 || !sq.is_finite())
    {
        Some(row) if square_sums[row] == 0.0 => Err(Error::ZeroNorm { tensor, row }),
        Some(row) => Err(Error::NormOverflow { tensor, row }),
        None => Ok(()),
    }
}

/// Each row's sum of squares, in `f64` for `f64` data and `f32` otherwise,
/// rows in parallel.
fn row_square_sums<E: Element>(data: &[E], dim: usize) -> Vec<f64> {
    data.par_chunks_exact(dim)
        .map(|values| {
            match E::DTYPE {
                Dtype::F64 => lane_sum(values, |v| v.to_f64() * v.to_f64()),
                // f16 widens fastest a block at a time (one vectorised call).
                Dtype::F16 => {
                    let mut block = [0.0f32; 256];
                    let mut sum = 0.0f32;
                    for part in values.chunks(block.len()) {
                        let wide = &mut block[..part.len()];
                        E::widen_slice(part, wide);
                        sum += lane_sum(wide, |v| v * v);
                    }
                    sum as f64
                }
                _ => lane_sum(values, |v| v.to_f32() * v.to_f32()) as f64,
            }
        })
        .collect()
}

/// Sum of `f(v)` with sixteen independent partial sums, so the compiler can
/// vectorise it (a single running float sum cannot be reordered).
#[inline(always)]
fn lane_sum<E: Copy, T>(values: &[E], f: impl Fn(E) -> T) -> T
where
    T: Copy + Default + std::ops::Add<Output = T>,
{
    let mut acc = [T::default(); 16];
    let chunks = values.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = *a + f(v);
        }
    }
    let tail = rest.iter().fold(T::default(), |a, &v| a + f(v));
    acc.iter().fold(tail, |a, &b| a + b)
}
