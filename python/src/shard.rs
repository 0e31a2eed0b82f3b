//! The split-phase class-sharded step (`adaface::shard`) over torch tensors'
//! memory, for `adaface_rs.ShardedAdaFaceLoss`, whose Python code runs the
//! collectives (`torch.distributed`) between the phases.
//!
//! [`shard_phase1`] runs phase 1 of one shard on the global batch and
//! returns a [`ShardPending`] holding what phase 2 needs; the caller
//! all-reduces (`MAX`) the row maxima, asks [`ShardPending::sums_for`] for
//! the `4 B` values to all-reduce (`SUM`), and finishes with
//! [`ShardPending::phase2`]: the loss, this shard's `dW` and its partial
//! `dX` (to be all-reduced `SUM`), and the EMA state. Nothing `B x C` is
//! returned or kept beyond the call on the fused CPU backend.

use std::sync::Mutex;

use adaface::cpu::{CpuElement, CpuPending, ShardedCpuAdaFace};
use adaface::shard::reference::{ReferencePending, ShardedReference};
use adaface::shard::{GlobalRows, PartialFc, RowPartials, ShardSpec};
use adaface::{AdaFaceConfig, EmaState, Error, Label, Real, Shape};
use half::{bf16, f16};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::{leak_name, shape_of, to_py, Config, Ptr, StatePtrs};

/// One shard's phase-1 result, by backend and element type.
enum Pending {
    CpuF32(ShardedCpuAdaFace, CpuPending<f32>, RowPartials<f32>),
    CpuBf16(ShardedCpuAdaFace, CpuPending<bf16>, RowPartials<f32>),
    CpuF16(ShardedCpuAdaFace, CpuPending<f16>, RowPartials<f32>),
    RefF32(ShardedReference, ReferencePending<f32>, RowPartials<f32>),
    RefF64(ShardedReference, ReferencePending<f64>, RowPartials<f64>),
}

/// What [`shard_phase1`] leaves for the reduction and phase 2 of one step
/// of one shard. Used once: [`phase2`](Self::phase2) consumes it.
#[pyclass(frozen, module = "adaface_rs._native")]
pub struct ShardPending {
    inner: Mutex<Option<Pending>>,
    shape: Shape,
    dtype: &'static str,
    stat_dtype: &'static str,
    sampled: Option<Vec<usize>>,
}

/// Phase 1 on the fused CPU backend.
#[allow(clippy::too_many_arguments)]
unsafe fn cpu_phase1<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    spec: ShardSpec,
    shape: Shape,
    x: Ptr,
    w: Ptr,
    labels: Ptr,
    state: EmaState,
    sampling: Option<(&PartialFc, u64)>,
) -> Result<(ShardedCpuAdaFace, CpuPending<E>, RowPartials<f32>), Error> {
    let x = x.slice::<E>(shape.features_len()?, "features")?;
    let w = w.slice::<E>(shape.weight_len()?, "weight")?;
    let y = labels.slice::<L>(shape.batch, "labels")?;
    let mut shard = ShardedCpuAdaFace::new(*cfg, spec);
    shard.set_state(state)?;
    let (partials, pending) = shard.phase1(shape, x, w, y, sampling)?;
    Ok((shard, pending, partials))
}

/// Phase 1 on the exact reference backend.
#[allow(clippy::too_many_arguments)]
unsafe fn reference_phase1<T: Real, L: Label>(
    cfg: &AdaFaceConfig,
    spec: ShardSpec,
    shape: Shape,
    x: Ptr,
    w: Ptr,
    labels: Ptr,
    state: EmaState,
    sampling: Option<(&PartialFc, u64)>,
) -> Result<(ShardedReference, ReferencePending<T>, RowPartials<T>), Error> {
    let x = x.slice::<T>(shape.features_len()?, "features")?;
    let w = w.slice::<T>(shape.weight_len()?, "weight")?;
    let y = labels.slice::<L>(shape.batch, "labels")?;
    let mut shard = ShardedReference::new(*cfg, spec);
    shard.set_state(state)?;
    let (partials, pending) = shard.phase1(shape, x, w, y, sampling)?;
    Ok((shard, pending, partials))
}

/// The sampled classes, computed apart so the caller can report them.
unsafe fn sample_of<L: Label>(
    p: &PartialFc,
    spec: &ShardSpec,
    labels: Ptr,
    batch: usize,
    step: u64,
) -> Result<Vec<usize>, Error> {
    let y = labels.slice::<L>(batch, "labels")?;
    p.sample(spec, y, step)
}

