//! The margin family against the published formulas, written out here
//! independently of `src/math.rs`:
//!
//! * ArcFace:  `s * cos(theta + m)`
//! * CosFace:  `s * (cos(theta) - m)`
//! * combined: `s * (cos(m1 * theta + m2) - m3)` (insightface)
//! * AdaFace:  `s * (cos(theta - m z) - m - m z)`
//!
//! and the fixed margins as AdaFace at `z = -1` (ArcFace) and `z = 0` (CosFace).
//! Everything runs in `f64`, where the reference is exact to rounding.

mod common;

use adaface::math::{target_logit, MarginConsts};
use adaface::{reference, AdaFaceConfig, EmaState, MarginPolicy, Shape};
use common::{margin_cfg as cfg, Inputs, Rng, RowNorms};

/// Rows leaning towards their class rows (target cosines spread over
/// (0, 1), so the loss is not flat), scaled by `feature_scale`.
fn inputs(seed: u64, b: usize, d: usize, c: usize, feature_scale: f64) -> Inputs {
    Inputs::leaning(seed, Shape::new(b, d, c), RowNorms::Scaled(feature_scale))
}

const EPS: f64 = 1e-3;

fn policies() -> Vec<MarginPolicy> {
    vec![
        MarginPolicy::AdaFace { m: 0.4, h: 0.333 },
        MarginPolicy::ArcFace { m: 0.5 },
        MarginPolicy::CosFace { m: 0.35 },
        MarginPolicy::Combined {
            m1: 1.0,
            m2: 0.3,
            m3: 0.2,
        },
        MarginPolicy::Combined {
            m1: 0.9,
            m2: 0.4,
            m3: 0.15,
        },
    ]
}

/// The published target logit divided by `s`, for a target angle `theta` and
/// (AdaFace only) the row's margin scaler `z`. No clip: the tests keep the
/// angles inside `(eps, pi - eps)` where every formula is smooth.
fn published_target(policy: MarginPolicy, theta: f64, z: f64) -> f64 {
    match policy {
        MarginPolicy::ArcFace { m } => (theta + m).cos(),
        MarginPolicy::CosFace { m } => theta.cos() - m,
        MarginPolicy::Combined { m1, m2, m3 } => (m1 * theta + m2).cos() - m3,
        MarginPolicy::AdaFace { m, .. } => (theta - m * z).cos() - m - m * z,
        other => unreachable!("{other:?}: tests/margin_family.rs checks the others"),
    }
}

/// `d published_target / d cos(theta)`, from `d theta / dc = -1 / sin(theta)`.
fn published_target_derivative(policy: MarginPolicy, theta: f64, z: f64) -> f64 {
    let sin = theta.sin();
    match policy {
        MarginPolicy::ArcFace { m } => (theta + m).sin() / sin,
        MarginPolicy::CosFace { .. } => 1.0,
        MarginPolicy::Combined { m1, m2, .. } => m1 * (m1 * theta + m2).sin() / sin,
        MarginPolicy::AdaFace { m, .. } => (theta - m * z).sin() / sin,
        other => unreachable!("{other:?}: tests/margin_family.rs checks the others"),
    }
}

/// AdaFace's margin scaler for each row, computed here from the official
/// rules (EMA updated before use, unbiased std, clipped norms).
fn published_scaler(cfg: &AdaFaceConfig, state: &EmaState, inp: &Inputs) -> Vec<f64> {
    let h = match cfg.margin() {
        MarginPolicy::AdaFace { h, .. } => h,
        _ => return vec![0.0; inp.shape.batch],
    };
    let d = inp.shape.dim;
    let sn: Vec<f64> = inp
        .x
        .chunks(d)
        .map(|r| {
            r.iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
                .clamp(1e-3, 100.0)
        })
        .collect();
    let n = sn.len() as f64;
    let mean = sn.iter().sum::<f64>() / n;
    let std = (sn.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let t = cfg.t_alpha();
    let ema_mean = t * mean + (1.0 - t) * state.batch_mean;
    let ema_std = t * std + (1.0 - t) * state.batch_std;
    sn.iter()
        .map(|v| (h * (v - ema_mean) / (ema_std + EPS)).clamp(-1.0, 1.0))
        .collect()
}

/// The `B x C` cosines of the normalised rows, unclamped.
fn cosines(x: &[f64], w: &[f64], shape: Shape) -> Vec<f64> {
    let d = shape.dim;
    let unit = |r: &[f64]| {
        let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        r.iter().map(|v| v / n).collect::<Vec<f64>>()
    };
    let xh: Vec<Vec<f64>> = x.chunks(d).map(unit).collect();
    let wh: Vec<Vec<f64>> = w.chunks(d).map(unit).collect();
    xh.iter()
        .flat_map(|xi| {
            wh.iter()
                .map(|wj| xi.iter().zip(wj).map(|(a, b)| a * b).sum::<f64>())
                .collect::<Vec<f64>>()
        })
        .collect()
}

/// The published logits, with `z` given (held fixed, as the official head
/// detaches it).
fn published_logits(
    policy: MarginPolicy,
    s: f64,
    x: &[f64],
    w: &[f64],
    inp: &Inputs,
    z: &[f64],
) -> Vec<f64> {
    let c = inp.shape.classes;
    let mut logits = cosines(x, w, inp.shape);
    for (i, row) in logits.chunks_mut(c).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let cos = v.clamp(-1.0 + EPS, 1.0 - EPS);
            *v = if j == inp.labels[i] as usize {
                s * published_target(policy, cos.acos(), z[i])
            } else {
                s * cos
            };
        }
    }
    logits
}

