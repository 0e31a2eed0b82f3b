//! The candle op on CUDA tensors (feature `candle-cuda`): the fused kernels
//! of [`crate::cuda`] on candle's own stream, reading candle's device
//! buffers in place and handing back device tensors. Nothing here waits
//! for the GPU: the loss, both gradients and the EMA state stay on the
//! device until the caller reads them.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Layout, Storage, Tensor};

use super::{as_f32, backend};
use crate::config::AdaFaceConfig;
use crate::cuda::{CudaAdaFace, CudaStep};
use crate::error::{Error, Result, Tensor as Which};
use crate::launch::{KernelElement, KernelLabel};
use crate::shape::Shape;
use crate::state::EmaState;

/// The loss of one candle CUDA device: the kernels and the device EMA
/// state, on that device's stream.
pub(super) struct GpuHead {
    device: Device,
    loss: CudaAdaFace,
    last: Option<CudaStep>,
}

impl std::fmt::Debug for GpuHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuHead")
            .field("device", &self.device.location())
            .finish_non_exhaustive()
    }
}

/// A launched step as candle tensors on the device (all `f32`).
pub(super) struct GpuStep {
    /// The mean loss, a scalar; NaN if the kernels rejected the inputs.
    pub loss: Tensor,
    /// `dL/d features`, `B x D`.
    pub grad_features: Tensor,
    /// `dL/d weight`, `C x D`.
    pub grad_weight: Tensor,
}

impl GpuHead {
    /// Compiles (or reuses) the kernels for `device` and uploads `state`.
    pub fn new(device: &Device, cfg: AdaFaceConfig, state: EmaState) -> Result<Self> {
        let stream = cuda_device(device)?.cuda_stream();
        let mut loss = CudaAdaFace::new(stream, cfg)?;
        loss.set_state(state)?;
        Ok(GpuHead {
            device: device.clone(),
            loss,
            last: None,
        })
    }

    /// Whether this head runs on candle device `device` (the same stream).
    pub fn is_on(&self, device: &Device) -> bool {
        self.device.same_device(device)
    }

    /// Reads the EMA state back (synchronises with the stream).
    pub fn state(&self) -> Result<EmaState> {
        self.loss.state()
    }

