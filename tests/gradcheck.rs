//! Finite-difference checks of the reference gradients in f64, including
//! the clamp and clip regions where the gradient gates switch.

mod common;

use adaface::reference::{detached_loss, forward_backward};
use adaface::{AdaFaceConfig, Shape, StepOutput};
use approx::relative_eq;
use common::Rng;

/// Central differences of the detached loss (margin scalers held at the
/// step's values) against the analytic gradients, element by element.
fn check_gradients(
    cfg: &AdaFaceConfig,
    shape: Shape,
    x: &[f64],
    w: &[f64],
    y: &[i64],
) -> StepOutput<f64> {
    let state = cfg.initial_state();
    let step = forward_backward(cfg, &state, shape, x, w, y).unwrap();
    let z = step.diagnostics.margin_scaler.clone();
    let loss = |x: &[f64], w: &[f64]| detached_loss(cfg, shape, x, w, y, &z).unwrap();
    assert!(relative_eq!(loss(x, w), step.loss, max_relative = 1e-14));

    let fd = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> f64| {
        let h = 1e-6 * v[i].abs().max(1e-3);
        let mut p = v.to_vec();
        p[i] = v[i] + h;
        let up = f(&p);
        p[i] = v[i] - h;
        let down = f(&p);
        (up - down) / (2.0 * h)
    };
    let gx_scale = step
        .grad_features
        .iter()
        .fold(0.0f64, |m, g| m.max(g.abs()));
    for i in 0..x.len() {
        let num = fd(x, i, &|p| loss(p, w));
        let ana = step.grad_features[i];
        assert!(
            relative_eq!(num, ana, epsilon = 1e-6 * gx_scale, max_relative = 1e-5),
            "dx[{i}]: finite difference {num:e} vs analytic {ana:e}"
        );
    }
    let gw_scale = step.grad_weight.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for i in 0..w.len() {
        let num = fd(w, i, &|p| loss(x, p));
        let ana = step.grad_weight[i];
        assert!(
            relative_eq!(num, ana, epsilon = 1e-6 * gw_scale, max_relative = 1e-5),
            "dw[{i}]: finite difference {num:e} vs analytic {ana:e}"
        );
    }
    step
}

/// Where row `i` should sit relative to its class.
struct TargetRow {
    class: usize,
    cos_target: f64,
    norm: f64,
}

/// Row `i` of `x` becomes `norm * (cos phi * w_hat + sin phi * u)` for a
/// random unit `u` orthogonal to the class row `w_hat`: a target cosine of
/// exactly `cos_target` up to rounding.
fn set_target_cosine(rng: &mut Rng, x: &mut [f64], w: &[f64], d: usize, i: usize, row: TargetRow) {
    let TargetRow {
        class,
        cos_target,
        norm,
    } = row;
    let wr = &w[class * d..(class + 1) * d];
    let wn = wr.iter().map(|v| v * v).sum::<f64>().sqrt();
    let wh: Vec<f64> = wr.iter().map(|v| v / wn).collect();
    let mut u = rng.normals(d, 1.0);
    let along: f64 = u.iter().zip(&wh).map(|(a, b)| a * b).sum();
    u.iter_mut().zip(&wh).for_each(|(a, b)| *a -= along * b);
    let un = u.iter().map(|v| v * v).sum::<f64>().sqrt();
    let sin = (1.0 - cos_target * cos_target).sqrt();
    for k in 0..d {
        x[i * d + k] = norm * (cos_target * wh[k] + sin * u[k] / un);
    }
}

fn random_problem(rng: &mut Rng, shape: Shape) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    let mut x = rng.normals(shape.batch * shape.dim, 1.0);
    // Row norms spread over two orders of magnitude, as real features are.
    for row in x.chunks_mut(shape.dim) {
        let s = 0.3 + 30.0 * rng.uniform();
        row.iter_mut().for_each(|v| *v *= s);
    }
    let w = rng.normals(shape.classes * shape.dim, 0.5);
    let y = rng.labels(shape.batch, shape.classes);
    (x, w, y)
}