fn published_loss(
    policy: MarginPolicy,
    s: f64,
    x: &[f64],
    w: &[f64],
    inp: &Inputs,
    z: &[f64],
) -> f64 {
    let c = inp.shape.classes;
    let logits = published_logits(policy, s, x, w, inp, z);
    let total: f64 = logits
        .chunks(c)
        .enumerate()
        .map(|(i, row)| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - row[inp.labels[i] as usize]
        })
        .sum();
    total / inp.shape.batch as f64
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Every target angle stays away from the angle clip and every cosine from
/// the cosine clamp, so the formulas are smooth at these inputs.
fn assert_smooth(policy: MarginPolicy, inp: &Inputs, z: &[f64]) {
    let c = inp.shape.classes;
    let cos = cosines(&inp.x, &inp.w, inp.shape);
    for (i, row) in cos.chunks(c).enumerate() {
        for v in row {
            assert!(
                v.abs() < 1.0 - 10.0 * EPS,
                "cosine {v} too close to the clamp"
            );
        }
        let theta = row[inp.labels[i] as usize].acos();
        let (a, _) = policy.row_offsets(z[i]);
        let t = policy.angle_scale() * theta + a;
        assert!(
            t > 0.05 && t < std::f64::consts::PI - 0.05,
            "target angle {t} too close to the clip"
        );
    }
}

#[test]
fn logits_and_loss_match_the_published_formulas() {
    for (k, policy) in policies().into_iter().enumerate() {
        for &(b, d, c) in &[(7, 13, 17), (1, 5, 3), (33, 64, 101)] {
            let s = 64.0;
            let cfg = cfg(policy, s);
            let state = EmaState::default();
            let inp = inputs(100 + k as u64, b, d, c, 3.0);
            let out = reference::forward(&cfg, &state, inp.shape, &inp.x, &inp.w, &inp.labels)
                .expect("forward");
            // B = 1 has no unbiased std: the crate keeps the old one (documented),
            // so the scaler is computed here from the crate's own state after.
            let z = if b == 1 {
                out.diagnostics.margin_scaler.clone()
            } else {
                published_scaler(&cfg, &state, &inp)
            };
            if b > 1 {
                let dz = out
                    .diagnostics
                    .margin_scaler
                    .iter()
                    .zip(&z)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(dz < 1e-12, "{policy:?}: margin scaler off by {dz:e}");
            }
            let want = published_logits(policy, s, &inp.x, &inp.w, &inp, &z);
            let err = rel_err(&out.logits, &want);
            assert!(
                err < 1e-12,
                "{policy:?} B={b} D={d} C={c}: logits rel err {err:e}"
            );
            let loss = published_loss(policy, s, &inp.x, &inp.w, &inp, &z);
            assert!(
                (out.loss - loss).abs() <= 1e-12 * loss.abs().max(1.0),
                "{policy:?}: loss {} vs published {loss}",
                out.loss
            );
        }
    }
}

