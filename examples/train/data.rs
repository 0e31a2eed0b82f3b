//! A synthetic identity data set with controlled quality degradation.
//!
//! Each identity is a prototype signal in the input space. A sample is its
//! prototype with identity-independent nuisance (a random mix of a few
//! shared "pose" directions), then degraded by three corruptions whose
//! strengths follow from the sample's quality `q`:
//!
//! * blur-like: mixing with a low-passed copy (neighbour averaging),
//! * occlusion-like: a random contiguous block set to zero,
//! * noise-like: additive Gaussian noise.
//!
//! `q` is split at random between the three: corruption `k` keeps a
//! fraction `q_k = q^(w_k)` (weights `w` uniform on the simplex) and has
//! severity `1 - q_k`, so `q` is the product of what each one leaves.
//! Last, every sample is scaled to a random RMS in [0.9, 1.1], so that its
//! norm carries no information about its quality: a model whose feature
//! norm tracks quality has learned it.

/// SplitMix64 with Box-Muller normals: small, seeded, reproducible.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// Severities in [0, 1] of the three corruptions of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Corruption {
    pub blur: f64,
    pub occlusion: f64,
    pub noise: f64,
}

impl Corruption {
    /// The quality these severities leave: the product of the kept fractions.
    #[cfg(test)]
    pub fn quality(&self) -> f64 {
        (1.0 - self.blur) * (1.0 - self.occlusion) * (1.0 - self.noise)
    }

    /// A random split of quality `q` between the three corruptions.
    pub fn for_quality(q: f64, rng: &mut Rng) -> Corruption {
        let e: Vec<f64> = (0..3).map(|_| -rng.uniform().ln()).collect();
        let total: f64 = e.iter().sum();
        let sev = |w: f64| 1.0 - q.clamp(0.0, 1.0).powf(w / total);
        Corruption {
            blur: sev(e[0]),
            occlusion: sev(e[1]),
            noise: sev(e[2]),
        }
    }
}

/// Largest noise standard deviation, relative to the unit-RMS prototypes.
const NOISE_MAX: f64 = 1.5;
/// Largest occluded fraction of the input.
const OCCLUSION_MAX: f64 = 0.75;
/// Neighbour-averaging passes of the low-pass copy that blur mixes in.
const BLUR_PASSES: usize = 10;
/// Shared nuisance ("pose") directions and their coefficient scale.
const POSE_DIRS: usize = 6;
const POSE_SCALE: f64 = 0.25;

/// The identities of one data set and the generator of their samples.
pub struct Identities {
    pub dim: usize,
    prototypes: Vec<f64>,
    pose: Vec<f64>,
}

impl Identities {
    /// `count` identities in `dim` dimensions; `pose` is shared between
    /// data sets made with the same `pose_seed`, so unseen identities vary
    /// in the same ways as the training ones.
    pub fn new(count: usize, dim: usize, rng: &mut Rng, pose_seed: u64) -> Identities {
        // Identities differ only inside a shared subspace of `dim / 4`
        // dimensions (as faces fill a small part of pixel space), so a model
        // can learn which input directions carry identity and which only
        // carry noise.
        let mut srng = Rng::new(pose_seed ^ 0xA5A5);
        let k = (dim / 4).max(2);
        let basis: Vec<f64> = (0..k * dim).map(|_| srng.normal()).collect();
        let mut prototypes = vec![0.0; count * dim];
        for p in prototypes.chunks_mut(dim) {
            for b in basis.chunks(dim) {
                let c = rng.normal();
                p.iter_mut().zip(b).for_each(|(v, bv)| *v += c * bv);
            }
            let rms = (p.iter().map(|v| v * v).sum::<f64>() / dim as f64).sqrt();
            p.iter_mut().for_each(|v| *v /= rms);
        }
        let mut prng = Rng::new(pose_seed);
        let pose = (0..POSE_DIRS * dim).map(|_| prng.normal()).collect();
        Identities {
            dim,
            prototypes,
            pose,
        }
    }

    pub fn count(&self) -> usize {
        self.prototypes.len() / self.dim
    }

