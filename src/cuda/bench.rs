//! GPU timing of the fused kernels against the naive cuBLAS baseline, for
//! the bench tool and `scripts/gpu_check.sh`: random inputs on the device,
//! warm-up, then each forward+backward step timed with CUDA events, and
//! the median reported with the step's extra device memory.
//!
//! The pieces are public for the criterion bench (`benches/cuda.rs`):
//! [`BenchInputs`] (random device data), [`BenchRunner`] (one path, forward
//! or forward+backward, with its extra-memory accounting) and
//! [`time_launches`] (event time of consecutive steps).

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use rayon::prelude::*;

use super::{backend, CudaAdaFace};
use crate::chunked::cuda::ChunkedCuda;
use crate::chunked::{ChunkedLayout, DEFAULT_CHUNK};
use crate::config::AdaFaceConfig;
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::kernel_params::AdafaceStepRecord;
use crate::launch::{KernelElement, Pass, PlanLimits};
use crate::naive::cuda::NaiveCuda;
use crate::naive::NaiveLayout;
use crate::shape::Shape;

/// The implementations [`bench()`] can time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchPath {
    /// The fused kernels ([`CudaAdaFace`]).
    Fused,
    /// The fused kernels with exact (hi + lo) gradient products
    /// ([`PlanLimits::split_gradients`] on; differs from `Fused`, whose
    /// products are single-rounded, only where the flash family runs: bf16
    /// or f16, `D % 32 == 0`, `D <= 512`).
    FusedExact,
    /// The fused kernels with the flash family on Hopper's `wgmma`
    /// ([`PlanLimits::wgmma`]; differs from `Fused` only for flash steps
    /// with `D % 128 == 0`). Compute capability 9.0 only.
    FusedWgmma,
    /// The naive cuBLAS baseline ([`NaiveCuda`]).
    Naive,
    /// The class-chunked cuBLAS path ([`ChunkedCuda`], chunks of
    /// [`crate::chunked::DEFAULT_CHUNK`] classes).
    Chunked,
}

impl BenchPath {
    /// `fused`, `naive`, `chunked`, ... (the bench tool's `path` key).
    pub fn name(self) -> &'static str {
        match self {
            BenchPath::Fused => "fused",
            BenchPath::FusedExact => "fused_exact",
            BenchPath::FusedWgmma => "fused_wgmma",
            BenchPath::Naive => "naive",
            BenchPath::Chunked => "chunked",
        }
    }
}

/// What to time.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// B, D, C.
    pub shape: Shape,
    /// Input element type: f32, bf16 or f16.
    pub dtype: Dtype,
    /// Untimed steps first (module load, cuBLAS heuristics, clocks).
    pub warmup: usize,
    /// Timed steps; the median is reported.
    pub iters: usize,
    /// Seed of the random inputs.
    pub seed: u64,
}

/// One path's timing of a forward+backward step.
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    /// Which implementation.
    pub path: BenchPath,
    /// Median milliseconds per step (CUDA events).
    pub median_ms: f64,
    /// `8 B D C` flops (forward: `2 B D C`) over the median time, in TFLOP/s.
    pub tflops: f64,
    /// Device bytes the path allocates beyond inputs and gradients
    /// (workspace, record, EMA state; cuBLAS's own workspace not counted).
    pub peak_extra_bytes: usize,
}

/// Times a forward+backward step of every path in `paths` on `stream`
/// (inputs are generated once and shared). Synchronises the stream; meant
/// for benchmarks, not training.
pub fn bench(
    stream: &Arc<CudaStream>,
    cfg: &BenchConfig,
    paths: &[BenchPath],
) -> Result<Vec<BenchResult>> {
    bench_pass(stream, cfg, paths, Pass::ForwardBackward)
}

/// [`bench()`] for either pass; a forward is credited `2 B D C` flops.
pub fn bench_pass(
    stream: &Arc<CudaStream>,
    cfg: &BenchConfig,
    paths: &[BenchPath],
    pass: Pass,
) -> Result<Vec<BenchResult>> {
    match cfg.dtype {
        Dtype::F32 => bench_typed::<f32>(stream, cfg, paths, pass),
        Dtype::BF16 => bench_typed::<half::bf16>(stream, cfg, paths, pass),
        Dtype::F16 => bench_typed::<half::f16>(stream, cfg, paths, pass),
        _ => Err(Error::DtypeMismatch {
            expected: "f32, bf16 or f16",
            actual: cfg.dtype.name(),
        }),
    }
}

/// SplitMix64 value `i` of stream `seed`, as a uniform in [-1, 1).
fn uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn random_matrix<E: KernelElement>(seed: u64, rows: usize, dim: usize, norms: bool) -> Vec<E> {
    (0..rows * dim)
        .into_par_iter()
        .map(|i| {
            // Feature rows get norms spread over about 5..60 (the margin
            // scaler then varies); weights stay uniform.
            let row_scale = if norms {
                30.0 * (1.0 + uniform(seed ^ 1, (i / dim) as u64)) / (dim as f32).sqrt()
            } else {
                1.0
            };
            E::from_f32(row_scale * uniform(seed, i as u64))
        })
        .collect()
}

