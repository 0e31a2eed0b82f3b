//! CUDA tensors: the crate's [`CudaAdaFace`] on torch's current stream,
//! reading torch's device memory in place and writing the gradients, the
//! loss and the EMA state into tensors torch allocated. Nothing here waits
//! for the GPU; [`CudaHead::check_last_step`] does, when asked.

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use adaface::cuda::{CudaAdaFace, CudaStep};
use adaface::{Error, Shape};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::{bf16, f16};
use pyo3::prelude::*;

use crate::{leak_name, shape_of, to_py, Config};

pub(crate) fn backend(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Backend {
        message: format!("{what}: {e}"),
    }
}

/// Torch's device memory seen as a cudarc slice for the length of one call;
/// leaked on drop, so cudarc never frees what torch owns.
pub(crate) struct Borrowed<T>(ManuallyDrop<CudaSlice<T>>);

impl<T> Borrowed<T> {
    /// # Safety
    /// `ptr` is a live device allocation of at least `len` `T` in the
    /// stream's context, that stays alive (torch holds the tensor) and is
    /// used on this stream only while borrowed.
    pub(crate) unsafe fn new(
        stream: &Arc<CudaStream>,
        ptr: u64,
        len: usize,
    ) -> Result<Self, Error> {
        if ptr == 0 || ptr % std::mem::align_of::<T>() as u64 != 0 {
            return Err(Error::Backend {
                message: "null or misaligned device pointer".into(),
            });
        }
        Ok(Borrowed(ManuallyDrop::new(
            stream.upgrade_device_ptr::<T>(ptr, len),
        )))
    }
}

impl<T> Drop for Borrowed<T> {
    fn drop(&mut self) {
        // SAFETY: taken once, here; leak() forgets the allocation.
        let slice = unsafe { ManuallyDrop::take(&mut self.0) };
        slice.leak();
    }
}

impl<T> Deref for Borrowed<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.0
    }
}

impl<T> DerefMut for Borrowed<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.0
    }
}

/// The fused loss on one CUDA device and one torch stream.
#[pyclass(unsendable, module = "adaface_rs._native")]
pub struct CudaHead {
    loss: CudaAdaFace,
    last: Option<CudaStep>,
    device: usize,
    stream_handle: u64,
}

/// Pointers and sizes of one call, as Python passed them.
#[derive(Clone, Copy)]
struct Call {
    shape: Shape,
    x: u64,
    w: u64,
    labels: u64,
    dx: u64,
    dw: u64,
    loss: u64,
    mean: u64,
    std: u64,
    /// CurricularFace's t (one `f64`), or 0 for the other policies.
    t: u64,
    update_state: bool,
}

/// One step with element type `$e` and label type `$l` (a macro rather than
/// a generic function, so this layer names no trait of the crate's launch
/// internals: only `CudaAdaFace`'s methods at concrete types).
///
/// Safety: every pointer of the call is a live device allocation of the
/// sizes its shape implies (`f64` for `loss`, `mean`, `std` and a non-zero
/// `t`; `f32` for `dx`,
/// `dw`, or both 0 for the loss only) on this head's device.
macro_rules! run_typed {
    ($head:expr, $call:expr, $e:ty, $l:ty) => {{
        let head: &mut CudaHead = $head;
        let call: Call = $call;
        // SAFETY: the pointer contract above, which the Python layer keeps
        // (contiguous tensors of the checked shapes, dtypes and device).
        (|| -> Result<(), Error> {
            unsafe {
                let shape = call.shape;
                let stream = head.loss.stream().clone();
                let x = Borrowed::<$e>::new(&stream, call.x, shape.features_len()?)?;
                let w = Borrowed::<$e>::new(&stream, call.w, shape.weight_len()?)?;
                let y = Borrowed::<$l>::new(&stream, call.labels, shape.batch)?;
                let mut loss_out = Borrowed::<f64>::new(&stream, call.loss, 1)?;
                let mut mean = Borrowed::<f64>::new(&stream, call.mean, 1)?;
                let mut std = Borrowed::<f64>::new(&stream, call.std, 1)?;
                // The torch buffers are the state: copied in, and out after the step.
                {
                    let state = head.loss.state_buffer_mut();
                    stream
                        .memcpy_dtod(&*mean, &mut state.slice_mut(0..1))
                        .map_err(backend("copy EMA mean in"))?;
                    stream
                        .memcpy_dtod(&*std, &mut state.slice_mut(1..2))
                        .map_err(backend("copy EMA std in"))?;
                }
                let mut t = if call.t != 0 {
                    let t = Borrowed::<f64>::new(&stream, call.t, 1)?;
                    let state = head.loss.state_buffer_mut();
                    stream
                        .memcpy_dtod(&*t, &mut state.slice_mut(2..3))
                        .map_err(backend("copy curricular t in"))?;
                    Some(t)
                } else {
                    None
                };
                let step = if call.dx != 0 || call.dw != 0 {
                    let mut dx = Borrowed::<f32>::new(&stream, call.dx, shape.features_len()?)?;
                    let mut dw = Borrowed::<f32>::new(&stream, call.dw, shape.weight_len()?)?;
                    head.loss
                        .forward_backward::<$e, $l>(shape, &*x, &*w, &*y, &mut dx, &mut dw)?
                } else {
                    head.loss
                        .forward::<$e, $l>(shape, &*x, &*w, &*y, call.update_state)?
                };
                let loss = step.loss_on_device()?;
                stream
                    .memcpy_dtod(&loss, &mut *loss_out)
                    .map_err(backend("copy loss out"))?;
                if call.update_state {
                    let state = head.loss.state_buffer_mut();
                    stream
                        .memcpy_dtod(&state.slice(0..1), &mut *mean)
                        .map_err(backend("copy EMA mean out"))?;
                    stream
                        .memcpy_dtod(&state.slice(1..2), &mut *std)
                        .map_err(backend("copy EMA std out"))?;
                    if let Some(t) = t.as_mut() {
                        stream
                            .memcpy_dtod(&state.slice(2..3), &mut **t)
                            .map_err(backend("copy curricular t out"))?;
                    }
                }
                head.last = Some(step);
                Ok(())
            }
        })()
    }};
}