#[test]
fn target_logit_and_its_derivative_match_the_published_formulas() {
    let mut rng = Rng::new(7);
    for policy in policies() {
        let cfg = cfg(policy, 30.0);
        let k = MarginConsts::<f64>::new(&cfg);
        for _ in 0..200 {
            let c = -0.7 + 1.6 * rng.uniform();
            let z = if matches!(policy, MarginPolicy::AdaFace { .. }) {
                2.0 * rng.uniform() - 1.0
            } else {
                0.0
            };
            let theta = c.acos();
            let (a, b) = policy.row_offsets(z);
            let t = policy.angle_scale() * theta + a;
            if !(EPS..=std::f64::consts::PI - EPS).contains(&t) {
                continue;
            }
            let (logit, dlogit) = target_logit(c, a, b, &k);
            let want = 30.0 * published_target(policy, theta, z);
            let dwant = 30.0 * published_target_derivative(policy, theta, z);
            assert!(
                (logit - want).abs() < 1e-12 * want.abs().max(1.0),
                "{policy:?} c={c}"
            );
            assert!(
                (dlogit - dwant).abs() < 1e-10 * dwant.abs().max(1.0),
                "{policy:?} c={c}: {dlogit} vs {dwant}"
            );
            // The derivative is also the finite difference of the formula.
            let hstep = 1e-6;
            let fd = (target_logit(c + hstep, a, b, &k).0 - target_logit(c - hstep, a, b, &k).0)
                / (2.0 * hstep);
            assert!(
                (dlogit - fd).abs() < 1e-6 * dlogit.abs().max(1.0),
                "{policy:?} c={c}: fd {fd}"
            );
        }
    }
}

#[test]
fn angle_clip_saturates_the_target_logit_and_stops_its_gradient() {
    // ArcFace at theta close to pi: theta + m leaves [eps, pi - eps].
    let policy = MarginPolicy::ArcFace { m: 0.5 };
    let k = MarginConsts::<f64>::new(&cfg(policy, 64.0));
    let (a, b) = policy.row_offsets(0.0);
    let (logit, d) = target_logit(-0.95, a, b, &k);
    assert!((logit - 64.0 * (std::f64::consts::PI - EPS).cos()).abs() < 1e-12);
    assert_eq!(d, 0.0);
    // AdaFace at z = 1 and a small angle: theta - m leaves it at the bottom.
    let policy = MarginPolicy::AdaFace { m: 0.4, h: 0.333 };
    let (a, b) = policy.row_offsets(1.0);
    let (logit, d) = target_logit(0.99, a, b, &k);
    assert!((logit - 64.0 * (EPS.cos() - 0.8)).abs() < 1e-12);
    assert_eq!(d, 0.0);
}

#[test]
fn finite_differences_of_the_published_loss_match_the_gradients() {
    for (k, policy) in policies().into_iter().enumerate() {
        let s = 16.0;
        let cfg = cfg(policy, s);
        let state = EmaState::default();
        let inp = inputs(200 + k as u64, 5, 7, 11, 2.0);
        let z = published_scaler(&cfg, &state, &inp);
        assert_smooth(policy, &inp, &z);
        let out = reference::forward_backward(&cfg, &state, inp.shape, &inp.x, &inp.w, &inp.labels)
            .expect("step");

        let h = 1e-6;
        let fd = |which: usize, idx: usize| {
            let (mut x, mut w) = (inp.x.clone(), inp.w.clone());
            let v = if which == 0 { &mut x[idx] } else { &mut w[idx] };
            let orig = *v;
            *v = orig + h;
            let up = published_loss(policy, s, &x, &w, &inp, &z);
            let (mut x, mut w) = (inp.x.clone(), inp.w.clone());
            let v = if which == 0 { &mut x[idx] } else { &mut w[idx] };
            *v = orig - h;
            let down = published_loss(policy, s, &x, &w, &inp, &z);
            (up - down) / (2.0 * h)
        };
        let gx: Vec<f64> = (0..inp.x.len()).map(|i| fd(0, i)).collect();
        let gw: Vec<f64> = (0..inp.w.len()).map(|i| fd(1, i)).collect();
        let ex = rel_err(&out.grad_features, &gx);
        let ew = rel_err(&out.grad_weight, &gw);
        assert!(
            ex < 1e-6,
            "{policy:?}: dX vs finite differences, rel err {ex:e}"
        );
        assert!(
            ew < 1e-6,
            "{policy:?}: dW vs finite differences, rel err {ew:e}"
        );
        assert!(
            gx.iter().any(|v| v.abs() > 1e-4),
            "{policy:?}: flat loss, test is vacuous"
        );
    }
}