/// Random device inputs of one shape and the gradient buffers, shared by
/// every path a benchmark times (the same data for each).
pub struct BenchInputs<E> {
    /// B, D, C.
    pub shape: Shape,
    /// Features, `B x D`: rows with norms spread over about 5..60, so the
    /// margin scaler varies.
    pub x: CudaSlice<E>,
    /// Class weights, `C x D`, uniform in [-1, 1).
    pub w: CudaSlice<E>,
    /// Labels, uniform over the classes.
    pub labels: CudaSlice<i64>,
    /// `dX`, `B x D` (f32).
    pub dx: CudaSlice<f32>,
    /// `dW`, `C x D` (f32).
    pub dw: CudaSlice<f32>,
}

impl<E: KernelElement + DeviceRepr> BenchInputs<E> {
    /// Generates the inputs of `shape` from `seed` on the host (in
    /// parallel) and uploads them to `stream`'s device.
    pub fn random(stream: &Arc<CudaStream>, shape: Shape, seed: u64) -> Result<Self> {
        let (b, d, c) = (shape.batch, shape.dim, shape.classes);
        let x = stream
            .clone_htod(&random_matrix::<E>(seed, b, d, true))
            .map_err(backend("upload x"))?;
        let w = stream
            .clone_htod(&random_matrix::<E>(seed ^ 0xABCD, c, d, false))
            .map_err(backend("upload W"))?;
        let labels: Vec<i64> = (0..b)
            .map(|i| {
                (((uniform(seed ^ 7, i as u64) + 1.0) * 0.5 * c as f32) as i64)
                    .clamp(0, c as i64 - 1)
            })
            .collect();
        let labels = stream
            .clone_htod(&labels)
            .map_err(backend("upload labels"))?;
        let dx = stream
            .alloc_zeros::<f32>(shape.features_len()?)
            .map_err(backend("alloc dX"))?;
        let dw = stream
            .alloc_zeros::<f32>(shape.weight_len()?)
            .map_err(backend("alloc dW"))?;
        Ok(BenchInputs {
            shape,
            x,
            w,
            labels,
            dx,
            dw,
        })
    }
}

enum Loss {
    Fused(Box<CudaAdaFace>),
    Naive(Box<NaiveCuda>),
    Chunked(Box<ChunkedCuda>),
}

/// One path ready to launch steps on a stream (the benches' unit of work).
pub struct BenchRunner {
    path: BenchPath,
    loss: Loss,
}

impl BenchRunner {
    /// The path with the default config on `stream` (compiles or loads the
    /// kernels; the naive path also creates its cuBLAS handle).
    /// [`BenchPath::FusedWgmma`] on a device other than compute capability
    /// 9.0 is [`Error::DeviceUnavailable`].
    pub fn new(stream: &Arc<CudaStream>, path: BenchPath) -> Result<Self> {
        let cfg = AdaFaceConfig::default();
        let loss = match path {
            BenchPath::Fused => Loss::Fused(Box::new(CudaAdaFace::new(stream.clone(), cfg)?)),
            BenchPath::FusedExact => {
                let fused = CudaAdaFace::new(stream.clone(), cfg)?;
                let limits = PlanLimits {
                    split_gradients: true,
                    ..fused.limits()
                };
                Loss::Fused(Box::new(fused.with_limits(limits)))
            }
            BenchPath::FusedWgmma => {
                let fused = CudaAdaFace::new(stream.clone(), cfg)?;
                let limits = PlanLimits {
                    wgmma: true,
                    ..fused.limits()
                };
                let fused = fused.with_limits(limits);
                if !fused.limits().wgmma {
                    return Err(Error::DeviceUnavailable {
                        reason: "the wgmma kernels need compute capability 9.0".into(),
                    });
                }
                Loss::Fused(Box::new(fused))
            }
            BenchPath::Naive => Loss::Naive(Box::new(NaiveCuda::new(stream.clone(), cfg)?)),
            BenchPath::Chunked => Loss::Chunked(Box::new(ChunkedCuda::new(
                stream.clone(),
                cfg,
                DEFAULT_CHUNK,
            )?)),
        };
        Ok(BenchRunner { path, loss })
    }

    /// Which implementation.
    pub fn path(&self) -> BenchPath {
        self.path
    }

