//! The shared harness of the integration tests: seeded inputs (from
//! `adaface::testing`, which examples and benches use too), the backends
//! under test behind one step function, relative-norm comparisons against
//! the f64 reference with per-backend bounds, the `test_backend!` macro that
//! runs one check on every backend, and the golden files' location.
//!
//! The backends' modules are imported here only, so that a move of one of
//! them touches one line of the tests.
#![allow(dead_code, unused_imports, unused_macros)]

use std::path::PathBuf;

pub use adaface::sim::{mma_count, wgmma_count};
pub use adaface::sim::{ShardedSimAdaFace, SimAdaFace, SimShardStep};
pub use adaface::testing::{indexed_uniform, Inputs, Rng, RowNorms};

use adaface::cpu::CpuElement;
use adaface::launch::{KernelElement, KernelLabel, PlanLimits};
use adaface::{reference, AdaFaceConfig, Dtype, EmaState, Error, Label, Shape};

/// `||a - b|| / ||b||` (or `||a - b||` when `b` is zero).
pub fn rel_norm(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// `|a - b| / |b|` (or `|a - b|` when `b` is zero).
pub fn rel(a: f64, b: f64) -> f64 {
    rel_norm(&[a], &[b])
}

/// `tests/golden` in this repository, or `$ADAFACE_GOLDEN_DIR`.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("ADAFACE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"),
    }
}

/// Every golden case file (`.json`, or zlib-compressed `.json.zz`), sorted;
/// fails loudly when none is found so a missing directory cannot pass
/// silently. Read them with [`read_golden`].
pub fn golden_files() -> Vec<PathBuf> {
    let dir = golden_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("golden dir {} unreadable: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".json") || name.ends_with(".json.zz")
        })
        .collect();
    files.sort();
    // The repository's copy holds all twelve; an override (the GPU bundle
    // carries the float32 half) at least one.
    let expected = if std::env::var_os("ADAFACE_GOLDEN_DIR").is_some() {
        1
    } else {
        12
    };
    assert!(
        files.len() >= expected,
        "{} golden files in {}, expected {expected}",
        files.len(),
        dir.display()
    );
    files
}

/// The text of a golden file, inflated when it is zlib-compressed (`.zz`).
pub fn read_golden(path: &std::path::Path) -> String {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let bytes = if path.to_string_lossy().ends_with(".zz") {
        miniz_oxide::inflate::decompress_to_vec_zlib(&bytes)
            .unwrap_or_else(|e| panic!("{}: not zlib data: {e:?}", path.display()))
    } else {
        bytes
    };
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{}: not UTF-8: {e}", path.display()))
}

/// One step of a golden case's expected outputs (the official
/// implementation's): loss, norms, margin scalers, dX, dW, EMA state after.
pub type ExpectedStep = (
    f64,
    Vec<f64>,
    Vec<f64>,
    Vec<f64>,
    Vec<f64>,
    adaface::EmaState,
);

/// A golden case's expected outputs per step, so a backend can be checked
/// against the files directly, not only against another backend.
pub fn golden_expected(case: &adaface::golden::Case) -> Vec<ExpectedStep> {
    case.steps
        .iter()
        .map(|s| {
            let e = s.expected.as_ref().expect("golden files carry outputs");
            (
                e.loss,
                e.norms.clone(),
                e.margin_scaler.clone(),
                e.grad_features.clone(),
                e.grad_weight.clone(),
                e.state_after,
            )
        })
        .collect()
}

/// Checks one backend's steps against the golden file's expected outputs:
/// the loss, the EMA state and each array by relative norm.
pub fn assert_matches_golden(
    name: &str,
    case: &adaface::golden::Case,
    got: &[adaface::golden::EvalStep],
    tol_loss: f64,
    tol_array: f64,
) {
    let want = golden_expected(case);
    assert_eq!(got.len(), want.len(), "{name}: step count");
    for (k, (g, (loss, norms, z, gx, gw, state))) in got.iter().zip(&want).enumerate() {
        let at = format!("{name} step {k} vs the official outputs");
        let e = rel(g.loss, *loss);
        assert!(e <= tol_loss, "{at}: loss rel err {e:e}");
        for (what, a, b) in [
            ("norms", &g.norms, norms),
            ("margin_scaler", &g.margin_scaler, z),
            ("grad_features", &g.grad_features, gx),
            ("grad_weight", &g.grad_weight, gw),
        ] {
            let e = rel_norm(a, b);
            assert!(e <= tol_array, "{at}: {what} rel-norm err {e:e}");
        }
        assert!(
            rel(g.state_after.batch_mean, state.batch_mean) <= tol_loss,
            "{at}: EMA mean"
        );
        assert!(
            rel(g.state_after.batch_std, state.batch_std) <= tol_loss,
            "{at}: EMA std"
        );
    }
}

