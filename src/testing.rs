//! Seeded random inputs for the crate's tests, examples and benchmarks.
//!
//! One generator ([`Rng`], SplitMix64 with Box-Muller normals) and the input
//! generators built on it ([`Inputs`]), so that every check and every
//! measurement draws reproducible data from one stream definition: a seed
//! names the same inputs in a test, in the `bench` example and in a bug
//! report. Not for cryptography, and not meant as training data.
//!
//! ```
//! use adaface::testing::{Inputs, Rng};
//! use adaface::Shape;
//!
//! let mut rng = Rng::new(7);
//! let u = rng.uniform();
//! assert!((0.0..1.0).contains(&u));
//! assert_eq!(Rng::new(7).next_u64(), Rng::new(7).next_u64());
//!
//! let inp = Inputs::spread_norms(1, Shape::new(4, 8, 10));
//! assert_eq!((inp.x.len(), inp.w.len(), inp.labels.len()), (32, 80, 4));
//! assert!(inp.labels.iter().all(|&l| (0..10).contains(&l)));
//! ```

use crate::shape::Shape;

/// The SplitMix64 increment (the golden ratio in 64 bits).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea and Flood 2014): a tiny, fast, seeded generator
/// whose every seed, zero included, gives a full-period stream, so a test
/// can take any number as its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The stream of `seed`. The seed is mixed with the increment first, so
    /// that small seeds (0, 1, 2...) do not start from nearby states.
    pub const fn new(seed: u64) -> Self {
        Rng {
            state: seed ^ GOLDEN_GAMMA,
        }
    }

    /// The stream that starts from the raw generator `state`, unmixed, for
    /// reproducing a stream recorded as a state (`Rng::from_state(s ^
    /// 0x9E37_79B9_7F4A_7C15)` is `Rng::new(s)`).
    pub const fn from_state(state: u64) -> Self {
        Rng { state }
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, on the 2^-53 grid (every value exact in `f64`).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)` as `f32`, from 24 bits (exact in `f32` before
    /// the affine map), for kernels fed `f32` directly.
    pub fn uniform_f32(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// A standard normal (Box-Muller, cosine branch: one value per two
    /// uniforms, so the stream has no hidden cached state).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// `n` normals of standard deviation `scale`.
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.normal()).collect()
    }

    /// [`normals`](Self::normals) rounded to `f32` (for APIs that take
    /// `f32` tensors).
    pub fn normals_f32(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (scale * self.normal()) as f32).collect()
    }

    /// Uniform in `0..n` (modulo reduction: the bias, below `n / 2^64`, is
    /// irrelevant for test inputs); `0` when `n` is `0`, so an empty range
    /// cannot panic.
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 => 0,
            n => (self.next_u64() % n as u64) as usize,
        }
    }

    /// `b` labels uniform in `0..c`, as the `i64` class indices the
    /// backends take (all `0` when `c` is `0`).
    pub fn labels(&mut self, b: usize, c: usize) -> Vec<i64> {
        (0..b).map(|_| self.below(c) as i64).collect()
    }
}

/// One step's inputs in `f64` (a caller rounds them to the element type
/// under test), with `i64` labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// `B`, `D`, `C`.
    pub shape: Shape,
    /// Features, `B x D` row-major.
    pub x: Vec<f64>,
    /// Class weights, `C x D` row-major.
    pub w: Vec<f64>,
    /// Class index per row, in `0..C`.
    pub labels: Vec<i64>,
}

/// How [`Inputs::leaning`] sets the norm of each feature row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowNorms {
    /// Each row as drawn, times this factor: norms about
    /// `factor * sqrt(D * (1 + pull^2))`.
    Scaled(f64),
    /// Each row rescaled to a norm uniform in `[lo, hi)`.
    Between(f64, f64),
}

impl Inputs {
    /// Feature rows with norms log-normally spread over roughly 5..80
    /// (median 20, the EMA's starting mean), so that the AdaFace margin
    /// scaler takes many values, clipped ones included; standard normal
    /// class weights; uniform labels. Every backend is checked on these.
    pub fn spread_norms(seed: u64, shape: Shape) -> Self {
        let Shape {
            batch: b,
            dim: d,
            classes: c,
        } = shape;
        let mut rng = Rng::new(seed);
        let mut x = Vec::with_capacity(b * d);
        for _ in 0..b {
            let norm = 20.0 * (0.7 * rng.normal()).exp();
            let scale = norm / (d.max(1) as f64).sqrt();
            x.extend((0..d).map(|_| scale * rng.normal()));
        }
        let w = rng.normals(c * d, 1.0);
        let labels = rng.labels(b, c);
        Inputs {
            shape,
            x,
            w,
            labels,
        }
    }

    /// Feature rows that lean towards their class's weight row (row `i` is
    /// a normal vector plus `pull_i * w[y_i]`, `pull_i` uniform in
    /// `[0.2, 1.7)`), so that the target cosines spread over `(0, 1)` and
    /// the loss is not flat; norms as `norms` says. For checks of the
    /// margin formulas, which need targets away from the orthogonal.
    pub fn leaning(seed: u64, shape: Shape, norms: RowNorms) -> Self {
        let Shape {
            batch: b,
            dim: d,
            classes: c,
        } = shape;
        let mut rng = Rng::new(seed);
        let w = rng.normals(c * d, 1.0);
        let labels = rng.labels(b, c);
        let mut x = Vec::with_capacity(b * d);
        for &y in &labels {
            let class = &w[(y as usize * d).min(w.len())..][..d.min(w.len())];
            let pull = 0.2 + 1.5 * rng.uniform();
            let row: Vec<f64> = (0..d)
                .map(|k| rng.normal() + pull * class.get(k).copied().unwrap_or(0.0))
                .collect();
            let factor = match norms {
                RowNorms::Scaled(f) => f,
                RowNorms::Between(lo, hi) => {
                    let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                    let target = lo + (hi - lo) * rng.uniform();
                    if n > 0.0 {
                        target / n
                    } else {
                        0.0
                    }
                }
            };
            x.extend(row.iter().map(|v| v * factor));
        }
        Inputs {
            shape,
            x,
            w,
            labels,
        }
    }

    /// The labels converted to another label type (`i32`, `u32`); `None`
    /// when one does not fit.
    pub fn labels_as<L: TryFrom<i64>>(&self) -> Option<Vec<L>> {
        self.labels.iter().map(|&l| L::try_from(l).ok()).collect()
    }
}

/// Value `i` of an indexed stream: the first uniform of the stream seeded
/// from `seed` and `i`, so that a large tensor can be filled in parallel in
/// any order and still be reproducible.
pub fn indexed_uniform(seed: u64, i: u64) -> f64 {
    Rng::new(seed.wrapping_mul(0x1000_0000_01B3) ^ i).uniform()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_splitmix64() {
        // First outputs of SplitMix64 from state 0 (the published reference
        // values of the algorithm).
        let mut r = Rng::from_state(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(Rng::new(5), Rng::from_state(5 ^ GOLDEN_GAMMA));
    }

    #[test]
    fn draws_stay_in_range() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!((0.0..1.0).contains(&r.uniform()));
            assert!((-2.0..3.0).contains(&r.uniform_f32(-2.0, 3.0)));
            assert!(r.below(7) < 7);
            assert!(r.normal().is_finite());
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.labels(3, 0), vec![0, 0, 0]);
    }

    #[test]
    fn normals_have_unit_variance() {
        let v = Rng::new(2).normals(20_000, 1.0);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn leaning_rows_point_towards_their_class() {
        let shape = Shape::new(16, 32, 5);
        let inp = Inputs::leaning(3, shape, RowNorms::Between(10.0, 20.0));
        for (i, &y) in inp.labels.iter().enumerate() {
            let x = &inp.x[i * 32..][..32];
            let w = &inp.w[y as usize * 32..][..32];
            let n = x.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((10.0..20.0).contains(&n), "row {i} norm {n}");
            let dot: f64 = x.iter().zip(w).map(|(a, b)| a * b).sum();
            assert!(dot > 0.0, "row {i} leans away");
        }
        // Degenerate shapes give empty or zero inputs, not a panic.
        let empty = Inputs::leaning(3, Shape::new(2, 0, 0), RowNorms::Scaled(1.0));
        assert!(empty.x.is_empty() && empty.w.is_empty());
        let z = Inputs::spread_norms(3, Shape::new(2, 3, 0));
        assert_eq!(z.labels, vec![0, 0]);
    }
}
