//! The AdaFace head as an op in a [candle](https://github.com/huggingface/candle)
//! training loop (feature `candle`).
//!
//! [`AdaFaceCandle`] keeps the config and the EMA state. Each
//! [`forward`](AdaFaceCandle::forward) runs one full step (loss and both
//! gradients) at once and returns the loss as a scalar `f32` tensor whose
//! backward hands the cached gradients to candle, scaled by the incoming
//! gradient. So `optimizer.backward_step(&loss)` trains the features' producer
//! and the class weights as with any candle loss.
//!
//! ```
//! use adaface::candle_op::AdaFaceCandle;
//! use adaface::AdaFaceConfig;
//! use candle_core::{Device, Tensor, Var};
//! use candle_nn::{Optimizer, SGD};
//!
//! let dev = Device::Cpu;
//! let features = Var::from_vec(vec![1.0f32, 2.0, 2.0, -1.0, 0.5, 1.0], (3, 2), &dev)?;
//! let weight = Var::from_vec(vec![1.0f32, 0.0, 0.0, 1.0], (2, 2), &dev)?;
//! let labels = Tensor::new(&[0u32, 1, 1], &dev)?;
//! let mut head = AdaFaceCandle::new(AdaFaceConfig::default());
//! let mut sgd = SGD::new(vec![features.clone(), weight.clone()], 0.1)?;
//! let loss = head.forward(&features, &weight, &labels)?;
//! sgd.backward_step(&loss)?;
//! println!("loss {}, EMA {:?}", loss.to_scalar::<f32>()?, head.state());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Tensor};

use crate::config::AdaFaceConfig;
use crate::error::{Error, Result, Tensor as Which};
use crate::output::Diagnostics;
use crate::shape::Shape;
use crate::state::EmaState;
use crate::trainer::AdaFaceLoss;

/// The AdaFace loss for candle tensors, with its EMA state.
///
/// Features (`B x D`) and weight (`C x D`) may be `f32`, `f64`, `bf16` or
/// `f16` (computed in `f32`; their gradients come back in their own dtype);
/// labels `u32`, `i32` or `i64`. Errors are this crate's [`Error`]: a failed
/// call leaves the EMA state as it was.
#[derive(Debug, Clone)]
pub struct AdaFaceCandle {
    loss: AdaFaceLoss,
    last: Option<Diagnostics<f32>>,
}

impl AdaFaceCandle {
    /// An op starting from the config's initial EMA state.
    pub fn new(cfg: AdaFaceConfig) -> Self {
        AdaFaceCandle {
            loss: AdaFaceLoss::new(cfg),
            last: None,
        }
    }

    /// The config.
    pub fn config(&self) -> &AdaFaceConfig {
        self.loss.config()
    }

    /// The EMA state the next step starts from (save it with checkpoints).
    pub fn state(&self) -> EmaState {
        self.loss.state()
    }