/// Checks a kernel backend's steps of one case against the reference's on
/// the same inputs: the loss within 1e-5 and both gradients within 1e-4
/// by relative norm (f32 accumulation against f64).
pub fn assert_eval_steps_close(
    what: &str,
    got: &[adaface::golden::EvalStep],
    want: &[adaface::golden::EvalStep],
) {
    assert_eval_steps_within(what, got, want, 1e-4);
}

/// [`assert_eval_steps_close`] with both gradients within `grad_tol`.
pub fn assert_eval_steps_within(
    what: &str,
    got: &[adaface::golden::EvalStep],
    want: &[adaface::golden::EvalStep],
    grad_tol: f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: step count");
    for (k, (s, r)) in got.iter().zip(want).enumerate() {
        let e = rel(s.loss, r.loss);
        assert!(e < 1e-5, "{what} step {k}: loss {} vs {}", s.loss, r.loss);
        let gx = rel_norm(&s.grad_features, &r.grad_features);
        let gw = rel_norm(&s.grad_weight, &r.grad_weight);
        println!("{what} step {k}: loss {e:e} dX {gx:e} dW {gw:e}");
        assert!(
            gx < grad_tol && gw < grad_tol,
            "{what} step {k}: dX {gx:e} dW {gw:e}"
        );
    }
}

/// A config with margin `policy` and scale `s`, the rest default (the
/// margin-formula tests vary only these).
pub fn margin_cfg(policy: adaface::MarginPolicy, s: f64) -> AdaFaceConfig {
    AdaFaceConfig::builder()
        .margin(policy)
        .s(s)
        .build()
        .expect("valid config")
}

/// [`Inputs::spread_norms`] of shape `b x d`, `c` classes: the inputs every
/// backend is checked on.
pub fn random_inputs(seed: u64, b: usize, d: usize, c: usize) -> Inputs {
    Inputs::spread_norms(seed, Shape::new(b, d, c))
}

/// `n` values in [-1.7, 1.7) (unit variance), generated in parallel from
/// an indexed stream: fast enough for weights of billions of elements.
pub fn par_values<E: KernelElement>(seed: u64, n: usize) -> Vec<E> {
    use rayon::prelude::*;
    (0..n)
        .into_par_iter()
        .map(|i| E::from_f64((indexed_uniform(seed, i as u64) * 2.0 - 1.0) * 3f64.sqrt()))
        .collect()
}

pub fn round<E: KernelElement>(v: &[f64]) -> Vec<E> {
    v.iter().map(|&x| E::from_f64(x)).collect()
}

