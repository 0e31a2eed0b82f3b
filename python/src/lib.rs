//! The native layer of the `adaface_rs` PyTorch package.
//!
//! Thin over the `adaface` crate's public backends: Python checks each
//! tensor's dtype, device, contiguity and shape and passes its `data_ptr()`,
//! the sizes and the dtype names; this layer re-derives every length from the
//! shape (with overflow checks), checks pointers for null and alignment, forms
//! the slices and runs one step with the GIL released. Memory is torch's:
//! inputs are read in place and gradients written into tensors torch
//! allocated. Every `adaface::Error` becomes `ValueError` (bad inputs) or
//! `RuntimeError` (device or backend), with the crate's message; a failing
//! call writes nothing.
#![warn(missing_docs)]

use adaface::cpu::{CpuElement, CpuOptions};
use adaface::{AdaFaceConfig, EmaState, Error, Label, MarginPolicy, Real, Shape};
use half::{bf16, f16};
use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod cuda_shard;
mod shard;

/// The Python exception for a crate error: `ValueError` for bad inputs or
/// configuration, `NotImplementedError` for a margin policy the backend does
/// not compute, `RuntimeError` for the device and the backends.
pub(crate) fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::DeviceUnavailable { .. } | Error::Backend { .. } => PyRuntimeError::new_err(msg),
        // A policy this backend does not compute, as torch reports an
        // operator missing for a device.
        Error::UnsupportedMargin { .. } => PyNotImplementedError::new_err(msg),
        Error::ShapeMismatch { .. }
        | Error::LabelOutOfRange { .. }
        | Error::NonFinite { .. }
        | Error::ZeroNorm { .. }
        | Error::NormOverflow { .. }
        | Error::EmptyBatch
        | Error::EmptyDimension { .. }
        | Error::TooLarge { .. }
        | Error::InvalidConfig { .. }
        | Error::InvalidState { .. }
        | Error::DtypeMismatch { .. }
        | Error::RankMismatch { .. }
        | Error::InvalidShard { .. } => PyValueError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// Validated hyper-parameters (`adaface::AdaFaceConfig`), made once per
/// module and shared by every call.
#[pyclass(frozen, module = "adaface_rs._native")]
#[derive(Clone)]
pub struct Config {
    cfg: AdaFaceConfig,
}

#[pymethods]
impl Config {
    /// `margin` is `"adaface"` (uses `m`, `h`), `"arcface"`, `"cosface"` or
    /// `"curricularface"` (use `m`), `"combined"` (uses `m1`, `m2`, `m3`),
    /// `"sphereface"` (uses `sphere_m`, `sphere_lambda`) or `"magface"`
    /// (uses `l_a`, `u_a`, `l_m`, `u_m`, `lambda_g`). The defaults of the
    /// keyword-only parameters are the papers' (see `MarginPolicy`).
    #[new]
    #[pyo3(signature = (margin, m, h, s, t_alpha, m1=1.0, m2=0.0, m3=0.0, *, sphere_m=4, sphere_lambda=5.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        margin: &str,
        m: f64,
        h: f64,
        s: f64,
        t_alpha: f64,
        m1: f64,
        m2: f64,
        m3: f64,
        sphere_m: u32,
        sphere_lambda: f64,
        l_a: f64,
        u_a: f64,
        l_m: f64,
        u_m: f64,
        lambda_g: f64,
    ) -> PyResult<Self> {
        let policy = match margin {
            "adaface" => MarginPolicy::AdaFace { m, h },
            "arcface" => MarginPolicy::ArcFace { m },
            "cosface" => MarginPolicy::CosFace { m },
            "combined" => MarginPolicy::Combined { m1, m2, m3 },
            "sphereface" => MarginPolicy::SphereFace {
                m: sphere_m,
                lambda: sphere_lambda,
            },
            "curricularface" => MarginPolicy::CurricularFace { m },
            "magface" => MarginPolicy::MagFace {
                l_a,
                u_a,
                l_m,
                u_m,
                lambda_g,
            },
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown margin {other:?}: expected adaface, arcface, cosface, combined, \
                     sphereface, curricularface or magface"
                )))
            }
        };
        let cfg = AdaFaceConfig::builder()
            .margin(policy)
            .s(s)
            .t_alpha(t_alpha)
            .build()
            .map_err(to_py)?;
        Ok(Config { cfg })
    }

    /// The initial EMA state `(batch_mean, batch_std)`.
    fn initial_state(&self) -> (f64, f64) {
        let st = self.cfg.initial_state();
        (st.batch_mean, st.batch_std)
    }

    /// Whether the policy keeps a third state value, CurricularFace's `t`
    /// (the EMA of the batch mean target cosine; starts at 0).
    fn has_curricular_t(&self) -> bool {
        matches!(self.cfg.margin(), MarginPolicy::CurricularFace { .. })
    }

    /// Whether every backend computes the policy (the margins affine in
    /// AdaFace's scaler); the class-sharded step takes only these.
    fn is_affine(&self) -> bool {
        self.cfg.margin().is_affine()
    }

    /// `repr` of the crate's config.
    fn __repr__(&self) -> String {
        format!("{:?}", self.cfg)
    }
}

