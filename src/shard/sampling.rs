//! Partial FC sampling of the classes of a shard.

use super::ShardSpec;
use crate::element::Label;
use crate::error::{Error, Result};
use crate::shape::check_labels;

/// Partial FC (insightface's `PartialFC`): each step, each shard keeps
/// every class that is a label of the global batch (the positives) and a
/// random subset of its other classes, `max(floor(sample_rate * C_k),
/// positives, 1)` classes in all. The softmax, the loss and both gradients
/// then run over the kept classes only; `dW` is exactly zero on the others.
///
/// The subset is deterministic given `(seed, step, shard offset)`: the same
/// on a rerun, different from step to step and from shard to shard.
/// `sample_rate = 1` keeps every class and equals the unsampled step bit for
/// bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartialFc {
    sample_rate: f64,
    seed: u64,
}

impl PartialFc {
    /// Rejects a `sample_rate` outside `(0, 1]`.
    pub fn new(sample_rate: f64, seed: u64) -> Result<Self> {
        if !(sample_rate > 0.0 && sample_rate <= 1.0) {
            return Err(Error::InvalidConfig {
                parameter: "sample_rate",
                value: sample_rate,
                requirement: "in (0, 1]",
            });
        }
        Ok(PartialFc { sample_rate, seed })
    }

    /// The fraction of each shard's classes kept (at least).
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The number of classes kept of a shard of `classes` classes when
    /// `positives` of them are labels of the batch.
    pub fn kept(&self, classes: usize, positives: usize) -> usize {
        let target = (self.sample_rate * classes as f64).floor() as usize;
        target.max(positives).clamp(1, classes)
    }

    /// The sorted shard-local indices of the classes kept at `step`; every
    /// label of `labels` (global, in `0..spec.total_classes`) that falls in
    /// the shard is among them.
    pub fn sample<L: Label>(
        &self,
        spec: &ShardSpec,
        labels: &[L],
        step: u64,
    ) -> Result<Vec<usize>> {
        check_labels(labels, spec.total_classes)?;
        let c = spec.classes;
        let mut positive = vec![false; c];
        for &l in labels {
            if let Some(j) = spec.local(l.to_i64()) {
                positive[j] = true;
            }
        }
        let positives = positive.iter().filter(|&&p| p).count();
        let kept = self.kept(c, positives);
        if kept == c {
            return Ok((0..c).collect());
        }
        let mut negatives: Vec<usize> = (0..c).filter(|&j| !positive[j]).collect();
        let need = kept - positives;
        let mut rng = SplitMix64::new(self.seed, step, spec.offset as u64);
        // Partial Fisher-Yates: the first `need` entries become a uniform
        // sample without replacement.
        for i in 0..need {
            let j = i + rng.below((negatives.len() - i) as u64) as usize;
            negatives.swap(i, j);
        }
        let mut out: Vec<usize> = (0..c).filter(|&j| positive[j]).collect();
        out.extend_from_slice(&negatives[..need]);
        out.sort_unstable();
        Ok(out)
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014), seeded from the three keys.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64, step: u64, shard: u64) -> Self {
        let mut s = SplitMix64(seed);
        let a = s.next();
        let mut s = SplitMix64(a ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let b = s.next();
        SplitMix64(b ^ shard.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below `n / 2^64`).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_counts() {
        let p = PartialFc::new(0.25, 1).unwrap();
        assert_eq!(p.kept(10, 0), 2);
        assert_eq!(p.kept(10, 5), 5);
        assert_eq!(p.kept(3, 0), 1);
        assert!(PartialFc::new(0.0, 1).is_err());
        assert!(PartialFc::new(1.5, 1).is_err());
        assert!(PartialFc::new(f64::NAN, 1).is_err());
    }

    #[test]
    fn draws_vary_with_step_and_spread() {
        let spec = ShardSpec::new(0, 50, 50).unwrap();
        let p = PartialFc::new(0.2, 9).unwrap();
        let a = p.sample::<i64>(&spec, &[], 0).unwrap();
        let b = p.sample::<i64>(&spec, &[], 1).unwrap();
        assert_eq!(a.len(), 10);
        assert_ne!(a, b);
        // Over many steps every class gets drawn.
        let mut seen = [false; 50];
        for step in 0..200 {
            for j in p.sample::<i64>(&spec, &[], step).unwrap() {
                seen[j] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