pub fn widen<E: KernelElement>(v: &[E]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

pub fn widen32(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The labels as another label type (`i32`, `u32`); panics (a test
/// failure) when one does not fit.
pub fn labels_as<L: TryFrom<i64>>(labels: &[i64]) -> Vec<L> {
    labels
        .iter()
        .map(|&l| L::try_from(l).ok().expect("label fits"))
        .collect()
}

/// The f64 reference on the inputs as rounded to `E`.
pub fn reference_step<E: KernelElement>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    inp: &Inputs,
) -> adaface::StepOutput<f64> {
    let x = widen(&round::<E>(&inp.x));
    let w = widen(&round::<E>(&inp.w));
    reference::forward_backward::<f64, i64>(cfg, state, inp.shape, &x, &w, &inp.labels)
        .expect("reference step")
}

/// [`reference_step`] on the inputs as rounded to `dtype`.
pub fn reference_for(
    dtype: Dtype,
    cfg: &AdaFaceConfig,
    state: &EmaState,
    inp: &Inputs,
) -> adaface::StepOutput<f64> {
    match dtype {
        Dtype::F32 => reference_step::<f32>(cfg, state, inp),
        Dtype::BF16 => reference_step::<half::bf16>(cfg, state, inp),
        Dtype::F16 => reference_step::<half::f16>(cfg, state, inp),
        other => panic!("no reference rounding for {other}"),
    }
}

/// One training step's outputs, as every backend reports them.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOut {
    pub loss: f64,
    pub dx: Vec<f32>,
    pub dw: Vec<f32>,
    pub state: EmaState,
}

impl StepOut {
    /// The errors of this step against the reference `r`.
    pub fn errors(&self, r: &adaface::StepOutput<f64>) -> StepErrors {
        StepErrors::new(self.loss, &self.dx, &self.dw, self.state, r)
    }

    /// The bits of the loss and both gradients, for determinism checks.
    pub fn bits(&self) -> (u64, Vec<u32>, Vec<u32>) {
        (
            self.loss.to_bits(),
            self.dx.iter().map(|v| v.to_bits()).collect(),
            self.dw.iter().map(|v| v.to_bits()).collect(),
        )
    }
}

/// The default plan in the exact mode: the flash family's gradient products
/// in hi + lo halves ([`PlanLimits::split_gradients`]), within the f32
/// bounds of the reference. Tests whose subject is not the rounding mode
/// use it, so that their tolerances stay tight.
pub fn exact_limits() -> PlanLimits {
    PlanLimits {
        split_gradients: true,
        ..PlanLimits::default()
    }
}

/// One simulated training step on inputs rounded to `E`, labels as `L`,
/// from the state `sim` holds.
pub fn sim_step<E: KernelElement, L: KernelLabel + TryFrom<i64>>(
    sim: &mut SimAdaFace,
    inp: &Inputs,
) -> Result<StepOut, Error> {
    let x = round::<E>(&inp.x);
    let w = round::<E>(&inp.w);
    let labels: Vec<L> = labels_as(&inp.labels);
    let mut dx = vec![0.0f32; x.len()];
    let mut dw = vec![0.0f32; w.len()];
    let summary = sim
        .forward_backward(inp.shape, &x, &w, &labels, &mut dx, &mut dw)?
        .summary()?;
    Ok(StepOut {
        loss: summary.loss,
        dx,
        dw,
        state: summary.state_after,
    })
}

/// One simulated training step from `state` with `limits`, which must
/// commit its state, and its errors against the f64 reference on the same
/// rounded inputs.
pub fn sim_errors<E: KernelElement, L: KernelLabel + TryFrom<i64>>(
    cfg: &AdaFaceConfig,
    limits: PlanLimits,
    state: EmaState,
    inp: &Inputs,
) -> StepErrors {
    let mut sim = SimAdaFace::new(*cfg).with_limits(limits);
    sim.set_state(state).unwrap();
    let step = sim_step::<E, L>(&mut sim, inp).expect("sim step");
    assert_eq!(
        sim.state().unwrap(),
        step.state,
        "the step commits its state"
    );
    step.errors(&reference_step::<E>(cfg, &state, inp))
}

/// [`sim_errors`] for a dtype and label type chosen at run time.
pub fn sim_errors_for(
    dtype: Dtype,
    i32_labels: bool,
    cfg: &AdaFaceConfig,
    limits: PlanLimits,
    state: EmaState,
    inp: &Inputs,
) -> StepErrors {
    use half::{bf16, f16};
    match (dtype, i32_labels) {
        (Dtype::F32, false) => sim_errors::<f32, i64>(cfg, limits, state, inp),
        (Dtype::F32, true) => sim_errors::<f32, i32>(cfg, limits, state, inp),
        (Dtype::BF16, false) => sim_errors::<bf16, i64>(cfg, limits, state, inp),
        (Dtype::BF16, true) => sim_errors::<bf16, i32>(cfg, limits, state, inp),
        (Dtype::F16, false) => sim_errors::<f16, i64>(cfg, limits, state, inp),
        (Dtype::F16, true) => sim_errors::<f16, i32>(cfg, limits, state, inp),
        (other, _) => panic!("no kernels for {other}"),
    }
}

/// Relative-error bounds of one step against the f64 reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub loss: f64,
    pub dx: f64,
    pub dw: f64,
    pub state: f64,
}

impl Bounds {
    /// f32 accumulation against the f64 oracle on the same inputs. Measured
    /// errors are about 1e-7 (loss) and 2e-6 (gradients); the bounds leave
    /// a margin of ten yet catch any wrong term.
    pub const F32: Bounds = Bounds {
        loss: 1e-6,
        dx: 2e-5,
        dw: 2e-5,
        state: 1e-6,
    };