/// The shape of a call, with every length checked for overflow.
fn shape_of(batch: usize, dim: usize, classes: usize) -> Result<Shape, Error> {
    let shape = Shape::new(batch, dim, classes);
    shape.check_nonempty()?;
    shape.features_len()?;
    shape.weight_len()?;
    Ok(shape)
}

/// A pointer handed over from Python, as an address (so closures that run
/// without the GIL stay `Send`).
#[derive(Clone, Copy)]
struct Ptr(usize);

impl Ptr {
    /// `len` elements of `T` at this address.
    ///
    /// # Safety
    /// The address must be the start of `len` live, initialised `T` that
    /// nothing writes during the borrow (Python passes a contiguous tensor of
    /// exactly this size, kept alive by the caller).
    unsafe fn slice<'a, T>(self, len: usize, what: &str) -> Result<&'a [T], Error> {
        self.check::<T>(what)?;
        Ok(std::slice::from_raw_parts(self.0 as *const T, len))
    }

    /// `len` elements of `T` at this address, writable.
    ///
    /// # Safety
    /// As [`slice`](Self::slice), and nothing else reads or writes them
    /// during the borrow.
    unsafe fn slice_mut<'a, T>(self, len: usize, what: &str) -> Result<&'a mut [T], Error> {
        self.check::<T>(what)?;
        Ok(std::slice::from_raw_parts_mut(self.0 as *mut T, len))
    }

    /// The gradient outputs `(dx, dw)`, or `None` when both are 0 (the
    /// loss only).
    fn grads(dx: usize, dw: usize) -> Option<(Ptr, Ptr)> {
        match (dx, dw) {
            (0, 0) => None,
            (a, b) => Some((Ptr(a), Ptr(b))),
        }
    }

    fn check<T>(self, what: &str) -> Result<(), Error> {
        if self.0 == 0 || self.0 % std::mem::align_of::<T>() != 0 {
            return Err(Error::Backend {
                message: format!("{what}: null or misaligned data pointer"),
            });
        }
        Ok(())
    }
}

/// The EMA state held in one-element `float64` tensors: the norm
/// statistics, and CurricularFace's `t` where the policy has one.
struct StatePtrs {
    mean: Ptr,
    std: Ptr,
    /// 0 when the policy keeps no `t` (it is then carried as 0).
    t: Ptr,
}

impl StatePtrs {
    /// The state at these addresses; `t` is 0 for a policy without one.
    fn new(mean: usize, std: usize, t: usize) -> Self {
        StatePtrs {
            mean: Ptr(mean),
            std: Ptr(std),
            t: Ptr(t),
        }
    }

    /// # Safety
    /// Each non-zero address holds one live `f64`.
    unsafe fn read(&self) -> Result<EmaState, Error> {
        let mean = self.mean.slice::<f64>(1, "batch_mean")?[0];
        let std = self.std.slice::<f64>(1, "batch_std")?[0];
        let mut st = EmaState::new(mean, std);
        if self.t.0 != 0 {
            st.curricular_t = self.t.slice::<f64>(1, "curricular_t")?[0];
        }
        st.validate()?;
        Ok(st)
    }

