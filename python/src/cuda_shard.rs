//! CUDA tensors in `adaface_rs.ShardedAdaFaceLoss`: the crate's
//! [`ShardedCudaAdaFace`] on torch's current stream, reading torch's device
//! memory in place and writing the row statistics, the gradients, the loss
//! and the EMA state into tensors torch allocated, so that the Python layer
//! reduces the statistics with `torch.distributed` (NCCL) between the
//! phases exactly as it does for CPU tensors (gloo). Nothing here waits for
//! the GPU; [`CudaShardHead::check_last_step`] does, when asked.
//!
//! One step, all queued on the stream:
//!
//! 1. [`phase1`](CudaShardHead::phase1): the torch EMA state is copied into
//!    the shard, phase 1 runs, and its `5 B` row statistics are copied into
//!    a torch tensor (`[max | sumexp | target logit | target cosine |
//!    owned]`, as the CPU layer writes them);
//! 2. the caller all-reduces (`MAX`) the first `B` values;
//! 3. [`sums_for`](CudaShardHead::sums_for): the global maxima go back into
//!    the shard, which rescales its sums to them; the `4 B` sums are copied
//!    out for the all-reduce `SUM`;
//! 4. [`phase2`](CudaShardHead::phase2): the reduced values are copied in
//!    (through [`ShardedCudaAdaFace::reduce`] with a communicator that
//!    replays what the caller reduced, so the device check that exactly one
//!    shard owns each label runs), then phase 2 writes `dW`, the partial
//!    `dX`, the loss and (when asked) the EMA state.
//!
//! A shard whose kernels reject the step (a non-finite weight row, say)
//! leaves its row statistics NaN (they are filled with NaN before phase 1
//! from the second step of a batch size on), so the device check fails on
//! every rank and no rank commits its state.

use std::sync::Arc;

use adaface::cuda::{CudaShardPending, CudaStep, DeviceCommunicator, ShardedCudaAdaFace};
use adaface::shard::{ReduceOp, ShardSpec};
use adaface::{Error, Shape};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaViewMut, DevicePtrMut};
use half::{bf16, f16};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::cuda::{backend, Borrowed};
use crate::{leak_name, shape_of, to_py, Config};

/// What phase 1 leaves for the reduction and phase 2.
struct Step {
    pending: CudaShardPending,
    shape: Shape,
    dtype: &'static str,
    label_64: bool,
    x: u64,
    w: u64,
    labels: u64,
    loss: u64,
}

/// The row statistics the caller reduced, handed to
/// [`ShardedCudaAdaFace::reduce`] as if its collectives produced them.
struct Replay<'a> {
    max: &'a CudaSlice<f32>,
    sums: &'a CudaSlice<f32>,
}

impl DeviceCommunicator for Replay<'_> {
    fn all_reduce_device(
        &self,
        stream: &Arc<CudaStream>,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
    ) -> Result<(), Error> {
        let src = match op {
            ReduceOp::Max => self.max,
            ReduceOp::Sum => self.sums,
            #[allow(unreachable_patterns)]
            _ => {
                return Err(Error::Backend {
                    message: "the sharded step asked for an unexpected reduction".into(),
                })
            }
        };
        if src.len() != buf.len() {
            return Err(Error::Backend {
                message: format!(
                    "reduced row statistics of {} values for a buffer of {}",
                    src.len(),
                    buf.len()
                ),
            });
        }
        stream
            .memcpy_dtod(src, buf)
            .map_err(backend("copy reduced row statistics in"))
    }
}

/// One shard of the sharded loss on one CUDA device and one torch stream.
#[pyclass(unsendable, module = "adaface_rs._native")]
pub struct CudaShardHead {
    shard: ShardedCudaAdaFace,
    step: Option<Step>,
    last: Option<CudaStep>,
    device: usize,
    stream_handle: u64,
}

/// `$body` with `$e` the element type named by `$dtype` and `$l` the label
/// type (a macro, so this layer names no trait of the crate's launch
/// internals).
macro_rules! typed {
    ($dtype:expr, $label_64:expr, |$e:ident, $l:ident| $body:expr) => {{
        macro_rules! with_label {
            ($t:ty) => {
                if $label_64 {
                    type $e = $t;
                    type $l = i64;
                    $body
                } else {
                    type $e = $t;
                    type $l = i32;
                    $body
                }
            };
        }
        match $dtype {
            "float32" => with_label!(f32),
            "bfloat16" => with_label!(bf16),
            _ => with_label!(f16),
        }
    }};
}