    /// The naive path (materialised logits), which rounds the normalised
    /// inputs and, for 16-bit inputs, the logit gradient to the input
    /// type. Measured on the simulator: f32 about 2e-8 / 1e-6; bf16 about
    /// 6e-4 / 6e-3; f16 about 3e-4 / 1e-3. Bounds leave room yet catch a
    /// wrong GEMM layout (errors of order 1).
    /// The flash family's default single-rounded gradient products: the
    /// softmax gradient rounded once to the input type (relative 2^-9 for
    /// bf16, 2^-12 for f16) on dX and dW; the loss and the state as in f32.
    /// Measured up to 2.3e-3 (bf16) and 3e-4 (f16).
    pub fn flash_single(dtype: Dtype) -> Bounds {
        match dtype {
            Dtype::BF16 => Bounds {
                dx: 4e-3,
                dw: 4e-3,
                ..Bounds::F32
            },
            Dtype::F16 => Bounds {
                dx: 1e-3,
                dw: 1e-3,
                ..Bounds::F32
            },
            _ => Bounds::F32,
        }
    }

    pub fn naive(dtype: Dtype) -> Bounds {
        let (loss, grad) = match dtype {
            Dtype::F32 => (1e-5, 1e-4),
            Dtype::BF16 => (5e-3, 3e-2),
            _ => (3e-3, 5e-3),
        };
        Bounds {
            loss,
            dx: grad,
            dw: grad,
            state: 1e-6,
        }
    }

    /// The class-chunked path. Measured on the simulator: f32 below 8e-8 /
    /// 5e-7; bf16 below 1.5e-3 / 9e-3; f16 below 1.1e-4 / 1.4e-3. f32 is
    /// held ten times tighter than the naive path, 16-bit inputs at the
    /// naive path's: they leave room for the rounding of the normalised
    /// inputs and of the 16-bit logit gradient, yet catch a wrong chunk
    /// offset, beta or merge (errors of order 1e-1 and more).
    pub fn chunked(dtype: Dtype) -> Bounds {
        match dtype {
            Dtype::F32 => Bounds {
                loss: 1e-6,
                dx: 1e-5,
                dw: 1e-5,
                state: 1e-6,
            },
            other => Bounds::naive(other),
        }
    }
}

/// Errors of one kernel step against the reference.
#[derive(Debug, Clone, Copy)]
pub struct StepErrors {
    pub loss: f64,
    pub dx: f64,
    pub dw: f64,
    pub state: f64,
}

impl StepErrors {
    pub fn new(
        loss: f64,
        dx: &[f32],
        dw: &[f32],
        state: EmaState,
        r: &adaface::StepOutput<f64>,
    ) -> Self {
        let sa = r.state_after();
        StepErrors {
            loss: rel(loss, r.loss),
            dx: rel_norm(&widen32(dx), &r.grad_features),
            dw: rel_norm(&widen32(dw), &r.grad_weight),
            // CurricularFace's t is a mean of cosines (near 0 at first): its
            // absolute error.
            state: rel(state.batch_mean, sa.batch_mean)
                .max(rel(state.batch_std, sa.batch_std))
                .max((state.curricular_t - sa.curricular_t).abs()),
        }
    }

    /// Every error strictly below its bound.
    pub fn assert_within(&self, b: Bounds, what: &str) {
        assert!(self.loss < b.loss, "{what}: loss rel err {:e}", self.loss);
        assert!(self.dx < b.dx, "{what}: dX rel err {:e}", self.dx);
        assert!(self.dw < b.dw, "{what}: dW rel err {:e}", self.dw);
        assert!(
            self.state < b.state,
            "{what}: EMA state rel err {:e}",
            self.state
        );
    }

    /// [`assert_within`](Self::assert_within) the f32 bounds.
    pub fn assert_f32_accuracy(&self, what: &str) {
        self.assert_within(Bounds::F32, what);
    }
}

/// The fast CPU backend and the CPU baselines against the f64 reference:
/// f32 arithmetic with a polynomial `exp` (under 3e-7 relative error).
pub const CPU_BOUNDS: Bounds = Bounds {
    loss: 1e-5,
    dx: 1e-4,
    dw: 1e-4,
    state: 1e-5,
};

/// The kernels' process-wide instruction counters ([`mma_count`],
/// [`wgmma_count`]) see every simulated launch: a test that counts, and
/// every other test of its binary that launches kernels, holds this lock
/// so that each test still reports on its own. A test that failed while
/// holding it does not block the others.
pub fn counter_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The label types the kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelType {
    I64,
    I32,
}

