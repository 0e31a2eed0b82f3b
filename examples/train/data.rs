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
//!
//! The training set ([`TrainSet`]) is finite, as a face data set is, and
//! mixes high-quality samples, recognisable low-quality ones, and
//! *destroyed* low-quality ones: rendered exactly like a low-quality sample
//! but from a fresh prototype that belongs to no identity, so the label
//! they carry cannot be inferred from them (the unrecognisable images of
//! the AdaFace paper's figure 1). A model can only fit those by memorising.

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
    /// The identity subspace: `dim / 4` directions, each `dim` long.
    basis: Vec<f64>,
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
        let mut prototypes = Vec::with_capacity(count * dim);
        for _ in 0..count {
            prototypes.extend(prototype(&basis, dim, rng));
        }
        let mut prng = Rng::new(pose_seed);
        let pose = (0..POSE_DIRS * dim).map(|_| prng.normal()).collect();
        Identities {
            dim,
            prototypes,
            pose,
            basis,
        }
    }

    pub fn count(&self) -> usize {
        self.prototypes.len() / self.dim
    }

    /// One sample of identity `id` at quality `q`, written to `out`.
    pub fn sample(&self, id: usize, q: f64, rng: &mut Rng, out: &mut [f32]) -> Corruption {
        let d = self.dim;
        let x = self.prototypes[id * d..(id + 1) * d].to_vec();
        self.render(x, q, rng, out)
    }

    /// A sample at quality `q` whose identity is destroyed: rendered like
    /// any other, but from a fresh prototype of the identity subspace that
    /// belongs to no identity, so it says nothing about any label.
    pub fn sample_destroyed(&self, q: f64, rng: &mut Rng, out: &mut [f32]) -> Corruption {
        let x = prototype(&self.basis, self.dim, rng);
        self.render(x, q, rng, out)
    }

    /// Nuisance, corruption to quality `q` and contrast normalisation of
    /// the clean signal `x`.
    fn render(&self, mut x: Vec<f64>, q: f64, rng: &mut Rng, out: &mut [f32]) -> Corruption {
        let d = self.dim;
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

/// A random prototype: a normal mix of the `basis` directions, scaled to
/// unit RMS.
fn prototype(basis: &[f64], dim: usize, rng: &mut Rng) -> Vec<f64> {
    let mut p = vec![0.0; dim];
    for b in basis.chunks(dim) {
        let c = rng.normal();
        p.iter_mut().zip(b).for_each(|(v, bv)| *v += c * bv);
    }
    let rms = (p.iter().map(|v| v * v).sum::<f64>() / dim as f64)
        .sqrt()
        .max(1e-12);
    p.iter_mut().for_each(|v| *v /= rms);
    p
}

/// Quality range of the high-quality training and evaluation samples.
pub const HIGH_Q: (f64, f64) = (0.5, 1.0);
/// Quality range of the low-quality ones, recognisable or destroyed.
pub const LOW_Q: (f64, f64) = (0.05, 0.3);

/// The composition of a training set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// Share of the samples that are low quality (`q` in [`LOW_Q`]).
    pub low: f64,
    /// Share of the low-quality samples whose identity is destroyed.
    pub destroyed: f64,
}

/// What one training sample is (the discriminant indexes per-kind tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    High = 0,
    Low = 1,
    Destroyed = 2,
}

/// A finite training set: `n` rows of `ids.dim` values with their labels,
/// true qualities and kinds.
pub struct TrainSet {
    pub x: Vec<f32>,
    pub labels: Vec<u32>,
    pub quality: Vec<f64>,
    pub kind: Vec<Kind>,
}