impl CudaShardHead {
    /// Phase 1; writes `partials` only on success.
    ///
    /// # Safety
    /// Every pointer is a live device allocation of the size the shape
    /// implies on this head's device, kept alive by the caller until
    /// phase 2 returns (the inputs) or for the call (the rest).
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_phase1(
        &mut self,
        shape: Shape,
        dtype: &'static str,
        label_64: bool,
        x: u64,
        w: u64,
        labels: u64,
        state: (u64, u64),
        partials: u64,
        loss: u64,
    ) -> Result<CudaShardPending, Error> {
        let stream = self.shard.stream().clone();
        let b = shape.batch;
        let mut out = Borrowed::<f32>::new(&stream, partials, 5 * b)?;
        let mean = Borrowed::<f64>::new(&stream, state.0, 1)?;
        let std = Borrowed::<f64>::new(&stream, state.1, 1)?;
        Borrowed::<f64>::new(&stream, loss, 1)?;
        // NaN rows: if this shard's kernels reject the step they stay NaN,
        // and every rank's reduction and device check see it.
        if let Some(rows) = self.shard.row_stats_mut() {
            if rows.len() == 5 * b {
                let bytes = rows.len() * std::mem::size_of::<f32>();
                let (ptr, _guard) = rows.device_ptr_mut(&stream);
                cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, stream.cu_stream())
                    .map_err(backend("fill row statistics"))?;
            }
        }
        {
            let st = self.shard.state_buffer_mut();
            stream
                .memcpy_dtod(&*mean, &mut st.slice_mut(0..1))
                .map_err(backend("copy EMA mean in"))?;
            stream
                .memcpy_dtod(&*std, &mut st.slice_mut(1..2))
                .map_err(backend("copy EMA std in"))?;
        }
        let pending = typed!(dtype, label_64, |E, L| {
            let xs = Borrowed::<E>::new(&stream, x, shape.features_len()?)?;
            let ws = Borrowed::<E>::new(&stream, w, shape.weight_len()?)?;
            let ys = Borrowed::<L>::new(&stream, labels, b)?;
            self.shard.phase1::<E, L>(shape, &*xs, &*ws, &*ys)?
        });
        let rows = self.shard.row_stats_mut().ok_or(Error::Backend {
            message: "phase 1 left no row statistics".into(),
        })?;
        stream
            .memcpy_dtod(&*rows, &mut *out)
            .map_err(backend("copy row statistics out"))?;
        Ok(pending)
    }

    /// Phase 2 of `step`.
    ///
    /// # Safety
    /// As [`run_phase1`](Self::run_phase1); the inputs phase 1 saw are
    /// still alive.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_phase2(
        &mut self,
        step: &Step,
        w: u64,
        global_max: u64,
        sums: u64,
        dx: u64,
        dw: u64,
        state: (u64, u64),
        update_state: bool,
    ) -> Result<CudaStep, Error> {
        if w != step.w {
            return Err(Error::InvalidShard {
                reason: "phase 2 must see the weight phase 1 saw".into(),
            });
        }
        if (dx == 0) != (dw == 0) {
            return Err(Error::InvalidShard {
                reason: "give both gradient buffers or neither".into(),
            });
        }
        let stream = self.shard.stream().clone();
        let shape = step.shape;
        let b = shape.batch;
        let g = Borrowed::<f32>::new(&stream, global_max, b)?;
        let s = Borrowed::<f32>::new(&stream, sums, 4 * b)?;
        let mut loss_out = Borrowed::<f64>::new(&stream, step.loss, 1)?;
        let mut mean = Borrowed::<f64>::new(&stream, state.0, 1)?;
        let mut std = Borrowed::<f64>::new(&stream, state.1, 1)?;
        // Loss only: scratch gradients on the device, dropped after the step
        // (stream-ordered, so no wait).
        let (mut dx_own, mut dw_own, mut dx_t, mut dw_t);
        let (dx, dw): (&mut CudaSlice<f32>, &mut CudaSlice<f32>) = if dx == 0 {
            dx_own = stream
                .alloc_zeros::<f32>(shape.features_len()?)
                .map_err(backend("alloc scratch dX"))?;
            dw_own = stream
                .alloc_zeros::<f32>(shape.weight_len()?)
                .map_err(backend("alloc scratch dW"))?;
            (&mut dx_own, &mut dw_own)
        } else {
            dx_t = Borrowed::<f32>::new(&stream, dx, shape.features_len()?)?;
            dw_t = Borrowed::<f32>::new(&stream, dw, shape.weight_len()?)?;
            (&mut dx_t, &mut dw_t)
        };
        self.shard
            .reduce(&Replay { max: &g, sums: &s }, &step.pending)?;
        let out = typed!(step.dtype, step.label_64, |E, L| {
            let xs = Borrowed::<E>::new(&stream, step.x, shape.features_len()?)?;
            let ws = Borrowed::<E>::new(&stream, step.w, shape.weight_len()?)?;
            let ys = Borrowed::<L>::new(&stream, step.labels, b)?;
            self.shard
                .phase2::<E, L>(&step.pending, &*xs, &*ws, &*ys, dx, dw)?
        });
        let loss = out.loss_on_device()?;
        stream
            .memcpy_dtod(&loss, &mut *loss_out)
            .map_err(backend("copy loss out"))?;
        if update_state {
            let st = self.shard.state_buffer_mut();
            stream
                .memcpy_dtod(&st.slice(0..1), &mut *mean)
                .map_err(backend("copy EMA mean out"))?;
            stream
                .memcpy_dtod(&st.slice(1..2), &mut *std)
                .map_err(backend("copy EMA std out"))?;
        }
        Ok(out)
    }
}

