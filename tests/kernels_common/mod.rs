//! Helpers of the kernel tests (simulator and GPU): seeded inputs, the f64
//! reference on the same rounded inputs, relative-norm errors.
#![allow(dead_code)]

// The seeded PRNG, relative-norm errors and golden-file lookup are shared
// with the other integration tests.
#[path = "../common/mod.rs"]
mod base;
#[allow(unused_imports)]
pub use base::{assert_matches_golden, golden_files, read_golden, rel, rel_norm, Rng};

use adaface::launch::KernelElement;
use adaface::{reference, AdaFaceConfig, EmaState, Shape};

/// One step's inputs in f64 (rounded to the kernel's type by the caller).
#[derive(Clone, Debug)]
pub struct Inputs {
    pub shape: Shape,
    pub x: Vec<f64>,
    pub w: Vec<f64>,
    pub labels: Vec<i64>,
}

/// Random inputs: feature rows with norms spread over roughly 5..80 (so
/// the margin scaler takes many values, clipped ones included), normal
/// class weights, uniform labels.
pub fn random_inputs(seed: u64, b: usize, d: usize, c: usize) -> Inputs {
    let mut rng = Rng::new(seed);
    let mut x = Vec::with_capacity(b * d);
    for _ in 0..b {
        let norm = 20.0 * (0.7 * rng.normal()).exp();
        let scale = norm / (d as f64).sqrt();
        x.extend((0..d).map(|_| scale * rng.normal()));
    }
    let w = (0..c * d).map(|_| rng.normal()).collect();
    let labels = (0..b).map(|_| rng.below(c) as i64).collect();
    Inputs {
        shape: Shape::new(b, d, c),
        x,
        w,
        labels,
    }
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
            state: rel(state.batch_mean, sa.batch_mean).max(rel(state.batch_std, sa.batch_std)),
        }
    }

    /// f32 accumulation against the f64 oracle on the same inputs. Measured
    /// errors are about 1e-7 (loss) and 2e-6 (gradients); the bounds leave
    /// a margin of ten yet catch any wrong term.
    pub fn assert_f32_accuracy(&self, what: &str) {
        assert!(self.loss < 1e-6, "{what}: loss rel err {:e}", self.loss);
        assert!(self.dx < 2e-5, "{what}: dX rel err {:e}", self.dx);
        assert!(self.dw < 2e-5, "{what}: dW rel err {:e}", self.dw);
        assert!(
            self.state < 1e-6,
            "{what}: EMA state rel err {:e}",
            self.state
        );
    }
}

/// `n` values in [-1.7, 1.7) (unit variance), generated in parallel from a
/// hash of the index: fast enough for weights of billions of elements.
pub fn par_values<E: KernelElement>(seed: u64, n: usize) -> Vec<E> {
    use rayon::prelude::*;
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut r = Rng::new(seed.wrapping_mul(0x1000_0000_01B3) ^ i as u64);
            E::from_f64((r.uniform() * 2.0 - 1.0) * 3f64.sqrt())
        })
        .collect()
}