    /// # Safety
    /// As [`read`](Self::read), and nothing else accesses them meanwhile.
    unsafe fn write(&self, st: EmaState) -> Result<(), Error> {
        self.mean.slice_mut::<f64>(1, "batch_mean")?[0] = st.batch_mean;
        self.std.slice_mut::<f64>(1, "batch_std")?[0] = st.batch_std;
        if self.t.0 != 0 {
            self.t.slice_mut::<f64>(1, "curricular_t")?[0] = st.curricular_t;
        }
        Ok(())
    }
}

/// One fused CPU step over raw tensor memory; see [`cpu_step`].
#[allow(clippy::too_many_arguments)]
unsafe fn cpu_run<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    shape: Shape,
    x: Ptr,
    w: Ptr,
    labels: Ptr,
    grads: Option<(Ptr, Ptr)>,
    state: &StatePtrs,
    update_state: bool,
) -> Result<f64, Error> {
    let x = x.slice::<E>(shape.features_len()?, "features")?;
    let w = w.slice::<E>(shape.weight_len()?, "weight")?;
    let y = labels.slice::<L>(shape.batch, "labels")?;
    let st = state.read()?;
    let options = CpuOptions::default();
    let (loss, after) = match grads {
        Some((dx, dw)) => {
            let dx = dx.slice_mut::<f32>(shape.features_len()?, "grad_features")?;
            let dw = dw.slice_mut::<f32>(shape.weight_len()?, "grad_weight")?;
            let step = adaface::cpu::forward_backward(cfg, &st, &options, shape, x, w, y, dx, dw)?;
            (step.loss, step.stats.state_after)
        }
        None => {
            let out = adaface::cpu::forward(cfg, &st, &options, shape, x, w, y)?;
            (out.loss, out.stats.state_after)
        }
    };
    if update_state {
        state.write(after)?;
    }
    Ok(f64::from(loss))
}

