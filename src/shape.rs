//! Problem shapes and the host-side input checks every backend shares.

use crate::element::{Dtype, Element, Label};
use crate::error::{Error, Result, Tensor};

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
            Tensor::Features => self.features_len()?,
            Tensor::Weight => self.weight_len()?,
            Tensor::Labels => self.batch,
            Tensor::MarginScaler => self.batch,
            Tensor::Output => actual,
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
    check_finite(Tensor::Weight, weight)?;
    check_nonzero_rows(Tensor::Features, features, shape.dim)?;
    check_nonzero_rows(Tensor::Weight, weight, shape.dim)?;
    Ok(())
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

/// No NaN or infinity.
pub fn check_finite<E: Element>(tensor: Tensor, data: &[E]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite { tensor, index }),
        None => Ok(()),
    }
}

/// Every row has a norm that is neither zero nor overflows, with its sum of
/// squares taken in the precision the backends accumulate in (`f64` for
/// `f64` inputs, `f32` for the rest): such a row cannot be normalised.
pub fn check_nonzero_rows<E: Element>(tensor: Tensor, data: &[E], dim: usize) -> Result<()> {
    for (row, values) in data.chunks_exact(dim).enumerate() {
        let sq = if E::DTYPE == Dtype::F64 {
            values.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>()
        } else {
            values.iter().map(|v| v.to_f32() * v.to_f32()).sum::<f32>() as f64
        };
        if sq == 0.0 {
            return Err(Error::ZeroNorm { tensor, row });
        }
        if !sq.is_finite() {
            return Err(Error::NormOverflow { tensor, row });
        }
    }
    Ok(())
}
