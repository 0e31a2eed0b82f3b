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
//! CPU tensors run the fused CPU backend. CUDA tensors (feature
//! `candle-cuda`) run the CUDA kernels on candle's own stream, on its
//! device buffers: the loss and the gradients come back as device tensors
//! and the EMA state stays on the GPU, so a step never waits for the GPU.
//! Reading the state ([`AdaFaceCandle::state`]) or checking a step
//! (`AdaFaceCandle::check_last_step`, feature `candle-cuda`) synchronises.
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
//! println!("loss {}, EMA {:?}", loss.to_scalar::<f32>()?, head.state()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Tensor};

use crate::config::AdaFaceConfig;
use crate::error::{Error, Result, Tensor as Which};
use crate::output::Diagnostics;
use crate::shape::Shape;
use crate::state::EmaState;
use crate::trainer::AdaFaceLoss;

#[cfg(feature = "candle-cuda")]
mod cuda;

/// The AdaFace loss for candle tensors, with its EMA state.
///
/// Features (`B x D`) and weight (`C x D`) may be `f32`, `f64`, `bf16` or
/// `f16` (computed in `f32`; their gradients come back in their own dtype);
/// labels `u32`, `i32` or `i64`. Errors are this crate's [`Error`]: a failed
/// call leaves the EMA state as it was.
///
/// On CUDA tensors (feature `candle-cuda`) the checks that need the data
/// (labels in range, finite values, non-zero norms) run in the kernels,
/// so `forward` cannot report them without waiting for the GPU: such a
/// step's loss is NaN, its gradients zero, the EMA state unchanged, and
/// `check_last_step` (feature `candle-cuda`) returns the typed error.
#[derive(Debug)]
pub struct AdaFaceCandle {
    loss: AdaFaceLoss,
    last: Option<Diagnostics<f32>>,
    /// Set while the EMA state lives on a GPU (the last step ran there);
    /// `loss` then holds only the config.
    #[cfg(feature = "candle-cuda")]
    gpu: Option<cuda::GpuHead>,
}

impl AdaFaceCandle {
    /// An op starting from the config's initial EMA state.
    pub fn new(cfg: AdaFaceConfig) -> Self {
        AdaFaceCandle {
            loss: AdaFaceLoss::new(cfg),
            last: None,
            #[cfg(feature = "candle-cuda")]
            gpu: None,
        }
    }

    /// The config.
    pub fn config(&self) -> &AdaFaceConfig {
        self.loss.config()
    }

    /// The EMA state the next step starts from (save it with checkpoints).
    /// After a CUDA step it is read back from the GPU, which waits for the
    /// steps launched so far.
    pub fn state(&self) -> Result<EmaState> {
        #[cfg(feature = "candle-cuda")]
        if let Some(gpu) = &self.gpu {
            return gpu.state();
        }
        Ok(self.loss.state())
    }