/// Writes `[max, sumexp, target_logit, target_cosine, owned]` (`5 x B`).
fn write_partials<T: Copy>(p: &RowPartials<T>, out: &mut [T]) {
    let b = p.max.len();
    for (k, v) in [
        &p.max,
        &p.sumexp,
        &p.target_logit,
        &p.target_cosine,
        &p.owned,
    ]
    .into_iter()
    .enumerate()
    {
        out[k * b..(k + 1) * b].copy_from_slice(v);
    }
}

/// Phase 1 of a sharded step on one shard: the per-row partial softmax
/// statistics of the shard `[offset, offset + classes)` of `total_classes`
/// over the global batch.
///
/// `backend` is `"cpu"` (fused; `dtype` `"float32"`, `"bfloat16"` or
/// `"float16"`, statistics `float32`) or `"reference"` (exact; `dtype`
/// `"float32"` or `"float64"`, statistics of that dtype). `x`, `w`, `labels`
/// are the data pointers of contiguous `B x D` (the global batch),
/// `classes x D` (this shard's rows) and `B` (global labels) tensors;
/// `state_mean`, `state_std` one-element `float64` tensors (read only).
/// With `sample_rate` (in `(0, 1]`), Partial FC keeps every positive and a
/// deterministic subset of the negatives drawn from `(seed, step, offset)`.
/// `partials` is a contiguous `5 x B` tensor of the statistics' dtype,
/// written (rows max, sumexp, target logit, target cosine, owned) only on
/// success.
#[pyfunction]
#[pyo3(signature = (cfg, backend, offset, classes, total_classes, batch, dim, dtype, label_dtype, x, w, labels, state_mean, state_std, sample_rate, seed, step, partials))]
#[allow(clippy::too_many_arguments)]
pub fn shard_phase1(
    py: Python<'_>,
    cfg: &Config,
    backend: &str,
    offset: usize,
    classes: usize,
    total_classes: usize,
    batch: usize,
    dim: usize,
    dtype: &str,
    label_dtype: &str,
    x: usize,
    w: usize,
    labels: usize,
    state_mean: usize,
    state_std: usize,
    sample_rate: Option<f64>,
    seed: u64,
    step: u64,
    partials: usize,
) -> PyResult<ShardPending> {
    let cfg = cfg.cfg;
    let spec = ShardSpec::new(offset, classes, total_classes).map_err(to_py)?;
    let shape = shape_of(batch, dim, classes).map_err(to_py)?;
    let pfc = sample_rate
        .map(|r| PartialFc::new(r, seed))
        .transpose()
        .map_err(to_py)?;
    let (x, w, y, out) = (Ptr(x), Ptr(w), Ptr(labels), Ptr(partials));
    // The class-sharded step takes the affine policies only: no `t`.
    let state = StatePtrs::new(state_mean, state_std, 0);
    let backend = match backend {
        "cpu" => "cpu",
        "reference" => "reference",
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown backend {other:?}: expected \"cpu\" or \"reference\""
            )))
        }
    };
    let dtype_name: &'static str = match (backend, dtype) {
        ("cpu", "float32" | "bfloat16" | "float16") | ("reference", "float32" | "float64") => {
            leak_name(dtype)
        }
        (_, other) => {
            return Err(to_py(Error::DtypeMismatch {
                expected: if backend == "cpu" {
                    "float32, bfloat16 or float16"
                } else {
                    "float64 or float32 (reference backend)"
                },
                actual: leak_name(other),
            }))
        }
    };
    let label_is_64 = match label_dtype {
        "int64" => true,
        "int32" => false,
        other => {
            return Err(to_py(Error::DtypeMismatch {
                expected: "int64 or int32 labels",
                actual: leak_name(other),
            }))
        }
    };
    let run = move || -> Result<(Pending, Option<Vec<usize>>), Error> {
        // SAFETY: Python passes contiguous tensors of these sizes and dtypes,
        // alive for the call (the caller holds them).
        unsafe {
            let st = state.read()?;
            let sampling = pfc.as_ref().map(|p| (p, step));
            macro_rules! go {
                ($f:ident, $t:ty, $variant:ident) => {
                    if label_is_64 {
                        let (s, p, r) = $f::<$t, i64>(&cfg, spec, shape, x, w, y, st, sampling)?;
                        Pending::$variant(s, p, r)
                    } else {
                        let (s, p, r) = $f::<$t, i32>(&cfg, spec, shape, x, w, y, st, sampling)?;
                        Pending::$variant(s, p, r)
                    }
                };
            }
            let pending = match (backend, dtype_name) {
                ("cpu", "float32") => go!(cpu_phase1, f32, CpuF32),
                ("cpu", "bfloat16") => go!(cpu_phase1, bf16, CpuBf16),
                ("cpu", "float16") => go!(cpu_phase1, f16, CpuF16),
                ("reference", "float32") => go!(reference_phase1, f32, RefF32),
                _ => go!(reference_phase1, f64, RefF64),
            };
            let sampled = match &pfc {
                None => None,
                Some(p) if label_is_64 => Some(sample_of::<i64>(p, &spec, y, batch, step)?),
                Some(p) => Some(sample_of::<i32>(p, &spec, y, batch, step)?),
            };
            // Everything succeeded: write the statistics.
            match &pending {
                Pending::CpuF32(_, _, r)
                | Pending::CpuBf16(_, _, r)
                | Pending::CpuF16(_, _, r)
                | Pending::RefF32(_, _, r) => {
                    write_partials(r, out.slice_mut::<f32>(5 * batch, "partials")?)
                }
                Pending::RefF64(_, _, r) => {
                    write_partials(r, out.slice_mut::<f64>(5 * batch, "partials")?)
                }
            }
            Ok((pending, sampled))
        }
    };
    let (pending, sampled) = py.detach(run).map_err(to_py)?;
    let stat_dtype = if matches!(pending, Pending::RefF64(..)) {
        "float64"
    } else {
        "float32"
    };
    Ok(ShardPending {
        inner: Mutex::new(Some(pending)),
        shape,
        dtype: dtype_name,
        stat_dtype,
        sampled,
    })
}

