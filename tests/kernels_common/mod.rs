//! Helpers of the kernel tests (simulator and GPU): seeded inputs, the f64
//! reference on the same rounded inputs, relative-norm errors.
#![allow(dead_code)]

use std::path::PathBuf;

use adaface::launch::KernelElement;
use adaface::{reference, AdaFaceConfig, EmaState, Shape};

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

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

/// `||a - b|| / ||b||`.
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

pub fn rel(a: f64, b: f64) -> f64 {
    rel_norm(&[a], &[b])
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

/// `../shared/golden` beside the crate, or `$ADAFACE_GOLDEN_DIR`.
pub fn golden_files() -> Vec<PathBuf> {
    let dir = match std::env::var_os("ADAFACE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("golden dir {} unreadable: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", dir.display());
    files
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
