//! The clamp and clip gates, on every backend, against finite differences of
//! a plain `f64` loss written out in this file (it shares no code with the
//! crate, so a wrong gate in `math.rs` or in a backend cannot hide behind an
//! oracle that has the same fault).
//!
//! One batch puts a row in each gate's window, with margin scalers
//! saturated at -1 or +1 (huge `h`) so that they are locally constant:
//!
//! * row 0 (z = -1): target angle `theta` with `theta + m` inside
//!   `(pi - eps, pi]`: the upper angle clip fires, the target passes no
//!   gradient (a clip at `pi` instead of `pi - eps` would pass one);
//! * row 1 (z = +1): target cosine inside `(-1, -1 + eps)`: the target's
//!   cosine clamp fires;
//! * row 2 (z = -1): a non-target cosine inside `(1 - eps, 1)`: the upper
//!   non-target clamp fires, on the row's largest logit;
//! * row 3 (z = -1): a non-target cosine inside `(-1, -1 + eps)`.
//!
//! Each gated class direction is reached by one row only, so a gate left
//! open shows up as a non-zero `dW` component where the finite differences
//! give zero (the in-plane components of classes 0 and 1, see [`GATED`]).

mod common;

use adaface::cpu::CpuAdaFace;
use adaface::{naive, reference, AdaFaceConfig, EmaState, MarginPolicy, Shape};
use common::Rng;
use common::SimAdaFace;
use half::{bf16, f16};

const B: usize = 4;
const D: usize = 32;
const C: usize = 6;
const M: f64 = 0.4;
const S: f64 = 64.0;
const EPS: f64 = 1e-3;
const H: f64 = 1e6;
const LABELS: [i64; B] = [0, 1, 2, 4];

fn config() -> AdaFaceConfig {
    AdaFaceConfig::builder()
        .margin(MarginPolicy::AdaFace { m: M, h: H })
        .s(S)
        .build()
        .unwrap()
}

/// The problem with every value rounded by `round` (to the dtype under
/// test), so that the oracle sees exactly what the backend sees. The
/// in-plane pairs are searched on the dtype's grid so that each gate's
/// window still holds after rounding.
fn problem(round: impl Fn(f64) -> f64) -> (Vec<f64>, Vec<f64>) {
    let mut x = vec![0.0; B * D];
    let mut w = vec![0.0; C * D];
    // Features: axis-aligned rows (normalising them is exact in any dtype).
    x[0] = 1.0;
    x[D + 2] = 30.0;
    x[2 * D + 4] = 2.0;
    x[3 * D + 6] = 5.0;
    // Row 0's target, class 0, in the (e0, e1) plane at angle theta with
    // theta + m in the middle of (pi - eps, pi].
    let centre = std::f64::consts::PI - M - EPS / 2.0;
    let (a0, b0) = (centre.cos(), centre.sin());
    let mut best = (f64::INFINITY, 0.0, 0.0);
    for ka in -40..=40 {
        for kb in -40..=40 {
            let a = round(a0 + ka as f64 * 2f64.powi(-11));
            let b = round(b0 + kb as f64 * 2f64.powi(-11));
            let miss = (b.atan2(a) - centre).abs();
            if miss < best.0 {
                best = (miss, a, b);
            }
        }
    }
    assert!(best.0 < EPS / 4.0, "no pair on the grid: {best:?}");
    w[0] = best.1;
    w[1] = best.2;
    // Class 1 (row 1's target): cosine -1/sqrt(1 + 2^-10) = -0.99951.
    let delta = 2f64.powi(-5);
    w[D + 2] = -1.0;
    w[D + 3] = delta;
    // Class 3 (a non-target of row 2): cosine +0.99951.
    w[3 * D + 4] = 1.0;
    w[3 * D + 5] = delta;
    // Class 5 (a non-target of row 3): cosine -0.99951.
    w[5 * D + 6] = -1.0;
    w[5 * D + 7] = delta;
    // Classes 2 and 4 (targets of rows 2 and 3): dense.
    let mut rng = Rng::new(71);
    for j in [2, 4] {
        for v in &mut w[j * D..(j + 1) * D] {
            *v = round(rng.normal() * 0.3);
        }
    }
    (x, w)
}

