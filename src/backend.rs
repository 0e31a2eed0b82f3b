//! One interface over the stateful backends, so that a trainer switches
//! backend by changing the line that makes the loss object.
//!
//! ```
//! use adaface::backend::{AdaFaceBackend, StepResult};
//! use adaface::{cpu::CpuAdaFace, AdaFaceConfig, Shape};
//!
//! fn train_step<B: AdaFaceBackend<f32>>(loss: &mut B) -> adaface::Result<StepResult> {
//!     let shape = Shape::new(2, 3, 4);
//!     let x = [0.5f32, 1.0, -0.2, 2.0, 0.1, 0.3];
//!     let w = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
//!     let (mut dx, mut dw) = (vec![0.0; 6], vec![0.0; 12]);
//!     loss.forward_backward(shape, &x, &w, &[1, 3], &mut dx, &mut dw)
//! }
//!
//! // The one line that chooses the backend:
//! let mut loss = CpuAdaFace::new(AdaFaceConfig::default());
//! let step = train_step(&mut loss)?;
//! assert!(step.loss.is_finite());
//! assert_eq!(loss.state(), step.state_after);
//! # Ok::<(), adaface::Error>(())
//! ```
//!
//! The trait takes host slices. The CUDA backend implements it by uploading
//! the inputs and downloading the gradients on every call, which suits tests
//! and small models; a trainer whose tensors already live on the GPU calls
//! [`CudaAdaFace`](crate::cuda::CudaAdaFace)'s own methods on device buffers.

use crate::error::Result;
use crate::shape::Shape;
use crate::state::EmaState;

/// What every backend reports about a step (evaluation or training).
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// Mean loss over the batch.
    pub loss: f64,
    /// `||x_i||` per row.
    pub norms: Vec<f32>,
    /// The margin scaler `z_i` per row.
    pub margin_scaler: Vec<f32>,
    /// The EMA state after this batch (stored by the backend for a training
    /// step, or for an evaluation that asked for it).
    pub state_after: EmaState,
}

/// A stateful AdaFace loss over inputs of element type `E` (`f32`, `bf16`
/// or `f16`; labels `i64`). A call that returns an error changes neither the
/// state nor any output buffer.
pub trait AdaFaceBackend<E> {
    /// The EMA state the next step starts from.
    fn state(&self) -> Result<EmaState>;

    /// Restores an EMA state (from a checkpoint); rejected if invalid.
    fn set_state(&mut self, state: EmaState) -> Result<()>;

    /// Evaluation: the loss, no gradients. `update_state` chooses whether the
    /// stored EMA state moves.
    fn forward(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[i64],
        update_state: bool,
    ) -> Result<StepResult>;

    /// A training step: the loss, `d loss / d x` into `grad_features`
    /// (`B x D`) and `d loss / d W` into `grad_weight` (`C x D`), both
    /// overwritten; the EMA state advances.
    fn forward_backward(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[i64],
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<StepResult>;
}

impl<E: crate::cpu::CpuElement> AdaFaceBackend<E> for crate::cpu::CpuAdaFace {
    fn state(&self) -> Result<EmaState> {
        Ok(crate::cpu::CpuAdaFace::state(self))
    }

    fn set_state(&mut self, state: EmaState) -> Result<()> {
        crate::cpu::CpuAdaFace::set_state(self, state)
    }

    fn forward(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[i64],
        update_state: bool,
    ) -> Result<StepResult> {
        let out =
            crate::cpu::CpuAdaFace::forward(self, shape, features, weight, labels, update_state)?;
        Ok(StepResult {
            loss: out.loss as f64,
            norms: out.diagnostics.norms,
            margin_scaler: out.diagnostics.margin_scaler,
            state_after: out.stats.state_after,
        })
    }

    fn forward_backward(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[i64],
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<StepResult> {
        let out = crate::cpu::CpuAdaFace::forward_backward(
            self,
            shape,
            features,
            weight,
            labels,
            grad_features,
            grad_weight,
        )?;
        Ok(StepResult {
            loss: out.loss as f64,
            norms: out.diagnostics.norms,
            margin_scaler: out.diagnostics.margin_scaler,
            state_after: out.stats.state_after,
        })
    }
}

#[cfg(feature = "sim")]
impl<E: crate::launch::KernelElement> AdaFaceBackend<E> for crate::sim::SimAdaFace {
    fn state(&self) -> Result<EmaState> {
        crate::sim::SimAdaFace::state(self)
    }

