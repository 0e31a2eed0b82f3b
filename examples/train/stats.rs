//! The numbers the report prints: mean, spread, Spearman rank correlation and
//! face-verification accuracy (LFW protocol: 10 folds, threshold chosen on
//! nine, accuracy measured on the tenth).

/// Ranks 1..n of `v`, ties sharing their average rank.
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

/// Spearman's rank correlation: Pearson's on the (tie-averaged) ranks.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// The accuracy-maximising threshold on `(score, same)` pairs (predict
/// "same" when score > threshold), and that accuracy.
pub fn best_threshold(pairs: &[(f64, bool)]) -> (f64, f64) {
    let mut sorted: Vec<(f64, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = sorted.len();
    let positives = sorted.iter().filter(|p| p.1).count();
    // Threshold below everything: every positive right, every negative wrong.
    let mut correct = positives;
    let mut best = (correct, f64::NEG_INFINITY);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j < n && sorted[j].0 == sorted[i].0 {
            correct = if sorted[j].1 {
                correct - 1
            } else {
                correct + 1
            };
            j += 1;
        }
        if correct > best.0 {
            let next = if j < n {
                sorted[j].0
            } else {
                sorted[i].0 + 1.0
            };
            best = (correct, (sorted[i].0 + next) / 2.0);
        }
        i = j;
    }
    (best.1, best.0 as f64 / n.max(1) as f64)
}

/// Verification accuracy over `folds` contiguous folds (so that pairs
/// listed genuine, impostor, genuine, ... put both kinds in every fold):
/// threshold from the other folds, accuracy on the held-out one, averaged.
pub fn verification_accuracy(pairs: &[(f64, bool)], folds: usize) -> f64 {
    let n = pairs.len();
    let folds = folds.clamp(2, n.max(2));
    let mut total = 0.0;
    for f in 0..folds {
        let train: Vec<(f64, bool)> = pairs
            .iter()
            .enumerate()
            .filter(|(i, _)| i * folds / n != f)
            .map(|(_, p)| *p)
            .collect();
        let test: Vec<&(f64, bool)> = pairs
            .iter()
            .enumerate()
            .filter(|(i, _)| i * folds / n == f)
            .map(|(_, p)| p)
            .collect();
        let (t, _) = best_threshold(&train);
        let right = test.iter().filter(|(s, same)| (*s > t) == *same).count();
        total += right as f64 / test.len().max(1) as f64;
    }
    total / folds as f64
}

/// The mean (0 for no values).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The sample standard deviation (0 for fewer than two values).
pub fn std_dev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// The smallest and the largest value (`(inf, -inf)` for none).
pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_spread_and_range_of_known_values() {
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(mean(&v), 5.0);
        // Sum of squared deviations 32 over n - 1 = 7.
        assert!((std_dev(&v) - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(min_max(&v), (2.0, 9.0));
        assert_eq!((mean(&[]), std_dev(&[3.0])), (0.0, 0.0));
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 30.0, 20.0, 20.0]), vec![1.0, 4.0, 2.5, 2.5]);
    }

    #[test]
    fn spearman_of_monotone_and_reversed_and_known_values() {
        let a: Vec<f64> = (0..50).map(|i| i as f64).collect();
        let cubed: Vec<f64> = a.iter().map(|x| (x - 20.0).powi(3)).collect();
        assert!((spearman(&a, &cubed) - 1.0).abs() < 1e-12);
        let rev: Vec<f64> = a.iter().map(|x| -x.exp().min(1e300)).collect();
        assert!((spearman(&a, &rev) + 1.0).abs() < 1e-12);
        // Textbook example: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) without ties.
        let x = [
            86.0, 97.0, 99.0, 100.0, 101.0, 103.0, 106.0, 110.0, 112.0, 113.0,
        ];
        let y = [2.0, 20.0, 28.0, 27.0, 50.0, 29.0, 7.0, 17.0, 6.0, 12.0];
        assert!((spearman(&x, &y) - (-29.0 / 165.0)).abs() < 1e-12);
    }

    #[test]
    fn threshold_separates_separable_pairs() {
        // Impostors score 0..25, genuine pairs 40..55.
        let pairs: Vec<(f64, bool)> = (0..40)
            .map(|i| {
                if i < 25 {
                    (i as f64, false)
                } else {
                    (i as f64 + 15.0, true)
                }
            })
            .collect();
        let (t, acc) = best_threshold(&pairs);
        assert!(t > 24.0 && t < 40.0, "{t}");
        assert_eq!(acc, 1.0);
        assert_eq!(verification_accuracy(&pairs, 10), 1.0);
        // Scores that carry no information: about chance.
        let mut rng = crate::data::Rng::new(8);
        let noise: Vec<(f64, bool)> = (0..1000).map(|i| (rng.uniform(), i % 2 == 0)).collect();
        let acc = verification_accuracy(&noise, 10);
        assert!(acc > 0.4 && acc < 0.6, "{acc}");
    }
}