#[pymethods]
impl CudaShardHead {
    /// The shard of classes `[offset, offset + classes)` of `total_classes`
    /// on CUDA device `device`, launching on the CUDA stream `stream`
    /// (torch's `torch.cuda.current_stream(device).cuda_stream`, of that
    /// device's primary context). Compiles the kernels (NVRTC) on first use
    /// of the device.
    #[new]
    fn new(
        cfg: &Config,
        device: usize,
        stream: u64,
        offset: usize,
        classes: usize,
        total_classes: usize,
    ) -> PyResult<Self> {
        let spec = ShardSpec::new(offset, classes, total_classes).map_err(to_py)?;
        adaface::cuda::probe().map_err(to_py)?;
        let ctx = CudaContext::new(device).map_err(|e| {
            to_py(Error::DeviceUnavailable {
                reason: format!("CUDA context of device {device}: {e}"),
            })
        })?;
        // SAFETY: all buffers of this head are used on its one stream.
        unsafe { ctx.disable_event_tracking() };
        let s = if stream == 0 {
            ctx.default_stream()
        } else {
            // SAFETY: torch keeps its streams alive for the process; the
            // handle is of this device, and every call orders itself on it.
            unsafe { ctx.wrap_borrowed_stream(stream as cudarc::driver::sys::CUstream) }
        };
        let shard = ShardedCudaAdaFace::new(s, cfg.cfg, spec).map_err(to_py)?;
        Ok(CudaShardHead {
            shard,
            step: None,
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

    /// Phase 1 of a step of this shard over the global batch, queued on the
    /// stream. `x` (`B x D`, `dtype` `"float32"`, `"bfloat16"` or
    /// `"float16"`), `w` (this shard's `classes x D`, the same dtype) and
    /// `labels` (`B`, `"int64"` or `"int32"`, global) are contiguous device
    /// tensors kept alive until [`phase2`](Self::phase2) returns;
    /// `state_mean`, `state_std` one-element `float64` device tensors (read);
    /// `partials` a `5 x B` `float32` device tensor, written (max, sumexp,
    /// target logit, target cosine, owned) only on success; `loss` a
    /// one-element `float64` device tensor phase 2 writes. Data errors are
    /// found by the kernels: see [`check_last_step`](Self::check_last_step).
    /// A pending step of this head is dropped.
    #[pyo3(signature = (batch, dim, dtype, label_dtype, x, w, labels, state_mean, state_std, partials, loss))]
    #[allow(clippy::too_many_arguments)]
    fn phase1(
        &mut self,
        batch: usize,
        dim: usize,
        dtype: &str,
        label_dtype: &str,
        x: u64,
        w: u64,
        labels: u64,
        state_mean: u64,
        state_std: u64,
        partials: u64,
        loss: u64,
    ) -> PyResult<()> {
        self.step = None;
        let shape = shape_of(batch, dim, self.shard.spec().classes).map_err(to_py)?;
        let dtype: &'static str = match dtype {
            "float32" | "bfloat16" | "float16" => leak_name(dtype),
            other => {
                return Err(to_py(Error::DtypeMismatch {
                    expected: "float32, bfloat16 or float16",
                    actual: leak_name(other),
                }))
            }
        };
        let label_64 = match label_dtype {
            "int64" => true,
            "int32" => false,
            other => {
                return Err(to_py(Error::DtypeMismatch {
                    expected: "int64 or int32 labels",
                    actual: leak_name(other),
                }))
            }
        };
        // SAFETY: the pointer contract above, which the Python layer keeps.
        let pending = unsafe {
            self.run_phase1(
                shape,
                dtype,
                label_64,
                x,
                w,
                labels,
                (state_mean, state_std),
                partials,
                loss,
            )
        }
        .map_err(to_py)?;
        self.step = Some(Step {
            pending,
            shape,
            dtype,
            label_64,
            x,
            w,
            labels,
            loss,
        });
        Ok(())
    }

    /// The batch of the pending step.
    #[getter]
    fn batch(&self) -> Option<usize> {
        self.step.as_ref().map(|s| s.shape.batch)
    }

    /// The statistics' dtype (always `"float32"` on CUDA).
    #[getter]
    fn stat_dtype(&self) -> &'static str {
        "float32"
    }

    /// Partial FC does not run on CUDA: always `None`.
    fn sampled(&self) -> Option<Vec<usize>> {
        None
    }

    /// Given the all-reduced (`MAX`) row maxima `global_max` (`B` `float32`
    /// on the device), rescales this shard's sums to them and writes the
    /// `4 B` values to all-reduce with `SUM` into `out` (queued).
    fn sums_for(&mut self, global_max: u64, out: u64) -> PyResult<()> {
        let step = self
            .step
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("no pending shard step (run phase 1)"))?;
        let b = step.shape.batch;
        let stream = self.shard.stream().clone();
        // SAFETY: B and 4 B float32 device tensors of this device.
        let r = unsafe {
            (|| -> Result<(), Error> {
                let g = Borrowed::<f32>::new(&stream, global_max, b)?;
                let mut o = Borrowed::<f32>::new(&stream, out, 4 * b)?;
                let missing = || Error::Backend {
                    message: "phase 1 left no row statistics".into(),
                };
                let rows = self.shard.row_stats_mut().ok_or_else(missing)?;
                stream
                    .memcpy_dtod(&*g, &mut rows.slice_mut(0..b))
                    .map_err(backend("copy global maxima in"))?;
                self.shard.rescale(&step.pending)?;
                let rows = self.shard.row_stats_mut().ok_or_else(missing)?;
                stream
                    .memcpy_dtod(&rows.slice(b..5 * b), &mut *o)
                    .map_err(backend("copy row sums out"))
            })()
        };
        r.map_err(to_py)
    }