/// `4 B` sums from the stored partials and the all-reduced maxima.
unsafe fn sums_into<T: Real>(
    p: &RowPartials<T>,
    gmax: Ptr,
    out: Ptr,
    b: usize,
) -> Result<(), Error> {
    let g = gmax.slice::<T>(b, "global_max")?;
    let sums = p.sums_for(g)?;
    out.slice_mut::<T>(4 * b, "sums")?.copy_from_slice(&sums);
    Ok(())
}

/// Phase 2 on the CPU backend; `grads` `None`: the loss only.
#[allow(clippy::too_many_arguments)]
unsafe fn cpu_phase2<E: CpuElement>(
    shard: &mut ShardedCpuAdaFace,
    pending: &CpuPending<E>,
    shape: Shape,
    w: Ptr,
    global: &GlobalRows<f32>,
    grads: Option<(Ptr, Ptr)>,
) -> Result<(f64, EmaState), Error> {
    match grads {
        None => loss_only(global, shape.batch).map(|l| (l, shard.state())),
        Some((dx, dw)) => {
            let w = w.slice::<E>(shape.weight_len()?, "weight")?;
            let dx = dx.slice_mut::<f32>(shape.features_len()?, "grad_features")?;
            let dw = dw.slice_mut::<f32>(shape.weight_len()?, "grad_weight")?;
            let out = shard.phase2(pending, w, global, dx, dw)?;
            Ok((f64::from(out.loss), out.stats.state_after))
        }
    }
}

/// Phase 2 on the reference backend; `grads` `None`: the loss only.
unsafe fn reference_phase2<T: Real>(
    shard: &mut ShardedReference,
    pending: &ReferencePending<T>,
    shape: Shape,
    global: &GlobalRows<T>,
    grads: Option<(Ptr, Ptr)>,
) -> Result<(f64, EmaState), Error> {
    match grads {
        None => loss_only(global, shape.batch).map(|l| (l, shard.state())),
        Some((dx, dw)) => {
            // Check both destinations before the step writes either.
            let dx = dx.slice_mut::<T>(shape.features_len()?, "grad_features")?;
            let dw = dw.slice_mut::<T>(shape.weight_len()?, "grad_weight")?;
            let out = shard.phase2(pending, global)?;
            dx.copy_from_slice(&out.grad_features);
            dw.copy_from_slice(&out.grad_weight);
            Ok((out.loss.to_f64(), out.stats.state_after))
        }
    }
}

/// The mean loss from the reduced statistics (no gradients, no state).
fn loss_only<T: Real>(global: &GlobalRows<T>, batch: usize) -> Result<f64, Error> {
    global.validate(batch)?;
    let total: f64 = global
        .lse
        .iter()
        .zip(&global.target_logit)
        .map(|(&l, &t)| (l - t).to_f64())
        .sum();
    Ok(total / batch as f64)
}

#[pymethods]
impl ShardPending {
    /// The batch (global rows), `B`.
    #[getter]
    fn batch(&self) -> usize {
        self.shape.batch
    }

