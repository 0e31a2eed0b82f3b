//! Helpers shared by the integration tests: a seeded PRNG, relative-norm
//! errors and the golden files' location.
#![allow(dead_code)]

use std::path::PathBuf;

/// SplitMix64: tiny, seeded, good enough for test inputs.
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
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.normal()).collect()
    }
    /// `normals` rounded to `f32` (candle tensors).
    pub fn normals_f32(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (scale * self.normal()) as f32).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn labels(&mut self, b: usize, c: usize) -> Vec<i64> {
        (0..b).map(|_| self.below(c) as i64).collect()
    }
}

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