/// The AdaFace loss written out plainly in `f64`, with the scalers given
/// (they are detached and saturated here).
fn plain_loss(x: &[f64], w: &[f64], z: &[f64]) -> f64 {
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let mut total = 0.0;
    for i in 0..B {
        let xi = &x[i * D..(i + 1) * D];
        let n = norm(xi);
        let y = LABELS[i] as usize;
        let logits: Vec<f64> = (0..C)
            .map(|j| {
                let wj = &w[j * D..(j + 1) * D];
                let dot: f64 = xi.iter().zip(wj).map(|(a, b)| a * b).sum();
                let c = (dot / (n * norm(wj))).clamp(-1.0 + EPS, 1.0 - EPS);
                if j == y {
                    let theta = (c.acos() - M * z[i]).clamp(EPS, std::f64::consts::PI - EPS);
                    S * (theta.cos() - M - M * z[i])
                } else {
                    S * c
                }
            })
            .collect();
        let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = top + logits.iter().map(|l| (l - top).exp()).sum::<f64>().ln();
        total += lse - logits[y];
    }
    total / B as f64
}

/// The `GATED` components of `dW` for the same loss with the gates under
/// test open (analytic, through the unclamped cosine): what a backend with
/// a missing gate would report.
fn gated_open(x: &[f64], w: &[f64]) -> Vec<f64> {
    let z = [-1.0, 1.0, -1.0, -1.0];
    // d/dw of s * (cos(theta - m z) - ...) through c = x_hat . w_hat with
    // no clamp or clip: the derivative wrt c times d c / d w, and the softmax
    // weight of the target, (p - 1) / B.
    let mut out = Vec::new();
    for (row, class) in [(0usize, 0usize), (1, 1)] {
        let xi = &x[row * D..(row + 1) * D];
        let wj = &w[class * D..(class + 1) * D];
        let n = xi.iter().map(|a| a * a).sum::<f64>().sqrt();
        let r = wj.iter().map(|a| a * a).sum::<f64>().sqrt();
        let c: f64 = xi.iter().zip(wj).map(|(a, b)| a * b).sum::<f64>() / (n * r);
        let theta = c.acos();
        let dlogit_dc = S * (theta - M * z[row]).sin() / theta.sin();
        let p_minus_1 = -1.0; // the target's probability is negligible here
        let g = p_minus_1 / B as f64 * dlogit_dc;
        let plane = if row == 0 { [0, 1] } else { [2, 3] };
        for k in plane {
            // d c / d w_k = (x_hat_k - c w_hat_k) / r
            out.push(g * (xi[k] / n - c * wj[k] / r) / r);
        }
    }
    out
}

/// Central differences of [`plain_loss`] in every input.
fn finite_differences(x: &[f64], w: &[f64], z: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let step = 1e-6;
    let diff = |which: usize, k: usize| {
        let (mut xp, mut wp) = (x.to_vec(), w.to_vec());
        let (mut xm, mut wm) = (x.to_vec(), w.to_vec());
        if which == 0 {
            xp[k] += step;
            xm[k] -= step;
        } else {
            wp[k] += step;
            wm[k] -= step;
        }
        (plain_loss(&xp, &wp, z) - plain_loss(&xm, &wm, z)) / (2.0 * step)
    };
    (
        (0..x.len()).map(|k| diff(0, k)).collect(),
        (0..w.len()).map(|k| diff(1, k)).collect(),
    )
}

/// Each row of `got` against the same row of `want`: within `tol` of the
/// row's norm plus `tol` of the whole array's RMS row norm (rows the gates
/// zero must come out near zero).
fn assert_rows(name: &str, what: &str, got: &[f64], want: &[f64], tol: f64) {
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let rows = want.len() / D;
    let scale = norm(want) / (rows as f64).sqrt();
    for r in 0..rows {
        let (g, f) = (&got[r * D..(r + 1) * D], &want[r * D..(r + 1) * D]);
        let err = norm(&g.iter().zip(f).map(|(a, b)| a - b).collect::<Vec<_>>());
        assert!(
            err <= tol * (norm(f) + scale),
            "{name}: {what} row {r}: error {err:.3e}, finite differences {:.3e}, got {:?}",
            norm(f),
            &g[..8]
        );
    }
}