    /// Writes the EMA state (validated first).
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        self.loss.set_state(state)
    }

    /// The latest launched step.
    pub fn last_step(&self) -> Option<&CudaStep> {
        self.last.as_ref()
    }

    /// Per-row norms and margin scalers of the latest step (synchronises).
    pub fn row_diagnostics(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        self.loss.row_diagnostics()
    }

    /// Launches one step. `features` and `weight` are `f32`, `bf16` or
    /// `f16` of one dtype ([`kernel_inputs`]), `labels` rank 1.
    pub fn step(
        &mut self,
        shape: Shape,
        features: &Tensor,
        weight: &Tensor,
        labels: &Tensor,
    ) -> Result<GpuStep> {
        let labels = match labels.dtype() {
            DType::I32 | DType::I64 => labels.clone(),
            // The kernels read i32 or i64: widen on the device.
            DType::U32 => labels.to_dtype(DType::I64).map_err(backend)?,
            other => {
                return Err(Error::DtypeMismatch {
                    expected: "u32, i32 or i64 labels",
                    actual: other.as_str(),
                })
            }
        };
        match (features.dtype(), labels.dtype()) {
            (DType::F32, DType::I32) => self.run::<f32, i32>(shape, features, weight, &labels),
            (DType::F32, _) => self.run::<f32, i64>(shape, features, weight, &labels),
            (DType::BF16, DType::I32) => {
                self.run::<half::bf16, i32>(shape, features, weight, &labels)
            }
            (DType::BF16, _) => self.run::<half::bf16, i64>(shape, features, weight, &labels),
            (DType::F16, DType::I32) => {
                self.run::<half::f16, i32>(shape, features, weight, &labels)
            }
            (DType::F16, _) => self.run::<half::f16, i64>(shape, features, weight, &labels),
            (other, _) => Err(Error::DtypeMismatch {
                expected: "f32, bf16 or f16 (after kernel_inputs)",
                actual: other.as_str(),
            }),
        }
    }

    fn run<E, L>(
        &mut self,
        shape: Shape,
        features: &Tensor,
        weight: &Tensor,
        labels: &Tensor,
    ) -> Result<GpuStep>
    where
        E: KernelElement + DeviceRepr + CudaDType,
        L: KernelLabel + DeviceRepr + CudaDType,
    {
        let dev = cuda_device(&self.device)?.clone();
        let (features, weight, labels) = (
            features.contiguous().map_err(backend)?,
            weight.contiguous().map_err(backend)?,
            labels.contiguous().map_err(backend)?,
        );
        let (xs, xl) = features.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (ls, ll) = labels.storage_and_layout();
        let x = device_view::<E>(&xs, xl, Which::Features)?;
        let w = device_view::<E>(&ws, wl, Which::Weight)?;
        let y = device_view::<L>(&ls, ll, Which::Labels)?;

        let stream = self.loss.stream().clone();
        let mut dx = stream
            .alloc_zeros::<f32>(shape.features_len()?)
            .map_err(crate::cuda::backend("alloc dX"))?;
        let mut dw = stream
            .alloc_zeros::<f32>(shape.weight_len()?)
            .map_err(crate::cuda::backend("alloc dW"))?;
        let step = self
            .loss
            .forward_backward(shape, &x, &w, &y, &mut dx, &mut dw)?;
        let loss = adopt(step.loss_on_device()?, &dev, ())
            .to_dtype(DType::F32)
            .map_err(backend)?;
        self.last = Some(step);
        Ok(GpuStep {
            loss,
            grad_features: adopt(dx, &dev, (shape.batch, shape.dim)),
            grad_weight: adopt(dw, &dev, (shape.classes, shape.dim)),
        })
    }
}

/// `features` and `weight` in one dtype the kernels read: their own if
/// both are `f32`, `bf16` or `f16` alike, else both converted to `f32` on
/// the device (candle converts the gradients back).
pub(super) fn kernel_inputs(features: &Tensor, weight: &Tensor) -> Result<(Tensor, Tensor)> {
    match (features.dtype(), weight.dtype()) {
        (a, b) if a == b && matches!(a, DType::F32 | DType::BF16 | DType::F16) => {
            Ok((features.clone(), weight.clone()))
        }
        _ => Ok((as_f32(features)?, as_f32(weight)?)),
    }
}

/// The loss of a launched step as the candle op's output storage: a copy
/// of the one-element device tensor (no sync).
pub(super) fn loss_storage(loss: &Tensor) -> candle_core::Result<CudaStorage> {
    let (storage, layout) = loss.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => s.try_clone(layout),
        _ => Err(candle_core::Error::Msg(
            "adaface: loss not on a CUDA device".into(),
        )),
    }
}

fn cuda_device(device: &Device) -> Result<&candle_core::CudaDevice> {
    match device {
        Device::Cuda(d) => Ok(d),
        _ => Err(Error::DeviceUnavailable {
            reason: "not a CUDA device".into(),
        }),
    }
}

/// The device elements of a contiguous tensor, in place.
fn device_view<'a, T: CudaDType>(
    storage: &'a Storage,
    layout: &Layout,
    which: Which,
) -> Result<CudaView<'a, T>> {
    let Storage::Cuda(s) = storage else {
        return Err(Error::DeviceUnavailable {
            reason: format!("{which:?} is not on the CUDA device"),
        });
    };
    let slice = s.as_cuda_slice::<T>().map_err(backend)?;
    let (start, end) = layout.contiguous_offsets().ok_or(Error::Backend {
        message: format!("{which:?}: not contiguous after contiguous()"),
    })?;
    Ok(slice.slice(start..end))
}

/// A device buffer as a candle tensor without a copy.
fn adopt<T: CudaDType>(
    slice: candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
    dev: &candle_core::CudaDevice,
    shape: impl Into<candle_core::Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}
