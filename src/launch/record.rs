//! Decoding of the step record the kernels write: the error a step hit,
//! or its loss, batch statistics and EMA state.

use crate::error::{Error, Result, Tensor};
use crate::kernel_params::{
    AdafaceStepRecord, ADAFACE_ERR_LABEL, ADAFACE_ERR_NONFINITE_W, ADAFACE_ERR_NONFINITE_X,
    ADAFACE_ERR_ROWNORM_W, ADAFACE_ERR_ROWNORM_X, ADAFACE_ERR_SHARD,
};
use crate::shape::Shape;
use crate::state::EmaState;

/// The key of a step record that holds no error.
pub const NO_ERROR: u64 = u64::MAX;

/// Turns a step record into `Ok` or the typed error the host-side checks
/// would have reported for the same inputs.
pub fn check_record(rec: &AdafaceStepRecord, shape: &Shape) -> Result<()> {
    if rec.error_key == NO_ERROR {
        return Ok(());
    }
    let kind = (rec.error_key >> 56) as u32;
    let detail = (rec.error_key & ((1u64 << 56) - 1)) as usize;
    Err(match kind {
        ADAFACE_ERR_LABEL => Error::LabelOutOfRange {
            row: detail,
            label: rec.error_value,
            classes: shape.classes,
        },
        ADAFACE_ERR_NONFINITE_X => Error::NonFinite {
            tensor: Tensor::Features,
            index: detail,
        },
        ADAFACE_ERR_NONFINITE_W => Error::NonFinite {
            tensor: Tensor::Weight,
            index: detail,
        },
        ADAFACE_ERR_ROWNORM_X | ADAFACE_ERR_ROWNORM_W => {
            let tensor = if kind == ADAFACE_ERR_ROWNORM_X {
                Tensor::Features
            } else {
                Tensor::Weight
            };
            let row = detail >> 1;
            if detail & 1 == 0 {
                Error::ZeroNorm { tensor, row }
            } else {
                Error::NormOverflow { tensor, row }
            }
        }
        ADAFACE_ERR_SHARD => Error::InvalidShard {
            reason: format!("the label of row {detail} is held by no shard or by several"),
        },
        _ => Error::Backend {
            message: format!("unknown device error key {:#x}", rec.error_key),
        },
    })
}

/// Results of a step the host reads from the record: loss, batch
/// statistics, and the EMA state the step led to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSummary {
    /// Mean loss.
    pub loss: f64,
    /// Mean of this batch's clipped norms.
    pub norm_mean: f64,
    /// Unbiased std of this batch's clipped norms; `None` when `B = 1`.
    pub norm_std: Option<f64>,
    /// EMA state after this step (stored only if the call asked for it).
    pub state_after: EmaState,
}

impl StepSummary {
    /// Reads a record, failing with its error if it holds one.
    pub fn from_record(rec: &AdafaceStepRecord, shape: &Shape) -> Result<Self> {
        check_record(rec, shape)?;
        Ok(StepSummary {
            loss: rec.loss,
            norm_mean: rec.norm_mean,
            norm_std: (rec.norm_std >= 0.0).then_some(rec.norm_std),
            // t: CurricularFace's update, else carried (0 where the
            // caller keeps none).
            state_after: EmaState {
                curricular_t: rec.state_t,
                ..EmaState::new(rec.state_mean, rec.state_std)
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_records_decode_to_typed_errors() {
        let shape = Shape::new(8, 4, 10);
        let rec = |kind: u32, detail: u64, value: i64| AdafaceStepRecord {
            error_key: ((kind as u64) << 56) | detail,
            error_value: value,
            ..Default::default()
        };
        assert_eq!(
            check_record(&rec(ADAFACE_ERR_LABEL, 3, -2), &shape),
            Err(Error::LabelOutOfRange {
                row: 3,
                label: -2,
                classes: 10
            })
        );
        assert_eq!(
            check_record(&rec(ADAFACE_ERR_NONFINITE_W, 39, 0), &shape),
            Err(Error::NonFinite {
                tensor: Tensor::Weight,
                index: 39
            })
        );
        assert_eq!(
            check_record(&rec(ADAFACE_ERR_ROWNORM_X, 5 << 1, 0), &shape),
            Err(Error::ZeroNorm {
                tensor: Tensor::Features,
                row: 5
            })
        );
        assert_eq!(
            check_record(&rec(ADAFACE_ERR_ROWNORM_W, (7 << 1) | 1, 0), &shape),
            Err(Error::NormOverflow {
                tensor: Tensor::Weight,
                row: 7
            })
        );
        let ok = AdafaceStepRecord {
            error_key: NO_ERROR,
            norm_std: -1.0,
            ..Default::default()
        };
        assert_eq!(
            StepSummary::from_record(&ok, &shape).unwrap().norm_std,
            None
        );
    }
}