/// Element types the CUDA backend can upload (all the kernels' types).
#[cfg(feature = "cuda")]
pub trait DeviceElement: cudarc::driver::DeviceRepr {}
/// Element types the CUDA backend can upload (all the kernels' types).
#[cfg(not(feature = "cuda"))]
pub trait DeviceElement {}
impl DeviceElement for f32 {}
impl DeviceElement for half::bf16 {}
impl DeviceElement for half::f16 {}

/// An element type every backend takes (`f32`, `bf16`, `f16`).
pub trait StepElement: KernelElement + CpuElement + DeviceElement {}
impl<E: KernelElement + CpuElement + DeviceElement> StepElement for E {}

/// A label type every backend takes (`i64`, `i32`).
pub trait StepLabel: KernelLabel + Label + TryFrom<i64> {}
impl<L: KernelLabel + Label + TryFrom<i64>> StepLabel for L {}

/// Every backend that computes a training step, behind one step function,
/// so that one check runs on all of them ([`test_backend!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `reference::forward_backward` in f32 on the rounded inputs.
    Reference,
    /// The fast CPU backend (small tiles, three partitions, so that small
    /// shapes cross every boundary).
    Cpu,
    /// The materialising CPU baseline (`naive::cpu`).
    NaiveCpu,
    /// The fused kernels on the simulator, flash family off (tiled only).
    SimTiled,
    /// The fused kernels on the simulator with the default plan (the flash
    /// family for bf16 / f16 where it applies, single-rounded gradient
    /// products).
    SimFlash,
    /// [`SimFlash`](Self::SimFlash) in the exact mode (hi + lo gradient
    /// products, [`exact_limits`]).
    SimFlashExact,
    /// The class-chunked cuBLAS path on the simulator, chunks of this many
    /// classes.
    SimChunked(usize),
    /// The naive cuBLAS baseline on the simulator.
    SimNaive,
    /// The fused kernels on GPU 0 (the host-slice interface: `i64` labels
    /// whatever the label type asked for). No GPU is an error, never a pass.
    Cuda,
}

impl Backend {
    /// The bounds of this backend's step at `dtype` against the f64
    /// reference on the same rounded inputs.
    pub fn bounds(self, dtype: Dtype) -> Bounds {
        match self {
            Backend::Reference | Backend::Cpu | Backend::NaiveCpu => CPU_BOUNDS,
            Backend::SimTiled | Backend::SimFlashExact => Bounds::F32,
            Backend::SimFlash | Backend::Cuda => Bounds::flash_single(dtype),
            Backend::SimChunked(_) => Bounds::chunked(dtype),
            Backend::SimNaive => Bounds::naive(dtype),
        }
    }

    /// One training step from `state` on the inputs rounded to `dtype`,
    /// labels as `labels`.
    pub fn step(
        self,
        dtype: Dtype,
        labels: LabelType,
        cfg: &AdaFaceConfig,
        state: EmaState,
        inp: &Inputs,
    ) -> Result<StepOut, Error> {
        use half::{bf16, f16};
        match (dtype, labels) {
            (Dtype::F32, LabelType::I64) => self.step_as::<f32, i64>(cfg, state, inp),
            (Dtype::F32, LabelType::I32) => self.step_as::<f32, i32>(cfg, state, inp),
            (Dtype::BF16, LabelType::I64) => self.step_as::<bf16, i64>(cfg, state, inp),
            (Dtype::BF16, LabelType::I32) => self.step_as::<bf16, i32>(cfg, state, inp),
            (Dtype::F16, LabelType::I64) => self.step_as::<f16, i64>(cfg, state, inp),
            (Dtype::F16, LabelType::I32) => self.step_as::<f16, i32>(cfg, state, inp),
            (other, _) => panic!("no backend step for {other}"),
        }
    }

    /// The step-and-compare helper: one step from the config's initial
    /// state (a failure is a test failure), its errors against the f64
    /// reference on the same rounded inputs, printed, and asserted within
    /// this backend's [`bounds`](Self::bounds). Returns the errors.
    pub fn check(
        self,
        dtype: Dtype,
        labels: LabelType,
        cfg: &AdaFaceConfig,
        inp: &Inputs,
        what: &str,
    ) -> StepErrors {
        let state = cfg.initial_state();
        let what = format!("{self:?} {what} {dtype} {labels:?}");
        let step = self
            .step(dtype, labels, cfg, state, inp)
            .unwrap_or_else(|e| panic!("{what}: step failed: {e}"));
        let e = step.errors(&reference_for(dtype, cfg, &state, inp));
        println!("{what}: {e:?}");
        e.assert_within(self.bounds(dtype), &what);
        e
    }