    /// Restores an EMA state; rejected if unusable.
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        self.loss.set_state(state)
    }

    /// Per-row values of the last successful step (norms, margin scalers,
    /// target cosines, per-row losses), for logging.
    pub fn last_diagnostics(&self) -> Option<&Diagnostics<f32>> {
        self.last.as_ref()
    }

    /// One training step: the mean loss as a scalar `f32` tensor; its
    /// backward gives `dL/d features` and `dL/d weight`. The EMA state
    /// advances (as the official head's does on every forward).
    pub fn forward(
        &mut self,
        features: &Tensor,
        weight: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor> {
        match features.device() {
            Device::Cpu => {}
            // CUDA BACKEND: a CUDA tensor goes to the fused kernels here
            // (a `cuda_fwd` over device storage, with the gradients kept on
            // the device). Until that lands it is a typed error, not a copy.
            Device::Cuda(_) => {
                return Err(Error::DeviceUnavailable {
                    reason: "the candle op has no CUDA path yet: move the tensors to the CPU"
                        .into(),
                })
            }
            Device::Metal(_) => {
                return Err(Error::DeviceUnavailable {
                    reason: "the candle op does not support Metal tensors".into(),
                })
            }
        }
        if !weight.device().same_device(features.device())
            || !labels.device().same_device(features.device())
        {
            return Err(Error::DeviceUnavailable {
                reason: "features, weight and labels must be on the same device".into(),
            });
        }
        let (batch, dim) = matrix_dims(features, Which::Features)?;
        let (classes, wdim) = matrix_dims(weight, Which::Weight)?;
        let shape = Shape::new(batch, dim, classes);
        if wdim != dim {
            return Err(Error::ShapeMismatch {
                tensor: Which::Weight,
                expected: shape.weight_len()?,
                actual: classes * wdim,
            });
        }
        let labels = host_labels(labels)?;
        let features = as_f32(features)?;
        let weight = as_f32(weight)?;
        let x = host_values(&features)?;
        let w = host_values(&weight)?;

        let step = self.loss.step(shape, &x, &w, &labels)?;
        let op = CachedStep {
            loss: step.loss,
            grad_features: step.grad_features,
            grad_weight: step.grad_weight,
            shape,
        };
        let loss = features.apply_op2(&weight, op).map_err(backend)?;
        self.last = Some(step.diagnostics);
        Ok(loss)
    }
}

/// A step already computed: its forward returns the loss, its backward the
/// gradients times the incoming gradient.
struct CachedStep {
    loss: f32,
    grad_features: Vec<f32>,
    grad_weight: Vec<f32>,
    shape: Shape,
}

impl CustomOp2 for CachedStep {
    fn name(&self) -> &'static str {
        "adaface"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
        Ok((
            CpuStorage::F32(vec![self.loss]),
            candle_core::Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        features: &Tensor,
        _weight: &Tensor,
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let Shape {
            batch,
            dim,
            classes,
        } = self.shape;
        let dev = features.device();
        let gx =
            Tensor::from_slice(&self.grad_features, (batch, dim), dev)?.broadcast_mul(grad_loss)?;
        let gw =
            Tensor::from_slice(&self.grad_weight, (classes, dim), dev)?.broadcast_mul(grad_loss)?;
        Ok((Some(gx), Some(gw)))
    }
}

fn backend(e: candle_core::Error) -> Error {
    Error::Backend {
        message: format!("candle: {e}"),
    }
}

fn matrix_dims(t: &Tensor, which: Which) -> Result<(usize, usize)> {
    match *t.dims() {
        [rows, cols] => Ok((rows, cols)),
        ref dims => Err(Error::RankMismatch {
            tensor: which,
            expected: 2,
            actual: dims.len(),
        }),
    }
}

/// `f32` view of a float tensor (a no-op for `f32`; other float dtypes
/// convert, and candle converts their gradients back).
fn as_f32(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 | DType::F64 | DType::BF16 | DType::F16 => {
            t.to_dtype(DType::F32).map_err(backend)
        }
        other => Err(Error::DtypeMismatch {
            expected: "f32, f64, bf16 or f16",
            actual: other.as_str(),
        }),
    }
}

fn host_values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(backend)
}

fn host_labels(t: &Tensor) -> Result<Vec<i64>> {
    let flat = match t.rank() {
        1 => t,
        r => {
            return Err(Error::RankMismatch {
                tensor: Which::Labels,
                expected: 1,
                actual: r,
            })
        }
    };
    match flat.dtype() {
        DType::U32 => flat
            .to_vec1::<u32>()
            .map(|v| v.into_iter().map(i64::from).collect())
            .map_err(backend),
        DType::I32 => flat
            .to_vec1::<i32>()
            .map(|v| v.into_iter().map(i64::from).collect())
            .map_err(backend),
        DType::I64 => flat.to_vec1::<i64>().map_err(backend),
        other => Err(Error::DtypeMismatch {
            expected: "u32, i32 or i64 labels",
            actual: other.as_str(),
        }),
    }
}