    /// Phase 2 from the all-reduced maxima (`B`) and sums (`4 B`), queued:
    /// writes this shard's `dW` (`classes x D` `float32`) into `dw`, its
    /// partial `dX` (`B x D` `float32`, to be summed over the shards) into
    /// `dx` (both 0: the loss only), the mean loss over the global batch
    /// into phase 1's `loss` tensor and, when `update_state`, the EMA state
    /// into `state_mean`, `state_std`. Returns `None` (the loss stays on the
    /// device). A step the kernels reject leaves `dx`, `dw` and the state
    /// untouched and the loss NaN; [`check_last_step`](Self::check_last_step)
    /// raises its error. On a raised error nothing is written and the step
    /// stays pending.
    #[pyo3(signature = (w, global_max, sums, dx, dw, state_mean, state_std, update_state))]
    #[allow(clippy::too_many_arguments)]
    fn phase2(
        &mut self,
        w: u64,
        global_max: u64,
        sums: u64,
        dx: u64,
        dw: u64,
        state_mean: u64,
        state_std: u64,
        update_state: bool,
    ) -> PyResult<()> {
        let step = self
            .step
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("no pending shard step (run phase 1)"))?;
        // SAFETY: the pointer contract of phase 1.
        let r = unsafe {
            self.run_phase2(
                &step,
                w,
                global_max,
                sums,
                dx,
                dw,
                (state_mean, state_std),
                update_state,
            )
        };
        match r {
            Ok(out) => {
                self.last = Some(out);
                Ok(())
            }
            Err(e) => {
                self.step = Some(step);
                Err(to_py(e))
            }
        }
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