    /// One sample of identity `id` at quality `q`, written to `out`.
    pub fn sample(&self, id: usize, q: f64, rng: &mut Rng, out: &mut [f32]) -> Corruption {
        let d = self.dim;
        let mut x: Vec<f64> = self.prototypes[id * d..(id + 1) * d].to_vec();
        for k in 0..POSE_DIRS {
            let a = POSE_SCALE * rng.normal();
            for (v, p) in x.iter_mut().zip(&self.pose[k * d..(k + 1) * d]) {
                *v += a * p;
            }
        }
        let c = Corruption::for_quality(q, rng);
        blur(&mut x, c.blur);
        occlude(&mut x, c.occlusion, rng);
        for v in x.iter_mut() {
            *v += c.noise * NOISE_MAX * rng.normal();
        }
        // Contrast normalisation (as per-image standardisation does) to a
        // random gain: the raw input norm says nothing about quality.
        let gain = 0.9 + 0.2 * rng.uniform();
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / d as f64)
            .sqrt()
            .max(1e-12);
        for (o, v) in out.iter_mut().zip(&x) {
            *o = (gain * v / rms) as f32;
        }
        c
    }
}

/// `x <- (1 - s) x + s lowpass(x)`, the low-pass being repeated
/// `[1/4, 1/2, 1/4]` averaging with the edge values repeated.
pub fn blur(x: &mut [f64], s: f64) {
    if s <= 0.0 || x.len() < 2 {
        return;
    }
    let mut low = x.to_vec();
    let mut tmp = low.clone();
    let n = x.len();
    for _ in 0..BLUR_PASSES {
        for i in 0..n {
            let l = low[i.saturating_sub(1)];
            let r = low[(i + 1).min(n - 1)];
            tmp[i] = 0.25 * l + 0.5 * low[i] + 0.25 * r;
        }
        std::mem::swap(&mut low, &mut tmp);
    }
    for (v, l) in x.iter_mut().zip(&low) {
        *v = (1.0 - s) * *v + s * l;
    }
}

/// Zeroes a random contiguous block of `round(s * OCCLUSION_MAX * len)` values.
pub fn occlude(x: &mut [f64], s: f64, rng: &mut Rng) {
    let len = ((s * OCCLUSION_MAX * x.len() as f64).round() as usize).min(x.len());
    if len == 0 {
        return;
    }
    let start = rng.below(x.len() - len + 1);
    x[start..start + len].iter_mut().for_each(|v| *v = 0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_is_the_product_of_what_each_corruption_keeps() {
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let q = rng.uniform();
            let c = Corruption::for_quality(q, &mut rng);
            assert!((c.quality() - q).abs() < 1e-12);
            for s in [c.blur, c.occlusion, c.noise] {
                assert!((0.0..=1.0).contains(&s));
            }
        }
        let c = Corruption::for_quality(1.0, &mut rng);
        assert_eq!((c.blur, c.occlusion, c.noise), (0.0, 0.0, 0.0));
    }

    #[test]
    fn blur_keeps_constants_and_damps_alternation() {
        let mut flat = vec![2.0; 16];
        blur(&mut flat, 1.0);
        assert!(flat.iter().all(|v| (v - 2.0).abs() < 1e-12));
        // Away from the edges (which are repeated) the alternation is gone.
        let alternating = || -> Vec<f64> {
            (0..64)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect()
        };
        let mut alt = alternating();
        blur(&mut alt, 1.0);
        assert!(alt[16..48].iter().all(|v| v.abs() < 1e-9), "{alt:?}");
        // Half strength keeps half.
        let mut alt = alternating();
        blur(&mut alt, 0.5);
        assert!((alt[32] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn occlusion_zeroes_one_block_of_the_right_length() {
        let mut rng = Rng::new(5);
        let mut x = vec![1.0; 100];
        occlude(&mut x, 0.4, &mut rng);
        let zeros: Vec<usize> = (0..100).filter(|&i| x[i] == 0.0).collect();
        assert_eq!(zeros.len(), 30);
        assert_eq!(zeros[29] - zeros[0], 29, "one contiguous block");
    }

    #[test]
    fn low_quality_samples_are_further_from_their_prototype() {
        let mut rng = Rng::new(11);
        let ids = Identities::new(20, 96, &mut rng, 99);
        let mut dist = |q: f64| {
            let mut total = 0.0;
            let mut x = vec![0f32; 96];
            for k in 0..200 {
                let id = k % 20;
                ids.sample(id, q, &mut rng, &mut x);
                let p = &ids.prototypes[id * 96..(id + 1) * 96];
                total += x
                    .iter()
                    .zip(p)
                    .map(|(a, b)| (*a as f64 - b).powi(2))
                    .sum::<f64>();
            }
            total
        };
        let (hi, mid, lo) = (dist(0.95), dist(0.5), dist(0.1));
        assert!(hi < mid && mid < lo, "{hi} {mid} {lo}");
    }
}