/// A training step (or, with `dx == dw == 0`, the loss only) on the fused
/// CPU backend, over CPU tensors' memory.
///
/// `dtype` is `"float32"`, `"bfloat16"` or `"float16"` (features and weight
/// alike), `label_dtype` `"int64"` or `"int32"`; `x`, `w`, `labels` are the
/// data pointers of contiguous `B x D`, `C x D` and `B` tensors; `dx`, `dw`
/// those of `float32` tensors of the same shapes (written in full) or both
/// 0; `state_mean`, `state_std` (and `state_t`, CurricularFace's `t`, or 0)
/// those of one-element `float64` tensors, read before and, when
/// `update_state`, written after. Returns the mean loss.
/// On an error nothing is written.
#[pyfunction]
#[pyo3(signature = (cfg, batch, dim, classes, dtype, label_dtype, x, w, labels, dx, dw, state_mean, state_std, update_state, state_t=0))]
#[allow(clippy::too_many_arguments)]
fn cpu_step(
    py: Python<'_>,
    cfg: &Config,
    batch: usize,
    dim: usize,
    classes: usize,
    dtype: &str,
    label_dtype: &str,
    x: usize,
    w: usize,
    labels: usize,
    dx: usize,
    dw: usize,
    state_mean: usize,
    state_std: usize,
    update_state: bool,
    state_t: usize,
) -> PyResult<f64> {
    let cfg = cfg.cfg;
    let shape = shape_of(batch, dim, classes).map_err(to_py)?;
    let grads = Ptr::grads(dx, dw);
    let (x, w, y) = (Ptr(x), Ptr(w), Ptr(labels));
    let state = StatePtrs::new(state_mean, state_std, state_t);
    macro_rules! go {
        ($e:ty) => {
            match label_dtype {
                // SAFETY: Python passes contiguous tensors of these sizes and
                // dtypes, alive for the call (the caller holds them).
                "int64" => py.detach(move || unsafe {
                    cpu_run::<$e, i64>(&cfg, shape, x, w, y, grads, &state, update_state)
                }),
                "int32" => py.detach(move || unsafe {
                    cpu_run::<$e, i32>(&cfg, shape, x, w, y, grads, &state, update_state)
                }),
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

/// The dtype names the crate's errors can carry (`&'static str`).
fn leak_name(name: &str) -> &'static str {
    match name {
        "float64" => "float64",
        "float32" => "float32",
        "bfloat16" => "bfloat16",
        "float16" => "float16",
        "int64" => "int64",
        "int32" => "int32",
        _ => "another dtype",
    }
}

/// One step of the exact reference (materialises `B x C`) in `T`.
#[allow(clippy::too_many_arguments)]
unsafe fn reference_run<T: Real, L: Label>(
    cfg: &AdaFaceConfig,
    shape: Shape,
    x: Ptr,
    w: Ptr,
    labels: Ptr,
    grads: Option<(Ptr, Ptr)>,
    state: &StatePtrs,
    update_state: bool,
) -> Result<f64, Error> {
    let x = x.slice::<T>(shape.features_len()?, "features")?;
    let w = w.slice::<T>(shape.weight_len()?, "weight")?;
    let y = labels.slice::<L>(shape.batch, "labels")?;
    let st = state.read()?;
    let (loss, after) = match grads {
        Some((dx, dw)) => {
            let dx = dx.slice_mut::<T>(shape.features_len()?, "grad_features")?;
            let dw = dw.slice_mut::<T>(shape.weight_len()?, "grad_weight")?;
            let step = adaface::reference::forward_backward(cfg, &st, shape, x, w, y)?;
            dx.copy_from_slice(&step.grad_features);
            dw.copy_from_slice(&step.grad_weight);
            (step.loss, step.stats.state_after)
        }
        None => {
            let out = adaface::reference::forward(cfg, &st, shape, x, w, y)?;
            (out.loss, out.stats.state_after)
        }
    };
    if update_state {
        state.write(after)?;
    }
    Ok(loss.to_f64())
}

/// [`cpu_step`] on the exact reference backend, in `float64` or `float32`
/// (`dtype`; the gradients `dx`, `dw` are of that dtype too). For checks
/// (gradcheck in `float64`): it materialises the `B x C` logits.
#[pyfunction]
#[pyo3(signature = (cfg, batch, dim, classes, dtype, label_dtype, x, w, labels, dx, dw, state_mean, state_std, update_state, state_t=0))]
#[allow(clippy::too_many_arguments)]
fn reference_step(
    py: Python<'_>,
    cfg: &Config,
    batch: usize,
    dim: usize,
    classes: usize,
    dtype: &str,
    label_dtype: &str,
    x: usize,
    w: usize,
    labels: usize,
    dx: usize,
    dw: usize,
    state_mean: usize,
    state_std: usize,
    update_state: bool,
    state_t: usize,
) -> PyResult<f64> {
    let cfg = cfg.cfg;
    let shape = shape_of(batch, dim, classes).map_err(to_py)?;
    let grads = Ptr::grads(dx, dw);
    let (x, w, y) = (Ptr(x), Ptr(w), Ptr(labels));
    let state = StatePtrs::new(state_mean, state_std, state_t);
    macro_rules! go {
        ($t:ty) => {
            match label_dtype {
                // SAFETY: as in cpu_step.
                "int64" => py.detach(move || unsafe {
                    reference_run::<$t, i64>(&cfg, shape, x, w, y, grads, &state, update_state)
                }),
                "int32" => py.detach(move || unsafe {
                    reference_run::<$t, i32>(&cfg, shape, x, w, y, grads, &state, update_state)
                }),
                other => Err(Error::DtypeMismatch {
                    expected: "int64 or int32 labels",
                    actual: leak_name(other),
                }),
            }
        };
    }
    let out = match dtype {
        "float64" => go!(f64),
        "float32" => go!(f32),
        other => Err(Error::DtypeMismatch {
            expected: "float64 or float32 (reference backend)",
            actual: leak_name(other),
        }),
    };
    out.map_err(to_py)
}

/// Whether this build has the CUDA backend compiled in.
#[pyfunction]
fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// The native module `adaface_rs._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Config>()?;
    m.add_function(wrap_pyfunction!(cpu_step, m)?)?;
    m.add_function(wrap_pyfunction!(reference_step, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_compiled, m)?)?;
    m.add_class::<shard::ShardPending>()?;
    m.add_function(wrap_pyfunction!(shard::shard_phase1, m)?)?;
    #[cfg(feature = "cuda")]
    m.add_class::<cuda::CudaHead>()?;
    #[cfg(feature = "cuda")]
    m.add_class::<cuda_shard::CudaShardHead>()?;
    Ok(())
}