#[test]
fn gradients_match_finite_differences_on_random_inputs() {
    let mut rng = Rng::new(11);
    for (b, d, c) in [(5, 8, 7), (3, 5, 11), (7, 4, 3)] {
        let shape = Shape::new(b, d, c);
        let (x, w, y) = random_problem(&mut rng, shape);
        let cfg = AdaFaceConfig::builder().t_alpha(0.5).build().unwrap();
        check_gradients(&cfg, shape, &x, &w, &y);
    }
}

#[test]
fn gradients_match_with_clipped_scalers() {
    let mut rng = Rng::new(12);
    let shape = Shape::new(9, 6, 5);
    let (x, w, y) = random_problem(&mut rng, shape);
    let cfg = AdaFaceConfig::builder()
        .h(3.0)
        .t_alpha(1.0)
        .build()
        .unwrap();
    let step = check_gradients(&cfg, shape, &x, &w, &y);
    let z = &step.diagnostics.margin_scaler;
    assert!(z.contains(&1.0), "no scaler clipped at +1: {z:?}");
    assert!(z.contains(&-1.0), "no scaler clipped at -1: {z:?}");
    assert!(
        z.iter().any(|&v| v.abs() < 1.0),
        "every scaler clipped: {z:?}"
    );
}

#[test]
fn gradients_match_near_and_beyond_the_cosine_clamp() {
    let mut rng = Rng::new(13);
    let shape = Shape::new(4, 6, 5);
    let (mut x, w, y) = random_problem(&mut rng, shape);
    let eps = 1e-3;
    // Inside the clamp but close to it, beyond it on both sides, inside low.
    let targets = [
        1.0 - 3.0 * eps,
        1.0 - 0.3 * eps,
        -1.0 + 0.3 * eps,
        -1.0 + 3.0 * eps,
    ];
    for (i, &ct) in targets.iter().enumerate() {
        let row = TargetRow {
            class: y[i] as usize,
            cos_target: ct,
            norm: 2.0 + i as f64,
        };
        set_target_cosine(&mut rng, &mut x, &w, 6, i, row);
    }
    let cfg = AdaFaceConfig::builder().t_alpha(1.0).build().unwrap();
    let step = check_gradients(&cfg, shape, &x, &w, &y);
    let tc = &step.diagnostics.target_cosine;
    assert!(
        tc[1] == 1.0 - eps && tc[2] == -1.0 + eps,
        "clamp not active: {tc:?}"
    );
    assert!(
        tc[0] < 1.0 - eps && tc[3] > -1.0 + eps,
        "clamp active: {tc:?}"
    );
}

#[test]
fn gradients_match_where_the_angle_clip_fires() {
    let mut rng = Rng::new(14);
    let shape = Shape::new(4, 6, 5);
    let (mut x, w, y) = random_problem(&mut rng, shape);
    let (m, big_h) = (0.4, 1e3);
    // Rows 0, 1: large norms (z = +1), small angles: theta - m < eps.
    // Rows 2, 3: small norms (z = -1), angles near pi: theta + m > pi - eps.
    let rows = [(0.15f64, 50.0), (0.3, 60.0), (3.0, 0.5), (2.9, 0.6)];
    for (i, &(theta, norm)) in rows.iter().enumerate() {
        let row = TargetRow {
            class: y[i] as usize,
            cos_target: theta.cos(),
            norm,
        };
        set_target_cosine(&mut rng, &mut x, &w, 6, i, row);
    }
    let cfg = AdaFaceConfig::builder()
        .m(m)
        .h(big_h)
        .t_alpha(1.0)
        .build()
        .unwrap();
    let step = check_gradients(&cfg, shape, &x, &w, &y);
    let z = &step.diagnostics.margin_scaler;
    assert_eq!(z, &vec![1.0, 1.0, -1.0, -1.0]);
    for (i, &(theta, _)) in rows.iter().enumerate() {
        let shifted = theta - m * z[i];
        assert!(
            !(1e-3..=std::f64::consts::PI - 1e-3).contains(&shifted),
            "row {i}: angle clip does not fire"
        );
    }
}