struct Case {
    x: Vec<f64>,
    w: Vec<f64>,
    fd_x: Vec<f64>,
    fd_w: Vec<f64>,
}

fn case(round: impl Fn(f64) -> f64) -> Case {
    let (x, w) = problem(round);
    // The scalers: saturated, as the backends must find them too.
    let z = [-1.0, 1.0, -1.0, -1.0];
    let out =
        reference::forward(&config(), &EmaState::default(), shape(), &x, &w, &LABELS).unwrap();
    assert_eq!(out.diagnostics.margin_scaler, z.to_vec());
    let (fd_x, fd_w) = finite_differences(&x, &w, &z);
    // The gates under test zero these components: the finite differences
    // agree (and they are not zero by construction: see `gated_open`).
    for &k in &GATED {
        assert!(fd_w[k].abs() < 1e-6, "dW[{k}] = {}", fd_w[k]);
    }
    Case { x, w, fd_x, fd_w }
}

/// `dW` components only a gated (row, class) pair reaches: class 0 in the
/// (e0, e1) plane (row 0's target, upper angle clip) and class 1 in the
/// (e2, e3) plane (row 1's target, cosine clamp).
const GATED: [usize; 4] = [0, 1, D + 2, D + 3];

fn shape() -> Shape {
    Shape::new(B, D, C)
}

fn check(name: &str, c: &Case, gx: &[f32], gw: &[f32], tol: f64) {
    let widen = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    assert_rows(name, "dX", &widen(gx), &c.fd_x, tol);
    assert_rows(name, "dW", &widen(gw), &c.fd_w, tol);
    let scale = c.fd_w.iter().map(|v| v * v).sum::<f64>().sqrt();
    for &k in &GATED {
        assert!(
            (gw[k] as f64).abs() <= 1e-5 * scale,
            "{name}: dW[{k}] = {:e} where a gate should stop the gradient",
            gw[k]
        );
    }
}

#[test]
fn reference_gates_match_finite_differences() {
    let c = case(|v| v as f32 as f64);
    let st = EmaState::default();
    let r64 = reference::forward_backward(&config(), &st, shape(), &c.x, &c.w, &LABELS).unwrap();
    assert_rows("reference f64", "dX", &r64.grad_features, &c.fd_x, 1e-5);
    assert_rows("reference f64", "dW", &r64.grad_weight, &c.fd_w, 1e-5);
    // With the gates open, those components would not be zero: the test
    // can fail. (Opening them here: the same loss without clamp and clip
    // has non-zero derivatives there.)
    assert!(gated_open(&c.x, &c.w).iter().all(|v| v.abs() > 1e-4));
    let (x, w) = (to_f32(&c.x), to_f32(&c.w));
    let r32 = reference::forward_backward(&config(), &st, shape(), &x, &w, &LABELS).unwrap();
    check(
        "reference f32",
        &c,
        &r32.grad_features,
        &r32.grad_weight,
        1e-3,
    );
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

#[test]
fn cpu_gates_match_finite_differences() {
    let c = case(|v| v as f32 as f64);
    let (x, w) = (to_f32(&c.x), to_f32(&c.w));
    let out = CpuAdaFace::new(config())
        .forward_backward_alloc(shape(), &x, &w, &LABELS)
        .unwrap();
    check("cpu f32", &c, &out.grad_features, &out.grad_weight, 1e-3);
    let n = naive::cpu::forward_backward(&config(), &EmaState::default(), shape(), &x, &w, &LABELS)
        .unwrap();
    check("naive cpu f32", &c, &n.grad_features, &n.grad_weight, 1e-3);

    let c = case(|v| bf16::from_f64(v).to_f64());
    let (x, w): (Vec<bf16>, Vec<bf16>) = (
        c.x.iter().map(|&v| bf16::from_f64(v)).collect(),
        c.w.iter().map(|&v| bf16::from_f64(v)).collect(),
    );
    let out = CpuAdaFace::new(config())
        .forward_backward_alloc(shape(), &x, &w, &LABELS)
        .unwrap();
    check("cpu bf16", &c, &out.grad_features, &out.grad_weight, 1e-3);
}

fn sim_step<E: adaface::launch::KernelElement>(
    c: &Case,
    from: impl Fn(f64) -> E,
) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<E> = c.x.iter().map(|&v| from(v)).collect();
    let w: Vec<E> = c.w.iter().map(|&v| from(v)).collect();
    let (mut gx, mut gw) = (vec![0.0f32; B * D], vec![0.0f32; C * D]);
    SimAdaFace::new(config())
        .forward_backward(shape(), &x, &w, &LABELS, &mut gx, &mut gw)
        .unwrap()
        .summary()
        .unwrap();
    (gx, gw)
}