    /// The dtype the statistics are in (`"float32"` or `"float64"`).
    #[getter]
    fn stat_dtype(&self) -> &'static str {
        self.stat_dtype
    }

    /// The input dtype phase 1 read.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype
    }

    /// The sorted shard-local indices Partial FC kept, or `None` when every
    /// class took part.
    fn sampled(&self) -> Option<Vec<usize>> {
        self.sampled.clone()
    }

    /// Writes the `4 B` values to all-reduce with `SUM` into `out` given the
    /// all-reduced (`MAX`) row maxima `global_max` (`B` values), both of
    /// [`stat_dtype`](Self::stat_dtype).
    fn sums_for(&self, global_max: usize, out: usize) -> PyResult<()> {
        let guard = self
            .inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("shard step poisoned"))?;
        let pending = guard
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("this shard step already finished"))?;
        let (g, o, b) = (Ptr(global_max), Ptr(out), self.shape.batch);
        // SAFETY: Python passes contiguous tensors of B and 4 B values of the
        // statistics' dtype.
        let r = unsafe {
            match pending {
                Pending::CpuF32(_, _, r)
                | Pending::CpuBf16(_, _, r)
                | Pending::CpuF16(_, _, r)
                | Pending::RefF32(_, _, r) => sums_into(r, g, o, b),
                Pending::RefF64(_, _, r) => sums_into(r, g, o, b),
            }
        };
        r.map_err(to_py)
    }

    /// Phase 2 from the all-reduced maxima (`B`) and sums (`4 B`): writes
    /// this shard's `dW` (`classes x D`, exactly zero on classes Partial FC
    /// left out) into `dw` and its partial `dX` (`B x D`, to be summed over
    /// shards) into `dx` (`float32` on the CPU backend, the input dtype on
    /// the reference), and when `update_state` the EMA state after the
    /// global batch into `state_mean`, `state_std` (which must still hold
    /// the state phase 1 read). With `dx == dw == 0` the loss only, nothing
    /// written. Returns the mean loss over the global batch. Consumes this
    /// object; on an error nothing is written.
    #[pyo3(signature = (w, global_max, sums, dx, dw, state_mean, state_std, update_state))]
    #[allow(clippy::too_many_arguments)]
    fn phase2(
        &self,
        py: Python<'_>,
        w: usize,
        global_max: usize,
        sums: usize,
        dx: usize,
        dw: usize,
        state_mean: usize,
        state_std: usize,
        update_state: bool,
    ) -> PyResult<f64> {
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("shard step poisoned"))?;
        let mut pending = guard
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this shard step already finished"))?;
        let shape = self.shape;
        let grads = Ptr::grads(dx, dw);
        let (w, g, s) = (Ptr(w), Ptr(global_max), Ptr(sums));
        let state = StatePtrs::new(state_mean, state_std, 0);
        let b = shape.batch;
        let run = || -> Result<f64, Error> {
            // SAFETY: as in shard_phase1; the statistics are contiguous
            // tensors of B and 4 B values of the statistics' dtype.
            unsafe {
                let now = state.read()?;
                macro_rules! global {
                    ($t:ty) => {
                        GlobalRows::<$t>::from_reduced(
                            g.slice::<$t>(b, "global_max")?,
                            s.slice::<$t>(4 * b, "sums")?,
                        )?
                    };
                }
                macro_rules! same_state {
                    ($shard:expr) => {
                        if $shard.state() != now {
                            return Err(Error::InvalidShard {
                                reason: "the EMA state changed since phase 1".into(),
                            });
                        }
                    };
                }
                let (loss, after) = match &mut pending {
                    Pending::CpuF32(sh, p, _) => {
                        same_state!(sh);
                        cpu_phase2(sh, p, shape, w, &global!(f32), grads)?
                    }
                    Pending::CpuBf16(sh, p, _) => {
                        same_state!(sh);
                        cpu_phase2(sh, p, shape, w, &global!(f32), grads)?
                    }
                    Pending::CpuF16(sh, p, _) => {
                        same_state!(sh);
                        cpu_phase2(sh, p, shape, w, &global!(f32), grads)?
                    }
                    Pending::RefF32(sh, p, _) => {
                        same_state!(sh);
                        reference_phase2(sh, p, shape, &global!(f32), grads)?
                    }
                    Pending::RefF64(sh, p, _) => {
                        same_state!(sh);
                        reference_phase2(sh, p, shape, &global!(f64), grads)?
                    }
                };
                if update_state && grads.is_some() {
                    state.write(after)?;
                }
                Ok(loss)
            }
        };
        let out = py.detach(run);
        if out.is_err() {
            // A rejected finish leaves the step usable (nothing was written).
            *guard = Some(pending);
        }
        out.map_err(to_py)
    }
}