#[pymethods]
impl CudaHead {
    /// The loss for CUDA device `device`, launching on the CUDA stream
    /// `stream` (torch's `torch.cuda.current_stream(device).cuda_stream`),
    /// which must belong to that device's primary context (torch's).
    /// Compiles the kernels (NVRTC) on first use of the device.
    #[new]
    fn new(cfg: &Config, device: usize, stream: u64) -> PyResult<Self> {
        adaface::cuda::probe().map_err(to_py)?;
        let ctx = CudaContext::new(device).map_err(|e| {
            to_py(Error::DeviceUnavailable {
                reason: format!("CUDA context of device {device}: {e}"),
            })
        })?;
        // Everything runs on one stream (torch's), so cudarc's per-buffer
        // events are not needed.
        // SAFETY: all buffers of this head are used on its one stream.
        unsafe { ctx.disable_event_tracking() };
        let s = if stream == 0 {
            ctx.default_stream()
        } else {
            // SAFETY: torch keeps its streams alive for the process; the
            // handle is of this device (Python passes the current stream of
            // the tensor's device), and every call orders itself on it.
            unsafe { ctx.wrap_borrowed_stream(stream as cudarc::driver::sys::CUstream) }
        };
        let loss = CudaAdaFace::new(s, cfg.cfg).map_err(to_py)?;
        Ok(CudaHead {
            loss,
            last: None,
            device,
            stream_handle: stream,
        })
    }

    /// The device ordinal.
    #[getter]
    fn device(&self) -> usize {
        self.device
    }

    /// The raw stream handle the head launches on.
    #[getter]
    fn stream(&self) -> u64 {
        self.stream_handle
    }

    /// Launches one step; see `adaface_rs` for the pointer contract. `dx`,
    /// `dw` are `float32` device tensors (`B x D`, `C x D`), or both 0 for
    /// the loss only; `loss`, `state_mean`, `state_std` one-element
    /// `float64` device tensors, and `state_t` one too for CurricularFace
    /// (0 otherwise). Returns at once: the kernels check the data
    /// (labels, finite values, zero norms) and on a rejected step leave the
    /// gradients and the state untouched and the loss NaN;
    /// [`check_last_step`](Self::check_last_step) raises the error.
    #[pyo3(signature = (batch, dim, classes, dtype, label_dtype, x, w, labels, dx, dw, loss, state_mean, state_std, state_t, update_state))]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        batch: usize,
        dim: usize,
        classes: usize,
        dtype: &str,
        label_dtype: &str,
        x: u64,
        w: u64,
        labels: u64,
        dx: u64,
        dw: u64,
        loss: u64,
        state_mean: u64,
        state_std: u64,
        state_t: u64,
        update_state: bool,
    ) -> PyResult<()> {
        let shape = shape_of(batch, dim, classes).map_err(to_py)?;
        let call = Call {
            shape,
            x,
            w,
            labels,
            dx,
            dw,
            loss,
            mean: state_mean,
            std: state_std,
            t: state_t,
            update_state,
        };
        macro_rules! go {
            ($e:ty) => {
                match label_dtype {
                    // SAFETY: Python passes contiguous device tensors of these
                    // sizes and dtypes on this head's device, kept alive.
                    "int64" => run_typed!(self, call, $e, i64),
                    "int32" => run_typed!(self, call, $e, i32),
                    other => Err(Error::DtypeMismatch {
                        expected: "int64 or int32 labels",
                        actual: leak_name(other),
                    }),
                }
            };
        }
        let out = match dtype {
            "float32" => go!(f32),
            "bfloat16" => go!(bf16),
            "float16" => go!(f16),
            other => Err(Error::DtypeMismatch {
                expected: "float32, bfloat16 or float16",
                actual: leak_name(other),
            }),
        };
        out.map_err(to_py)
    }

    /// Waits for the latest step and raises the error its kernels detected
    /// (`ValueError`), or returns its loss (`None` before the first step).
    fn check_last_step(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        match &self.last {
            None => Ok(None),
            Some(step) => py
                .detach(|| step.summary().map(|s| s.loss))
                .map(Some)
                .map_err(to_py),
        }
    }
}
