//! The ArcFace and CosFace limits of the adaptive margin, and the behaviour
//! this crate defines where the official code breaks.

mod common;

use adaface::reference::{forward, forward_backward};
use adaface::{AdaFaceConfig, EmaState, Shape};
use common::{rel, Rng};

/// Clamped cosines `c_ij`, computed here independently of the crate.
fn cosines(x: &[f64], w: &[f64], shape: Shape, eps: f64) -> Vec<f64> {
    let d = shape.dim;
    let unit = |r: &[f64]| {
        let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        r.iter().map(|v| v / n).collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for xi in x.chunks(d) {
        let xh = unit(xi);
        for wj in w.chunks(d) {
            let dot: f64 = xh.iter().zip(unit(wj)).map(|(a, b)| a * b).sum();
            out.push(dot.clamp(-1.0 + eps, 1.0 - eps));
        }
    }
    out
}

fn problem(seed: u64, shape: Shape, norm_scale: f64) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    let mut rng = Rng::new(seed);
    let x = rng.normals(shape.batch * shape.dim, norm_scale);
    let w = rng.normals(shape.classes * shape.dim, 1.0);
    (x, w, rng.labels(shape.batch, shape.classes))
}

#[test]
fn scaler_minus_one_is_arcface() {
    let shape = Shape::new(7, 12, 9);
    // Norms ~0.3 against an EMA mean near 20: every scaler clips at -1.
    let (x, w, y) = problem(21, shape, 0.1);
    let (m, s, eps) = (0.4, 64.0, 1e-3);
    let cfg = AdaFaceConfig::builder().m(m).h(10.0).build().unwrap();
    let out = forward(&cfg, &cfg.initial_state(), shape, &x, &w, &y).unwrap();
    assert!(out.diagnostics.margin_scaler.iter().all(|&z| z == -1.0));
    let c = cosines(&x, &w, shape, eps);
    for i in 0..shape.batch {
        for j in 0..shape.classes {
            let cij = c[i * shape.classes + j];
            let want = if j == y[i] as usize {
                let theta = (cij.acos() + m).clamp(eps, std::f64::consts::PI - eps);
                s * theta.cos()
            } else {
                s * cij
            };
            let got = out.logits[i * shape.classes + j];
            assert!(rel(got, want) < 1e-12, "({i},{j}): {got} vs {want}");
        }
    }
}

#[test]
fn scaler_zero_is_cosface() {
    let shape = Shape::new(5, 16, 13);
    let (x, w, y) = problem(22, shape, 3.0);
    let (m, s, eps) = (0.35, 30.0, 1e-3);
    let cfg = AdaFaceConfig::builder().m(m).h(0.0).s(s).build().unwrap();
    let out = forward(&cfg, &cfg.initial_state(), shape, &x, &w, &y).unwrap();
    assert!(out.diagnostics.margin_scaler.iter().all(|&z| z == 0.0));
    let c = cosines(&x, &w, shape, eps);
    for i in 0..shape.batch {
        for j in 0..shape.classes {
            let cij = c[i * shape.classes + j];
            let want = if j == y[i] as usize {
                s * (cij - m)
            } else {
                s * cij
            };
            let got = out.logits[i * shape.classes + j];
            assert!((got - want).abs() < 1e-12 * s, "({i},{j}): {got} vs {want}");
        }
    }
}

#[test]
fn one_row_batch_keeps_the_std_and_stays_finite() {
    let shape = Shape::new(1, 8, 6);
    let (x, w, y) = problem(23, shape, 2.0);
    let cfg = AdaFaceConfig::builder().t_alpha(0.3).build().unwrap();
    let before = EmaState::new(15.0, 4.0);
    let step = forward_backward(&cfg, &before, shape, &x, &w, &y).unwrap();
    let n = step.diagnostics.norms[0];
    let after = step.state_after();
    assert_eq!(after.batch_std, before.batch_std, "std term must be kept");
    assert!(rel(after.batch_mean, 0.3 * n + 0.7 * 15.0) < 1e-14);
    assert!(step.stats.std.is_none());
    assert!(step.loss.is_finite());
    assert!(step
        .grad_features
        .iter()
        .chain(&step.grad_weight)
        .all(|v| v.is_finite()));
    // A second one-row step still never lets a NaN in.
    let again = forward_backward(&cfg, &after, shape, &x, &w, &y).unwrap();
    assert!(again.state_after().batch_mean.is_finite() && again.state_after().batch_std == 4.0);
}

#[test]
fn identical_norms_give_zero_std_and_zero_scaler() {
    let shape = Shape::new(6, 10, 4);
    let mut rng = Rng::new(24);
    let v = rng.normals(shape.dim, 2.0);
    // Sign flips keep every row's sum of squares bit-identical.
    let x: Vec<f64> = (0..shape.batch)
        .flat_map(|_| {
            v.iter()
                .map(|&a| if rng.uniform() < 0.5 { -a } else { a })
                .collect::<Vec<_>>()
        })
        .collect();
    let w = rng.normals(shape.classes * shape.dim, 1.0);
    let y = rng.labels(shape.batch, shape.classes);
    let cfg = AdaFaceConfig::builder().t_alpha(1.0).build().unwrap();
    let step = forward_backward(&cfg, &cfg.initial_state(), shape, &x, &w, &y).unwrap();
    assert_eq!(step.stats.std, Some(0.0));
    assert_eq!(step.state_after().batch_std, 0.0);
    assert!(step.diagnostics.margin_scaler.iter().all(|&z| z == 0.0));
    assert!(step.loss.is_finite());
}

#[test]
fn ema_follows_the_official_update_across_steps() {
    let shape = Shape::new(9, 8, 5);
    let cfg = AdaFaceConfig::builder().t_alpha(0.01).build().unwrap();
    let mut state = cfg.initial_state();
    for seed in 0..3 {
        let (x, w, y) = problem(30 + seed, shape, 1.0 + seed as f64);
        let out = forward(&cfg, &state, shape, &x, &w, &y).unwrap();
        let sn: Vec<f64> = out
            .diagnostics
            .norms
            .iter()
            .map(|n| n.clamp(1e-3, 100.0))
            .collect();
        let mean = sn.iter().sum::<f64>() / sn.len() as f64;
        let var = sn.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (sn.len() - 1) as f64;
        let want_mean = 0.01 * mean + 0.99 * state.batch_mean;
        let want_std = 0.01 * var.sqrt() + 0.99 * state.batch_std;
        assert!(rel(out.state_after().batch_mean, want_mean) < 1e-14);
        assert!(rel(out.state_after().batch_std, want_std) < 1e-14);
        state = out.state_after();
    }
}

#[test]
fn f32_and_f64_reference_agree() {
    let shape = Shape::new(33, 96, 37);
    let (x, w, y) = problem(25, shape, 4.0);
    let cfg = AdaFaceConfig::default();
    let s64 = forward_backward(&cfg, &cfg.initial_state(), shape, &x, &w, &y).unwrap();
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    let y32: Vec<i32> = y.iter().map(|&v| v as i32).collect();
    let s32 = forward_backward(&cfg, &cfg.initial_state(), shape, &x32, &w32, &y32).unwrap();
    let widen = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    assert!(rel(s32.loss as f64, s64.loss) < 1e-5);
    assert!(common::rel_norm(&widen(&s32.grad_features), &s64.grad_features) < 1e-4);
    assert!(common::rel_norm(&widen(&s32.grad_weight), &s64.grad_weight) < 1e-4);
}