fn assert_same_step(a: &AdaFaceConfig, b: &AdaFaceConfig, inp: &Inputs) -> Vec<f64> {
    let state = EmaState::default();
    let oa =
        reference::forward_backward(a, &state, inp.shape, &inp.x, &inp.w, &inp.labels).unwrap();
    let ob =
        reference::forward_backward(b, &state, inp.shape, &inp.x, &inp.w, &inp.labels).unwrap();
    assert!(
        (oa.loss - ob.loss).abs() <= 1e-12 * ob.loss.abs(),
        "loss {} vs {}",
        oa.loss,
        ob.loss
    );
    assert!(rel_err(&oa.grad_features, &ob.grad_features) < 1e-12);
    assert!(rel_err(&oa.grad_weight, &ob.grad_weight) < 1e-12);
    oa.diagnostics.margin_scaler
}

#[test]
fn cosface_is_adaface_at_z_zero() {
    // h = 0 makes every scaler exactly 0.
    let inp = inputs(300, 9, 16, 23, 3.0);
    let m = 0.4;
    let ada = cfg(MarginPolicy::AdaFace { m, h: 0.0 }, 64.0);
    let cos = cfg(MarginPolicy::CosFace { m }, 64.0);
    let z = assert_same_step(&ada, &cos, &inp);
    assert!(z.iter().all(|&v| v == 0.0), "z = {z:?}");
}

#[test]
fn arcface_is_adaface_at_z_minus_one() {
    // Norms about 3 * sqrt(16) = 12 against an EMA mean near 20, and a huge
    // h: every scaler clips to -1.
    let inp = inputs(301, 9, 16, 23, 1.0);
    let m = 0.4;
    let ada = cfg(MarginPolicy::AdaFace { m, h: 1e6 }, 64.0);
    let arc = cfg(MarginPolicy::ArcFace { m }, 64.0);
    let z = assert_same_step(&ada, &arc, &inp);
    assert!(z.iter().all(|&v| v == -1.0), "z = {z:?}");
}

#[test]
fn adaface_at_z_plus_one_is_a_negative_angular_margin_with_twice_the_additive_one() {
    // Norms far above the EMA mean: z = +1, logit s (cos(theta - m) - 2m),
    // which is the combined margin (1, -m, 2m) (not a valid Combined config,
    // whose m2 must be >= 0, so checked against the formula).
    let inp = inputs(302, 6, 16, 13, 25.0);
    let m = 0.4;
    let s = 64.0;
    let ada = cfg(MarginPolicy::AdaFace { m, h: 1e6 }, s);
    let out = reference::forward(
        &ada,
        &EmaState::default(),
        inp.shape,
        &inp.x,
        &inp.w,
        &inp.labels,
    )
    .unwrap();
    assert!(out.diagnostics.margin_scaler.iter().all(|&v| v == 1.0));
    let c = inp.shape.classes;
    for (i, &tc) in out.diagnostics.target_cosine.iter().enumerate() {
        let want = s * ((tc.acos() - m).cos() - 2.0 * m);
        let got = out.logits[i * c + inp.labels[i] as usize];
        assert!((got - want).abs() < 1e-12 * want.abs().max(1.0));
    }
}

#[test]
fn fixed_margins_ignore_the_norms() {
    // The same directions at two norm scales give the same loss and the
    // same (1/scale-scaled) feature gradients for the fixed margins.
    for policy in policies().into_iter().skip(1) {
        let cfg = cfg(policy, 64.0);
        let a = inputs(400, 8, 12, 19, 1.0);
        let mut b = inputs(400, 8, 12, 19, 1.0);
        b.x.iter_mut().for_each(|v| *v *= 7.0);
        let state = EmaState::default();
        let oa = reference::forward_backward(&cfg, &state, a.shape, &a.x, &a.w, &a.labels).unwrap();
        let ob = reference::forward_backward(&cfg, &state, b.shape, &b.x, &b.w, &b.labels).unwrap();
        assert!((oa.loss - ob.loss).abs() < 1e-12 * oa.loss.abs());
        let scaled: Vec<f64> = ob.grad_features.iter().map(|v| v * 7.0).collect();
        assert!(rel_err(&scaled, &oa.grad_features) < 1e-12);
    }
}

#[test]
fn invalid_margins_are_rejected() {
    let bad = [
        MarginPolicy::ArcFace { m: -0.1 },
        MarginPolicy::CosFace { m: f64::NAN },
        MarginPolicy::Combined {
            m1: 0.0,
            m2: 0.3,
            m3: 0.2,
        },
        MarginPolicy::Combined {
            m1: 1.0,
            m2: -0.3,
            m3: 0.2,
        },
        MarginPolicy::AdaFace { m: 0.4, h: -1.0 },
    ];
    for policy in bad {
        assert!(
            AdaFaceConfig::builder().margin(policy).build().is_err(),
            "{policy:?} accepted"
        );
    }
}