impl TrainSet {
    /// `per_class` samples of each identity of `ids`, composed as `mix`
    /// says: exactly `round(low n)` low-quality samples, of which exactly
    /// `round(destroyed * low n)` destroyed, spread at random over the
    /// identities. A destroyed sample keeps its label but is rendered from
    /// a prototype of nobody.
    pub fn new(ids: &Identities, per_class: usize, mix: Mix, rng: &mut Rng) -> TrainSet {
        let d = ids.dim;
        let n = ids.count() * per_class;
        let n_low = ((mix.low.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
        let n_destroyed =
            ((mix.destroyed.clamp(0.0, 1.0) * n_low as f64).round() as usize).min(n_low);
        // Kinds in a random order (Fisher-Yates).
        let mut kind: Vec<Kind> = (0..n)
            .map(|i| {
                if i < n_destroyed {
                    Kind::Destroyed
                } else if i < n_low {
                    Kind::Low
                } else {
                    Kind::High
                }
            })
            .collect();
        for i in (1..n).rev() {
            kind.swap(i, rng.below(i + 1));
        }
        let mut set = TrainSet {
            x: vec![0f32; n * d],
            labels: Vec::with_capacity(n),
            quality: Vec::with_capacity(n),
            kind,
        };
        for (i, row) in set.x.chunks_mut(d).enumerate() {
            let id = i % ids.count();
            let (lo, hi) = if set.kind[i] == Kind::High {
                HIGH_Q
            } else {
                LOW_Q
            };
            let q = lo + (hi - lo) * rng.uniform();
            if set.kind[i] == Kind::Destroyed {
                ids.sample_destroyed(q, rng, row);
            } else {
                ids.sample(id, q, rng, row);
            }
            set.labels.push(id as u32);
            set.quality.push(q);
        }
        set
    }

    pub fn len(&self) -> usize {
        self.labels.len()
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

    fn cos(a: &[f32], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    #[test]
    fn the_mix_is_honoured_exactly() {
        let mut rng = Rng::new(4);
        let ids = Identities::new(10, 32, &mut rng, 7);
        for (low, destroyed) in [(0.4, 0.5), (0.0, 0.5), (1.0, 1.0), (0.3, 0.0)] {
            let set = TrainSet::new(&ids, 20, Mix { low, destroyed }, &mut rng);
            assert_eq!(set.len(), 200);
            let count = |k: Kind| set.kind.iter().filter(|&&v| v == k).count();
            let n_low = (low * 200.0_f64).round() as usize;
            let n_destroyed = (destroyed * n_low as f64).round() as usize;
            assert_eq!(count(Kind::Destroyed), n_destroyed, "{low} {destroyed}");
            assert_eq!(count(Kind::Low), n_low - n_destroyed);
            for (q, k) in set.quality.iter().zip(&set.kind) {
                let (lo, hi) = if *k == Kind::High { HIGH_Q } else { LOW_Q };
                assert!(*q >= lo && *q <= hi, "{q} {k:?}");
            }
            // Every identity keeps its share of labels.
            for id in 0..10u32 {
                assert_eq!(set.labels.iter().filter(|&&l| l == id).count(), 20);
            }
        }
    }

    /// A destroyed sample is no closer to its label's prototype than to any
    /// other identity's; a recognisable sample of the same quality is.
    #[test]
    fn destroyed_samples_carry_no_identity_signal() {
        let mut rng = Rng::new(9);
        let (n_ids, d) = (20, 96);
        let ids = Identities::new(n_ids, d, &mut rng, 5);
        let set = TrainSet::new(
            &ids,
            100,
            Mix {
                low: 1.0,
                destroyed: 0.5,
            },
            &mut rng,
        );
        // Mean cosine with the own prototype minus the mean with the others.
        let (mut own, mut other) = ([0.0; 2], [0.0; 2]);
        let mut count = [0usize; 2];
        for (i, row) in set.x.chunks(d).enumerate() {
            let k = usize::from(set.kind[i] == Kind::Destroyed);
            let y = set.labels[i] as usize;
            for id in 0..n_ids {
                let c = cos(row, &ids.prototypes[id * d..(id + 1) * d]);
                if id == y {
                    own[k] += c;
                } else {
                    other[k] += c / (n_ids - 1) as f64;
                }
            }
            count[k] += 1;
        }
        let gap = |k: usize| (own[k] - other[k]) / count[k] as f64;
        assert!(gap(0) > 0.15, "recognisable low quality: gap {}", gap(0));
        // 1000 destroyed samples: the standard error of the gap is ~0.01.
        assert!(gap(1).abs() < 0.04, "destroyed: gap {}", gap(1));
    }
}