    /// Launches one step of `pass` (asynchronous: no synchronisation, the
    /// step's record is dropped unread). A forward updates the EMA state on
    /// both paths, as the naive path always does.
    pub fn step<E: KernelElement + DeviceRepr>(
        &mut self,
        pass: Pass,
        inp: &mut BenchInputs<E>,
    ) -> Result<()> {
        let s = inp.shape;
        match (&mut self.loss, pass) {
            (Loss::Fused(f), Pass::Forward) => f.forward(s, &inp.x, &inp.w, &inp.labels, true)?,
            (Loss::Fused(f), Pass::ForwardBackward) => {
                f.forward_backward(s, &inp.x, &inp.w, &inp.labels, &mut inp.dx, &mut inp.dw)?
            }
            (Loss::Naive(n), Pass::Forward) => {
                n.forward(s, &inp.x, &inp.w, &inp.labels)?;
                return Ok(());
            }
            (Loss::Naive(n), Pass::ForwardBackward) => {
                n.forward_backward(s, &inp.x, &inp.w, &inp.labels, &mut inp.dx, &mut inp.dw)?;
                return Ok(());
            }
            (Loss::Chunked(n), Pass::Forward) => {
                n.forward(s, &inp.x, &inp.w, &inp.labels)?;
                return Ok(());
            }
            (Loss::Chunked(n), Pass::ForwardBackward) => {
                n.forward_backward(s, &inp.x, &inp.w, &inp.labels, &mut inp.dx, &mut inp.dw)?;
                return Ok(());
            }
        };
        Ok(())
    }

    /// Device bytes a step of `pass` allocates beyond inputs and gradients:
    /// the fused workspace, step record and EMA state, or the naive
    /// workspace ([`crate::naive::NaiveLayout::extra_bytes`]); cuBLAS's
    /// own workspace is not counted.
    pub fn extra_bytes<E: KernelElement>(&self, shape: Shape, pass: Pass) -> Result<usize> {
        Ok(match &self.loss {
            Loss::Fused(f) => {
                f.plan::<E>(shape, pass)?.workspace_bytes()
                    + std::mem::size_of::<AdafaceStepRecord>()
                    + 16
            }
            Loss::Naive(_) => NaiveLayout::new(shape, std::mem::size_of::<E>())?.extra_bytes(),
            Loss::Chunked(_) => {
                ChunkedLayout::new(shape, std::mem::size_of::<E>(), DEFAULT_CHUNK)?.extra_bytes()
            }
        })
    }
}

fn bench_typed<E: KernelElement + DeviceRepr>(
    stream: &Arc<CudaStream>,
    cfg: &BenchConfig,
    paths: &[BenchPath],
    pass: Pass,
) -> Result<Vec<BenchResult>> {
    let shape = cfg.shape;
    let (b, d, c) = (shape.batch, shape.dim, shape.classes);
    let mut inp = BenchInputs::<E>::random(stream, shape, cfg.seed)?;
    let per_bdc = match pass {
        Pass::Forward => 2.0,
        Pass::ForwardBackward => 8.0,
    };
    let flops = per_bdc * b as f64 * d as f64 * c as f64;
    let mut out = Vec::with_capacity(paths.len());
    for &path in paths {
        let mut runner = BenchRunner::new(stream, path)?;
        let times = time_steps(stream, cfg, || runner.step(pass, &mut inp))?;
        let median_ms = median(times);
        out.push(BenchResult {
            path,
            median_ms,
            tflops: flops / (median_ms * 1e-3) / 1e12,
            peak_extra_bytes: runner.extra_bytes::<E>(shape, pass)?,
        });
    }
    Ok(out)
}

/// Milliseconds of `steps` consecutive launches of `step` on `stream`,
/// between two CUDA events (synchronises once, after the second event).
/// For criterion's `iter_custom`: the caller divides by `steps`.
pub fn time_launches(
    stream: &Arc<CudaStream>,
    steps: u64,
    mut step: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream
        .record_event(timing)
        .map_err(backend("record event"))?;
    for _ in 0..steps {
        step()?;
    }
    let end = stream
        .record_event(timing)
        .map_err(backend("record event"))?;
    stream.synchronize().map_err(backend("synchronize"))?;
    start
        .elapsed_ms(&end)
        .map(f64::from)
        .map_err(backend("event time"))
}

/// Runs `warmup` steps, then `iters` steps each between two timing events;
/// synchronises once at the end and returns the milliseconds of each.
fn time_steps(
    stream: &Arc<CudaStream>,
    cfg: &BenchConfig,
    mut step: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..cfg.warmup {
        step()?;
    }
    let mut events = Vec::with_capacity(cfg.iters.max(1));
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    for _ in 0..cfg.iters.max(1) {
        let start = stream
            .record_event(timing)
            .map_err(backend("record event"))?;
        step()?;
        let end = stream
            .record_event(timing)
            .map_err(backend("record event"))?;
        events.push((start, end));
    }
    stream.synchronize().map_err(backend("synchronize"))?;
    events
        .iter()
        .map(|(s, e)| {
            s.elapsed_ms(e)
                .map(f64::from)
                .map_err(backend("event time"))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}