    /// Restores an EMA state; rejected if unusable. It goes to the GPU if
    /// the last step ran there.
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        #[cfg(feature = "candle-cuda")]
        if let Some(gpu) = &mut self.gpu {
            return gpu.set_state(state);
        }
        self.loss.set_state(state)
    }

    /// Per-row values of the last successful CPU step (norms, margin
    /// scalers, target cosines, per-row losses), for logging. `None` after
    /// a CUDA step: see `check_last_step` (feature `candle-cuda`).
    pub fn last_diagnostics(&self) -> Option<&Diagnostics<f32>> {
        self.last.as_ref()
    }

    /// Waits for the last CUDA step and reports what its kernels found, or
    /// the typed error of inputs they rejected (label out of range,
    /// non-finite value, zero norm). `Ok(None)` when the last step ran on
    /// the CPU, which reports such errors from `forward` itself.
    /// Synchronises: call it when logging, not every step.
    #[cfg(feature = "candle-cuda")]
    pub fn check_last_step(&self) -> Result<Option<CudaStepReport>> {
        let Some(gpu) = &self.gpu else {
            return Ok(None);
        };
        let Some(step) = gpu.last_step() else {
            return Ok(None);
        };
        let summary = step.summary()?;
        let (norms, margin_scaler) = gpu.row_diagnostics()?;
        Ok(Some(CudaStepReport {
            summary,
            norms,
            margin_scaler,
        }))
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
        if !weight.device().same_device(features.device())
            || !labels.device().same_device(features.device())
        {
            return Err(Error::DeviceUnavailable {
                reason: "features, weight and labels must be on the same device".into(),
            });
        }
        let shape = checked_shape(features, weight)?;
        match features.device() {
            Device::Cpu => self.forward_cpu(shape, features, weight, labels),
            #[cfg(feature = "candle-cuda")]
            Device::Cuda(_) => self.forward_cuda(shape, features, weight, labels),
            #[cfg(not(feature = "candle-cuda"))]
            Device::Cuda(_) => Err(Error::DeviceUnavailable {
                reason: "CUDA tensors need the feature `candle-cuda` of adaface".into(),
            }),
            Device::Metal(_) => Err(Error::DeviceUnavailable {
                reason: "the candle op does not support Metal tensors".into(),
            }),
        }
    }

    fn forward_cpu(
        &mut self,
        shape: Shape,
        features: &Tensor,
        weight: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor> {
        let labels = host_labels(labels)?;
        let features = as_f32(features)?;
        let weight = as_f32(weight)?;
        let x = host_values(&features)?;
        let w = host_values(&weight)?;

        // The state comes back from a GPU the last step ran on (a sync,
        // only when a trainer moves the head between devices).
        #[cfg(feature = "candle-cuda")]
        let mut loss = match &self.gpu {
            Some(gpu) => {
                let mut host = AdaFaceLoss::new(*self.loss.config());
                host.set_state(gpu.state()?)?;
                host
            }
            None => self.loss.clone(),
        };
        #[cfg(not(feature = "candle-cuda"))]
        let loss = &mut self.loss;
        let step = loss.step(shape, &x, &w, &labels)?;
        let op = CachedStep::Host {
            loss: step.loss,
            grad_features: step.grad_features,
            grad_weight: step.grad_weight,
            shape,
        };
        let out = features.apply_op2(&weight, op).map_err(backend)?;
        #[cfg(feature = "candle-cuda")]
        {
            self.loss = loss;
            self.gpu = None;
        }
        self.last = Some(step.diagnostics);
        Ok(out)
    }

    #[cfg(feature = "candle-cuda")]
    fn forward_cuda(
        &mut self,
        shape: Shape,
        features: &Tensor,
        weight: &Tensor,
        labels: &Tensor,
    ) -> Result<Tensor> {
        if labels.rank() != 1 {
            return Err(Error::RankMismatch {
                tensor: Which::Labels,
                expected: 1,
                actual: labels.rank(),
            });
        }
        let (features, weight) = cuda::kernel_inputs(features, weight)?;
        let device = features.device();
        if !self.gpu.as_ref().is_some_and(|g| g.is_on(device)) {
            // First step on this device: the state moves there (a read
            // back from another GPU synchronises; it happens once).
            let state = self.state()?;
            self.gpu = Some(cuda::GpuHead::new(device, *self.loss.config(), state)?);
        }
        let gpu = self.gpu.as_mut().ok_or(Error::Backend {
            message: "no GPU head".into(),
        })?;
        let step = gpu.step(shape, &features, &weight, labels)?;
        self.last = None;
        features
            .apply_op2(&weight, CachedStep::Device(step))
            .map_err(backend)
    }
}

/// `(B, D, C)` of rank-2 features and weight with the same `D`.
fn checked_shape(features: &Tensor, weight: &Tensor) -> Result<Shape> {
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
    Ok(shape)
}

/// A CUDA step as [`AdaFaceCandle::check_last_step`] reads it back.
#[cfg(feature = "candle-cuda")]
#[derive(Debug, Clone)]
pub struct CudaStepReport {
    /// Loss, batch norm statistics and the EMA state after the step.
    pub summary: crate::launch::StepSummary,
    /// Per-row `||x_i||`, unclipped.
    pub norms: Vec<f32>,
    /// Per-row margin scaler `z_i`.
    pub margin_scaler: Vec<f32>,
}

/// A step already computed: its forward returns the loss, its backward the
/// gradients times the incoming gradient.
enum CachedStep {
    /// Computed on the CPU.
    Host {
        loss: f32,
        grad_features: Vec<f32>,
        grad_weight: Vec<f32>,
        shape: Shape,
    },
    /// Launched on a GPU: device tensors.
    #[cfg(feature = "candle-cuda")]
    Device(cuda::GpuStep),
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
        match self {
            CachedStep::Host { loss, .. } => {
                Ok((CpuStorage::F32(vec![*loss]), candle_core::Shape::from(())))
            }
            #[cfg(feature = "candle-cuda")]
            CachedStep::Device(_) => Err(candle_core::Error::Msg(
                "adaface: a CUDA step applied to CPU tensors".into(),
            )),
        }
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        match self {
            CachedStep::Device(step) => Ok((
                cuda::loss_storage(&step.loss)?,
                candle_core::Shape::from(()),
            )),
            CachedStep::Host { .. } => Err(candle_core::Error::Msg(
                "adaface: a CPU step applied to CUDA tensors".into(),
            )),
        }
    }

    fn bwd(
        &self,
        features: &Tensor,
        _weight: &Tensor,
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = match self {
            CachedStep::Host {
                grad_features,
                grad_weight,
                shape,
                ..
            } => {
                let dev = features.device();
                (
                    Tensor::from_slice(grad_features, (shape.batch, shape.dim), dev)?,
                    Tensor::from_slice(grad_weight, (shape.classes, shape.dim), dev)?,
                )
            }
            #[cfg(feature = "candle-cuda")]
            CachedStep::Device(step) => (step.grad_features.clone(), step.grad_weight.clone()),
        };
        // The kernels' gradients are f32; bf16 / f16 inputs get their own.
        let dtype = features.dtype();
        Ok((
            Some(gx.broadcast_mul(grad_loss)?.to_dtype(dtype)?),
            Some(gw.broadcast_mul(grad_loss)?.to_dtype(dtype)?),
        ))
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