    /// [`step`](Self::step) with the types spelled out.
    pub fn step_as<E, L>(
        self,
        cfg: &AdaFaceConfig,
        state: EmaState,
        inp: &Inputs,
    ) -> Result<StepOut, Error>
    where
        E: StepElement,
        L: StepLabel,
    {
        let shape = inp.shape;
        let x = round::<E>(&inp.x);
        let w = round::<E>(&inp.w);
        let labels: Vec<L> = labels_as(&inp.labels);
        let mut dx = vec![f32::NAN; x.len()];
        let mut dw = vec![f32::NAN; w.len()];
        let from_output = |o: adaface::StepOutput<f32>| StepOut {
            loss: o.loss as f64,
            state: o.state_after(),
            dx: o.grad_features,
            dw: o.grad_weight,
        };
        let sim = |limits: PlanLimits| -> Result<StepOut, Error> {
            let mut sim = SimAdaFace::new(*cfg).with_limits(limits);
            sim.set_state(state)?;
            sim_step::<E, L>(&mut sim, inp)
        };
        match self {
            Backend::Reference => {
                let to32 = |v: &[E]| -> Vec<f32> { v.iter().map(|e| e.to_f64() as f32).collect() };
                reference::forward_backward::<f32, L>(
                    cfg,
                    &state,
                    shape,
                    &to32(&x),
                    &to32(&w),
                    &labels,
                )
                .map(from_output)
            }
            Backend::Cpu => {
                let options = adaface::cpu::CpuOptions {
                    class_tile: 16,
                    row_tile: 5,
                    partitions: 3,
                };
                let s = adaface::cpu::forward_backward(
                    cfg, &state, &options, shape, &x, &w, &labels, &mut dx, &mut dw,
                )?;
                Ok(StepOut {
                    loss: s.loss as f64,
                    dx,
                    dw,
                    state: s.stats.state_after,
                })
            }
            Backend::NaiveCpu => {
                adaface::naive::cpu::forward_backward(cfg, &state, shape, &x, &w, &labels)
                    .map(from_output)
            }
            Backend::SimTiled => sim(PlanLimits {
                flash: false,
                ..PlanLimits::default()
            }),
            Backend::SimFlash => sim(PlanLimits::default()),
            Backend::SimFlashExact => sim(exact_limits()),
            Backend::SimChunked(chunk) => {
                let s = adaface::chunked::sim::forward_backward(
                    cfg, state, shape, chunk, &x, &w, &labels, &mut dx, &mut dw,
                )?;
                Ok(StepOut {
                    loss: s.loss,
                    dx,
                    dw,
                    state: s.state_after,
                })
            }
            Backend::SimNaive => {
                let s = adaface::naive::sim::forward_backward(
                    cfg, state, shape, &x, &w, &labels, &mut dx, &mut dw,
                )?;
                Ok(StepOut {
                    loss: s.loss,
                    dx,
                    dw,
                    state: s.state_after,
                })
            }
            Backend::Cuda => cuda_step::<E>(cfg, state, inp, &x, &w, dx, dw),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_step<E: KernelElement + DeviceElement>(
    cfg: &AdaFaceConfig,
    state: EmaState,
    inp: &Inputs,
    x: &[E],
    w: &[E],
    mut dx: Vec<f32>,
    mut dw: Vec<f32>,
) -> Result<StepOut, Error> {
    use adaface::AdaFaceBackend;
    let stream = adaface::cuda::default_stream(0)?;
    let mut loss = adaface::cuda::CudaAdaFace::new(stream, *cfg)?;
    AdaFaceBackend::<E>::set_state(&mut loss, state)?;
    let s = AdaFaceBackend::<E>::forward_backward(
        &mut loss,
        inp.shape,
        x,
        w,
        &inp.labels,
        &mut dx,
        &mut dw,
    )?;
    Ok(StepOut {
        loss: s.loss,
        dx,
        dw,
        state: s.state_after,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_step<E: KernelElement>(
    _cfg: &AdaFaceConfig,
    _state: EmaState,
    _inp: &Inputs,
    _x: &[E],
    _w: &[E],
    _dx: Vec<f32>,
    _dw: Vec<f32>,
) -> Result<StepOut, Error> {
    Err(Error::Backend {
        message: "built without the `cuda` feature".into(),
    })
}

/// Runs one check, a function of a [`Backend`], as one `#[test]` per
/// backend, in a module named after the check: `check::cpu`,
/// `check::sim_flash`... The CUDA test is `#[ignore]`d (a plain `cargo
/// test` lists it as ignored; scripts/gpu_check.sh runs it with
/// `--include-ignored`, where no GPU is a failure).
///
/// `test_backend!(check);` runs it on every backend;
/// `test_backend!(check: cpu => Backend::Cpu, sim => Backend::SimTiled);`
/// on the ones listed (attributes such as `#[ignore]` may precede a name).
macro_rules! test_backend {
    ($check:ident) => {
        test_backend!($check:
            reference => Backend::Reference,
            cpu => Backend::Cpu,
            naive_cpu => Backend::NaiveCpu,
            sim_tiled => Backend::SimTiled,
            sim_flash => Backend::SimFlash,
            sim_flash_exact => Backend::SimFlashExact,
            sim_chunked => Backend::SimChunked(32),
            sim_naive => Backend::SimNaive,
            #[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
            cuda => Backend::Cuda,
        );
    };
    ($check:ident: $($(#[$attr:meta])* $name:ident => $backend:expr),+ $(,)?) => {
        mod $check {
            use super::*;
            $(
                #[test]
                $(#[$attr])*
                fn $name() {
                    super::$check($backend)
                }
            )+
        }
    };
}
pub(crate) use test_backend;

// ---------------------------------------------------------------------------
// The class-sharded tests (reference, CPU, simulator, GPU).
// ---------------------------------------------------------------------------

/// A config whose EMA moves visibly from step to step (`t_alpha = 0.3`),
/// so that a state carried wrongly between steps shows.
pub fn fast_ema_cfg() -> AdaFaceConfig {
    AdaFaceConfig::builder().t_alpha(0.3).build().unwrap()
}

/// The shard layouts of C = 23 classes tested: K = 1..4, uneven, with
/// one-class shards.
pub fn shard_layouts() -> Vec<Vec<usize>> {
    vec![vec![23], vec![5, 18], vec![1, 10, 12], vec![7, 1, 9, 6]]
}

/// Features with norms spread over 0.5..30 (so margin scalers differ) and
/// weights; labels hit every shard boundary, avoid the classes of shard
/// `skip` (so that a shard holds no label) and are otherwise random.
pub fn shard_problem(
    seed: u64,
    shape: Shape,
    specs: &[adaface::shard::ShardSpec],
    skip: Option<usize>,
) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    let Shape {
        batch: b,
        dim: d,
        classes: c,
    } = shape;
    let mut rng = Rng::new(seed);
    let mut x = rng.normals(b * d, 1.0);
    for row in x.chunks_mut(d) {
        let scale = 0.5 + 30.0 * rng.uniform();
        row.iter_mut().for_each(|v| *v *= scale);
    }
    let w = rng.normals(c * d, 0.3);
    let skipped = |l: usize| skip.is_some_and(|k| specs[k].local(l as i64).is_some());
    let mut boundary: Vec<usize> = specs
        .iter()
        .flat_map(|s| [s.offset, s.offset + s.classes - 1])
        .filter(|&l| !skipped(l))
        .collect();
    boundary.dedup();
    let labels = (0..b)
        .map(|i| {
            if i < boundary.len() {
                boundary[i] as i64
            } else {
                loop {
                    let l = rng.below(c);
                    if !skipped(l) {
                        break l as i64;
                    }
                }
            }
        })
        .collect();
    (x, w, labels)
}

/// Runs `f(rank, comm)` on one thread per shard, over the in-process
/// communicator; the results in rank order.
pub fn on_shards<R: Send>(
    k: usize,
    f: impl Fn(usize, &adaface::shard::ThreadComm) -> R + Sync,
) -> Vec<R> {
    let comms = adaface::shard::ThreadComm::group(k);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = comms
            .iter()
            .enumerate()
            .map(|(r, c)| s.spawn(move || f(r, c)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Any real type's values as `f64`.
pub fn f64s<T: adaface::Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// `f64` values as any real type.
pub fn cast<T: adaface::Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}