#[test]
fn simulated_kernel_gates_match_finite_differences() {
    // f32: the tiled kernels; bf16 and f16 (D = 32): the flash kernels.
    let c = case(|v| v as f32 as f64);
    let (gx, gw) = sim_step(&c, |v| v as f32);
    check("sim f32", &c, &gx, &gw, 1e-3);
    let (mut nx, mut nw) = (vec![0.0f32; B * D], vec![0.0f32; C * D]);
    let (x, w) = (to_f32(&c.x), to_f32(&c.w));
    let summary = naive::sim::forward_backward(
        &config(),
        EmaState::default(),
        shape(),
        &x,
        &w,
        &LABELS,
        &mut nx,
        &mut nw,
    )
    .unwrap();
    assert!(summary.loss.is_finite());
    check("naive sim f32", &c, &nx, &nw, 1e-3);

    let c = case(|v| bf16::from_f64(v).to_f64());
    let (gx, gw) = sim_step(&c, bf16::from_f64);
    check("sim bf16", &c, &gx, &gw, 2e-3);

    let c = case(|v| f16::from_f64(v).to_f64());
    let (gx, gw) = sim_step(&c, f16::from_f64);
    check("sim f16", &c, &gx, &gw, 2e-3);
}

/// The same gates on a GPU, through the [`adaface::AdaFaceBackend`] trait
/// (host slices in, gradients back): f32 takes the tiled kernels, bf16 and
/// f16 (D = 32) the flash kernels where the device has them.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn cuda_kernel_gates_match_finite_differences() {
    use adaface::AdaFaceBackend;
    fn step<E, B: AdaFaceBackend<E>>(
        loss: &mut B,
        c: &Case,
        from: impl Fn(f64) -> E,
    ) -> (Vec<f32>, Vec<f32>) {
        let x: Vec<E> = c.x.iter().map(|&v| from(v)).collect();
        let w: Vec<E> = c.w.iter().map(|&v| from(v)).collect();
        let (mut gx, mut gw) = (vec![0.0f32; B * D], vec![0.0f32; C * D]);
        loss.set_state(EmaState::default()).unwrap();
        loss.forward_backward(shape(), &x, &w, &LABELS, &mut gx, &mut gw)
            .unwrap();
        (gx, gw)
    }
    let stream = adaface::cuda::default_stream(0).expect("no GPU visible");
    let mut loss = adaface::cuda::CudaAdaFace::new(stream, config()).unwrap();
    let c = case(|v| v as f32 as f64);
    let (gx, gw) = step(&mut loss, &c, |v| v as f32);
    check("cuda f32", &c, &gx, &gw, 1e-3);
    let c = case(|v| bf16::from_f64(v).to_f64());
    let (gx, gw) = step(&mut loss, &c, bf16::from_f64);
    check("cuda bf16", &c, &gx, &gw, 2e-3);
    let c = case(|v| f16::from_f64(v).to_f64());
    let (gx, gw) = step(&mut loss, &c, f16::from_f64);
    check("cuda f16", &c, &gx, &gw, 2e-3);
}