    fn set_state(&mut self, state: EmaState) -> Result<()> {
        crate::sim::SimAdaFace::set_state(self, state)
    }

    fn forward(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[i64],
        update_state: bool,
    ) -> Result<StepResult> {
        let summary =
            crate::sim::SimAdaFace::forward(self, shape, features, weight, labels, update_state)?
                .summary()?;
        let (norms, margin_scaler) = self.row_diagnostics()?;
        Ok(StepResult {
            loss: summary.loss,
            norms,
            margin_scaler,
            state_after: summary.state_after,
        })
    }

    fn forward_backward(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[i64],
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<StepResult> {
        let summary = crate::sim::SimAdaFace::forward_backward(
            self,
            shape,
            features,
            weight,
            labels,
            grad_features,
            grad_weight,
        )?
        .summary()?;
        let (norms, margin_scaler) = self.row_diagnostics()?;
        Ok(StepResult {
            loss: summary.loss,
            norms,
            margin_scaler,
            state_after: summary.state_after,
        })
    }
}

#[cfg(feature = "cuda")]
impl<E> AdaFaceBackend<E> for crate::cuda::CudaAdaFace
where
    E: crate::launch::KernelElement + cudarc::driver::DeviceRepr,
{
    fn state(&self) -> Result<EmaState> {
        crate::cuda::CudaAdaFace::state(self)
    }

    fn set_state(&mut self, state: EmaState) -> Result<()> {
        crate::cuda::CudaAdaFace::set_state(self, state)
    }

    fn forward(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[i64],
        update_state: bool,
    ) -> Result<StepResult> {
        crate::launch::check_call(&shape, features.len(), weight.len(), labels.len(), None)?;
        let stream = self.stream().clone();
        let up = |e: cudarc::driver::DriverError| crate::Error::Backend {
            message: format!("upload: {e:?}"),
        };
        let x = stream.clone_htod(features).map_err(up)?;
        let w = stream.clone_htod(weight).map_err(up)?;
        let y = stream.clone_htod(labels).map_err(up)?;
        let summary =
            crate::cuda::CudaAdaFace::forward(self, shape, &x, &w, &y, update_state)?.summary()?;
        let (norms, margin_scaler) = self.row_diagnostics()?;
        Ok(StepResult {
            loss: summary.loss,
            norms,
            margin_scaler,
            state_after: summary.state_after,
        })
    }

    fn forward_backward(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[i64],
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<StepResult> {
        crate::launch::check_call(
            &shape,
            features.len(),
            weight.len(),
            labels.len(),
            Some((grad_features.len(), grad_weight.len())),
        )?;
        let stream = self.stream().clone();
        let dev = |what: &'static str| {
            move |e: cudarc::driver::DriverError| crate::Error::Backend {
                message: format!("{what}: {e:?}"),
            }
        };
        let x = stream.clone_htod(features).map_err(dev("upload"))?;
        let w = stream.clone_htod(weight).map_err(dev("upload"))?;
        let y = stream.clone_htod(labels).map_err(dev("upload"))?;
        let mut dx = stream
            .alloc_zeros::<f32>(grad_features.len())
            .map_err(dev("alloc"))?;
        let mut dw = stream
            .alloc_zeros::<f32>(grad_weight.len())
            .map_err(dev("alloc"))?;
        let summary =
            crate::cuda::CudaAdaFace::forward_backward(self, shape, &x, &w, &y, &mut dx, &mut dw)?
                .summary()?;
        let (norms, margin_scaler) = self.row_diagnostics()?;
        // Only an accepted step reaches the caller's buffers.
        stream
            .memcpy_dtoh(&dx, grad_features)
            .map_err(dev("download"))?;
        stream
            .memcpy_dtoh(&dw, grad_weight)
            .map_err(dev("download"))?;
        stream.synchronize().map_err(dev("synchronize"))?;
        Ok(StepResult {
            loss: summary.loss,
            norms,
            margin_scaler,
            state_after: summary.state_after,
        })
    }
}
