//! SphereFace, CurricularFace and MagFace against their published formulas,
//! written out here independently of `src/math.rs`:
//!
//! * SphereFace (Liu et al. 2017): target `s (lambda cos + psi) / (1 + lambda)`,
//!   `psi(theta) = (-1)^k cos(m theta) - 2k` on `[k pi / m, (k + 1) pi / m]`;
//! * CurricularFace (Huang et al. 2020): target `s cos(theta + m)`, a
//!   negative `c > cos(theta_y + m)` becomes `s c (t + c)`, `t <- 0.01 mean
//!   target cosine + 0.99 t` before use, detached;
//! * MagFace (Meng et al. 2021): target `s cos(theta + m(a))` with
//!   `m(a) = (u_m - l_m) / (u_a - l_a) (a - l_a) + l_m`, `a = ||x||` clamped
//!   to `[l_a, u_a]`, plus `lambda_g mean(a / u_a^2 + 1 / a)`.
//!
//! Then finite differences in `f64` through the whole loss, the fast CPU
//! backend against the reference, and bad parameters rejected.

mod common;

use adaface::cpu::{self, CpuAdaFace, CpuOptions};
use adaface::math::sphere_psi;
use adaface::{reference, AdaFaceConfig, EmaState, Error, MarginPolicy, Shape};
use common::{margin_cfg as cfg, Inputs, RowNorms};
use std::f64::consts::PI;

/// Rows leaning towards their class rows (target cosines spread over
/// (0, 1)); row norms spread over `norm_lo..norm_hi`.
fn inputs(seed: u64, b: usize, d: usize, c: usize, norm_lo: f64, norm_hi: f64) -> Inputs {
    Inputs::leaning(
        seed,
        Shape::new(b, d, c),
        RowNorms::Between(norm_lo, norm_hi),
    )
}

const EPS: f64 = 1e-3;

fn cosines(x: &[f64], w: &[f64], shape: Shape) -> Vec<f64> {
    let (b, d, c) = (shape.batch, shape.dim, shape.classes);
    let norm = |r: &[f64]| r.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut out = vec![0.0; b * c];
    for i in 0..b {
        let xi = &x[i * d..(i + 1) * d];
        for j in 0..c {
            let wj = &w[j * d..(j + 1) * d];
            let dot: f64 = xi.iter().zip(wj).map(|(a, b)| a * b).sum();
            out[i * c + j] = (dot / (norm(xi) * norm(wj))).clamp(-1.0 + EPS, 1.0 - EPS);
        }
    }
    out
}

/// The published logits (`B x C`) and the loss, with CurricularFace's `t`
/// as given (already updated) and MagFace's regulariser in the loss.
fn published(policy: MarginPolicy, s: f64, inp: &Inputs, x: &[f64], t: f64) -> (Vec<f64>, f64) {
    let (b, d, c) = (inp.shape.batch, inp.shape.dim, inp.shape.classes);
    let cos = cosines(x, &inp.w, inp.shape);
    let mut logits = vec![0.0; b * c];
    let mut reg = 0.0;
    for i in 0..b {
        let y = inp.labels[i] as usize;
        let cy = cos[i * c + y];
        let theta = cy.acos();
        let norm = x[i * d..(i + 1) * d]
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt();
        for j in 0..c {
            let cj = cos[i * c + j];
            logits[i * c + j] = s * match policy {
                MarginPolicy::SphereFace { m, lambda } if j == y => {
                    let k = (m as f64 * theta / PI).floor();
                    let sign = if k as i64 % 2 == 0 { 1.0 } else { -1.0 };
                    let psi = sign * (m as f64 * theta).cos() - 2.0 * k;
                    (lambda * cy + psi) / (1.0 + lambda)
                }
                MarginPolicy::CurricularFace { m } if j == y => (theta + m).cos(),
                MarginPolicy::CurricularFace { m } if cj > (theta + m).cos() => cj * (t + cj),
                MarginPolicy::MagFace {
                    l_a, u_a, l_m, u_m, ..
                } if j == y => {
                    let a = norm.clamp(l_a, u_a);
                    let margin = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m;
                    (theta + margin).cos()
                }
                _ => cj,
            };
        }
        if let MarginPolicy::MagFace {
            l_a, u_a, lambda_g, ..
        } = policy
        {
            let a = norm.clamp(l_a, u_a);
            reg += lambda_g * (a / (u_a * u_a) + 1.0 / a);
        }
    }
    let ce: f64 = logits
        .chunks(c)
        .enumerate()
        .map(|(i, row)| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - row[inp.labels[i] as usize]
        })
        .sum();
    (logits, (ce + reg) / b as f64)
}

/// The published update of CurricularFace's `t`: momentum 0.01 on the mean
/// clamped target cosine.
fn published_t(inp: &Inputs, t0: f64) -> f64 {
    let c = inp.shape.classes;
    let cos = cosines(&inp.x, &inp.w, inp.shape);
    let mean = (0..inp.shape.batch)
        .map(|i| cos[i * c + inp.labels[i] as usize])
        .sum::<f64>()
        / inp.shape.batch as f64;
    0.01 * mean + 0.99 * t0
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn family() -> Vec<MarginPolicy> {
    vec![
        MarginPolicy::sphere_face(),
        MarginPolicy::SphereFace { m: 3, lambda: 0.0 },
        MarginPolicy::SphereFace {
            m: 2,
            lambda: 1000.0,
        },
        MarginPolicy::curricular_face(),
        MarginPolicy::CurricularFace { m: 0.3 },
        MarginPolicy::mag_face(),
        MarginPolicy::MagFace {
            l_a: 5.0,
            u_a: 40.0,
            l_m: 0.2,
            u_m: 0.6,
            lambda_g: 3.0,
        },
    ]
}

#[test]
fn defaults_are_the_papers() {
    assert_eq!(
        MarginPolicy::sphere_face(),
        MarginPolicy::SphereFace { m: 4, lambda: 5.0 }
    );
    assert_eq!(
        MarginPolicy::curricular_face(),
        MarginPolicy::CurricularFace { m: 0.5 }
    );
    assert_eq!(
        MarginPolicy::mag_face(),
        MarginPolicy::MagFace {
            l_a: 10.0,
            u_a: 110.0,
            l_m: 0.45,
            u_m: 0.8,
            lambda_g: 35.0
        }
    );
    assert_eq!(EmaState::default().curricular_t, 0.0);
    for p in family() {
        assert!(!p.is_affine());
        cfg(p, 64.0);
    }
}

#[test]
fn sphereface_psi_is_the_published_piecewise_function() {
    for m in 1..=6u32 {
        let mut prev = f64::INFINITY;
        for step in 1..2000 {
            let theta = PI * step as f64 / 2000.0;
            let c = theta.cos();
            let (psi, dpsi) = sphere_psi(c, m);
            let k = (m as f64 * theta / PI).floor().min(m as f64 - 1.0);
            let sign = if k as i64 % 2 == 0 { 1.0 } else { -1.0 };
            let want = sign * (m as f64 * theta).cos() - 2.0 * k;
            assert!(
                (psi - want).abs() < 1e-12,
                "m={m} theta={theta}: {psi} vs {want}"
            );
            // psi decreases in theta (the property the paper builds it for).
            assert!(psi <= prev + 1e-12, "m={m}: psi not monotone at {theta}");
            prev = psi;
            // d psi / dc = (-1)^k m sin(m theta) / sin(theta).
            let want_d = sign * m as f64 * (m as f64 * theta).sin() / theta.sin();
            assert!(
                (dpsi - want_d).abs() < 1e-9 * want_d.abs().max(1.0),
                "m={m} theta={theta}: dpsi {dpsi} vs {want_d}"
            );
        }
    }
}

#[test]
fn logits_loss_and_state_match_the_published_formulas() {
    for (n, policy) in family().into_iter().enumerate() {
        for &(b, d, c) in &[(7, 13, 17), (1, 5, 3), (33, 24, 61)] {
            let s = 64.0;
            let cfg = cfg(policy, s);
            let state = EmaState {
                curricular_t: 0.25,
                ..EmaState::default()
            };
            let inp = inputs(300 + n as u64, b, d, c, 2.0, 130.0);
            let out = reference::forward(&cfg, &state, inp.shape, &inp.x, &inp.w, &inp.labels)
                .expect("forward");
            let t = if matches!(policy, MarginPolicy::CurricularFace { .. }) {
                let t = published_t(&inp, 0.25);
                assert!((out.stats.state_after.curricular_t - t).abs() < 1e-15);
                t
            } else {
                // Every other policy carries t through unchanged.
                assert_eq!(out.stats.state_after.curricular_t, 0.25);
                0.25
            };
            let (logits, loss) = published(policy, s, &inp, &inp.x, t);
            let err = rel_err(&out.logits, &logits);
            assert!(
                err < 1e-12,
                "{policy:?} {b}x{d}x{c}: logits rel err {err:e}"
            );
            assert!(
                (out.loss - loss).abs() <= 1e-12 * loss.abs().max(1.0),
                "{policy:?} {b}x{d}x{c}: loss {} vs published {loss}",
                out.loss
            );
            let mean_sample = out.diagnostics.sample_loss.iter().sum::<f64>() / b as f64;
            assert!((mean_sample - out.loss).abs() < 1e-12 * loss.abs().max(1.0));
        }
    }
}

/// CurricularFace modulates some negatives in these inputs (else the test
/// of the modulated gradient would prove nothing) and none sits on the mask
/// boundary (finite differences would cross it).
fn hard_negatives(policy: MarginPolicy, inp: &Inputs) -> usize {
    let MarginPolicy::CurricularFace { m } = policy else {
        return 0;
    };
    let c = inp.shape.classes;
    let cos = cosines(&inp.x, &inp.w, inp.shape);
    let mut hard = 0;
    for i in 0..inp.shape.batch {
        let th = (cos[i * c + inp.labels[i] as usize].acos() + m).cos();
        for j in (0..c).filter(|&j| j != inp.labels[i] as usize) {
            let gap = cos[i * c + j] - th;
            assert!(
                gap.abs() > 1e-4,
                "a cosine on the mask boundary: pick another seed"
            );
            hard += (gap > 0.0) as usize;
        }
    }
    hard
}

#[test]
fn gradients_match_finite_differences_of_the_whole_loss() {
    for (n, policy) in family().into_iter().enumerate() {
        let (b, d, c) = (6, 7, 9);
        // Norms on both sides of MagFace's clamp: the gate is tested too.
        let inp = inputs(500 + n as u64, b, d, c, 2.0, 130.0);
        let cfg = cfg(policy, 16.0);
        let state = EmaState {
            curricular_t: 0.4,
            ..EmaState::default()
        };
        let step =
            reference::forward_backward(&cfg, &state, inp.shape, &inp.x, &inp.w, &inp.labels)
                .expect("step");
        if matches!(policy, MarginPolicy::CurricularFace { .. }) {
            assert!(hard_negatives(policy, &inp) > 0, "no hard negative to test");
        }
        // The whole loss: SphereFace and MagFace do not read the EMA state,
        // so this is the forward's loss itself (through the norm for MagFace);
        // CurricularFace holds t at the step's value (detached, as the paper).
        let t = step.stats.state_after.curricular_t;
        let z = step.diagnostics.margin_scaler.clone();
        let loss = |x: &[f64], w: &[f64]| -> f64 {
            let whole = reference::forward(&cfg, &state, inp.shape, x, w, &inp.labels)
                .expect("forward")
                .loss;
            let detached = reference::detached_loss_at(&cfg, inp.shape, x, w, &inp.labels, &z, t)
                .expect("loss");
            if matches!(policy, MarginPolicy::CurricularFace { .. }) {
                detached
            } else {
                assert_eq!(whole, detached);
                whole
            }
        };
        let fd = |v: &[f64], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
            (0..v.len())
                .map(|k| {
                    let h = 1e-6 * v[k].abs().max(1.0);
                    let (mut p, mut m) = (v.to_vec(), v.to_vec());
                    p[k] += h;
                    m[k] -= h;
                    (f(&p) - f(&m)) / (2.0 * h)
                })
                .collect()
        };
        let gx = fd(&inp.x, &|x| loss(x, &inp.w));
        let gw = fd(&inp.w, &|w| loss(&inp.x, w));
        let ex = rel_err(&step.grad_features, &gx);
        let ew = rel_err(&step.grad_weight, &gw);
        assert!(ex < 1e-6, "{policy:?}: dX rel err {ex:e}");
        assert!(ew < 1e-6, "{policy:?}: dW rel err {ew:e}");
    }
}

#[test]
fn magface_regulariser_gradient_reaches_the_raw_features_along_the_norm() {
    // One class: the cross-entropy is zero, so only lambda_g g(a) is left,
    // and its gradient is lambda_g g'(a) x / ||x|| / B inside the clamp, 0 outside.
    let policy = MarginPolicy::mag_face();
    let cfg = cfg(policy, 64.0);
    let (b, d) = (4, 5);
    let inp = inputs(9, b, d, 1, 1.0, 1.0);
    let norms = [50.0, 5.0, 200.0, 10.5];
    let mut x = inp.x.clone();
    for i in 0..b {
        for k in 0..d {
            x[i * d + k] *= norms[i];
        }
    }
    let st = EmaState::default();
    let out = reference::forward_backward(&cfg, &st, inp.shape, &x, &inp.w, &inp.labels).unwrap();
    let mut want_loss = 0.0;
    for i in 0..b {
        let a = norms[i];
        let ac = a.clamp(10.0, 110.0);
        want_loss += 35.0 * (ac / 110.0f64.powi(2) + 1.0 / ac) / b as f64;
        let dg = if (10.0..=110.0).contains(&a) {
            35.0 * (1.0 / 110.0f64.powi(2) - 1.0 / (a * a)) / b as f64
        } else {
            0.0
        };
        for k in 0..d {
            let want = dg * x[i * d + k] / a;
            let got = out.grad_features[i * d + k];
            assert!((got - want).abs() < 1e-12, "row {i}: {got} vs {want}");
        }
    }
    assert!((out.loss - want_loss).abs() < 1e-12);
}

#[test]
fn fast_cpu_backend_agrees_with_the_reference_over_steps() {
    for (n, policy) in family().into_iter().enumerate() {
        for &(b, d, c) in &[(5, 16, 300), (37, 33, 129)] {
            let cfg = cfg(policy, 64.0);
            let inp = inputs(700 + n as u64, b, d, c, 3.0, 120.0);
            let x32: Vec<f32> = inp.x.iter().map(|&v| v as f32).collect();
            let w32: Vec<f32> = inp.w.iter().map(|&v| v as f32).collect();
            let x64: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
            let w64: Vec<f64> = w32.iter().map(|&v| v as f64).collect();
            // Small tiles and several partitions: every epilogue path runs.
            let opts = CpuOptions {
                class_tile: 32,
                row_tile: 8,
                partitions: 3,
            };
            let mut fast = CpuAdaFace::with_options(cfg, opts).unwrap();
            let mut state = cfg.initial_state();
            for step in 0..3 {
                let exact =
                    reference::forward_backward(&cfg, &state, inp.shape, &x64, &w64, &inp.labels)
                        .unwrap();
                let got = fast
                    .forward_backward_alloc(inp.shape, &x32, &w32, &inp.labels)
                    .unwrap();
                let tag = format!("{policy:?} {b}x{d}x{c} step {step}");
                assert!(
                    (got.loss as f64 - exact.loss).abs() < 2e-5 * exact.loss.abs().max(1.0),
                    "{tag}: loss {} vs {}",
                    got.loss,
                    exact.loss
                );
                let gx: Vec<f64> = got.grad_features.iter().map(|&v| v as f64).collect();
                let gw: Vec<f64> = got.grad_weight.iter().map(|&v| v as f64).collect();
                let ex = rel_err(&gx, &exact.grad_features);
                let ew = rel_err(&gw, &exact.grad_weight);
                assert!(ex < 1e-4 && ew < 1e-4, "{tag}: dX {ex:e} dW {ew:e}");
                let (a, e) = (fast.state(), exact.stats.state_after);
                assert!((a.curricular_t - e.curricular_t).abs() < 1e-6, "{tag}: t");
                assert!((a.batch_mean - e.batch_mean).abs() < 1e-4 * e.batch_mean.abs());
                state = e;
            }
            if matches!(policy, MarginPolicy::CurricularFace { .. }) {
                assert!(fast.state().curricular_t > 0.0, "t never moved");
            }
        }
    }
}

#[test]
fn fast_cpu_forward_agrees_and_can_leave_t_alone() {
    let cfg = cfg(MarginPolicy::curricular_face(), 64.0);
    let inp = inputs(41, 9, 12, 50, 1.0, 50.0);
    let x32: Vec<f32> = inp.x.iter().map(|&v| v as f32).collect();
    let w32: Vec<f32> = inp.w.iter().map(|&v| v as f32).collect();
    let mut fast = CpuAdaFace::new(cfg);
    let before = fast.state();
    let out = fast
        .forward(inp.shape, &x32, &w32, &inp.labels, false)
        .unwrap();
    assert_eq!(fast.state(), before);
    let t = published_t(&inp, 0.0);
    assert!((out.stats.state_after.curricular_t - t).abs() < 1e-6);
    fast.forward(inp.shape, &x32, &w32, &inp.labels, true)
        .unwrap();
    assert!((fast.state().curricular_t - t).abs() < 1e-6);
    // The stateless entry point agrees.
    let again = cpu::forward(
        &cfg,
        &before,
        &CpuOptions::default(),
        inp.shape,
        &x32,
        &w32,
        &inp.labels,
    )
    .unwrap();
    assert_eq!(again.loss, out.loss);
}

#[test]
fn bad_parameters_are_rejected() {
    let bad = [
        (MarginPolicy::SphereFace { m: 0, lambda: 5.0 }, "m"),
        (MarginPolicy::SphereFace { m: 17, lambda: 5.0 }, "m"),
        (MarginPolicy::SphereFace { m: 4, lambda: -1.0 }, "lambda"),
        (
            MarginPolicy::SphereFace {
                m: 4,
                lambda: f64::NAN,
            },
            "lambda",
        ),
        (MarginPolicy::CurricularFace { m: -0.1 }, "m"),
        (MarginPolicy::CurricularFace { m: 3.2 }, "m"),
        (MarginPolicy::CurricularFace { m: f64::INFINITY }, "m"),
    ];
    let mag = |l_a, u_a, l_m, u_m, lambda_g| MarginPolicy::MagFace {
        l_a,
        u_a,
        l_m,
        u_m,
        lambda_g,
    };
    let bad_mag = [
        (mag(0.0, 110.0, 0.45, 0.8, 35.0), "l_a"),
        (mag(-1.0, 110.0, 0.45, 0.8, 35.0), "l_a"),
        (mag(10.0, 10.0, 0.45, 0.8, 35.0), "u_a"),
        (mag(10.0, f64::INFINITY, 0.45, 0.8, 35.0), "u_a"),
        (mag(10.0, 110.0, -0.1, 0.8, 35.0), "l_m"),
        (mag(10.0, 110.0, 0.45, 0.4, 35.0), "u_m"),
        (mag(10.0, 110.0, 0.45, 3.5, 35.0), "u_m"),
        (mag(10.0, 110.0, 0.45, 0.8, -1.0), "lambda_g"),
        (mag(10.0, 110.0, 0.45, 0.8, f64::NAN), "lambda_g"),
    ];
    for (policy, name) in bad.into_iter().chain(bad_mag) {
        match AdaFaceConfig::builder().margin(policy).build() {
            Err(Error::InvalidConfig { parameter, .. }) => {
                assert_eq!(parameter, name, "{policy:?}")
            }
            other => panic!("{policy:?}: {other:?}"),
        }
    }
    // A t outside [-1, 1] is not a state; the loss keeps the one it had.
    let mut fast = CpuAdaFace::new(cfg(MarginPolicy::curricular_face(), 64.0));
    let before = fast.state();
    for t in [1.5, -1.01, f64::NAN, f64::INFINITY] {
        let st = EmaState {
            curricular_t: t,
            ..before
        };
        assert!(matches!(
            fast.set_state(st),
            Err(Error::InvalidState { .. })
        ));
        assert_eq!(fast.state(), before);
        let inp = inputs(1, 2, 3, 4, 1.0, 2.0);
        assert!(matches!(
            reference::forward(
                &cfg(MarginPolicy::curricular_face(), 64.0),
                &st,
                inp.shape,
                &inp.x,
                &inp.w,
                &inp.labels
            ),
            Err(Error::InvalidState { .. })
        ));
    }
}

#[test]
fn backends_without_the_policy_reject_it_and_change_nothing() {
    let inp = inputs(3, 4, 6, 10, 1.0, 30.0);
    let x32: Vec<f32> = inp.x.iter().map(|&v| v as f32).collect();
    let w32: Vec<f32> = inp.w.iter().map(|&v| v as f32).collect();
    for policy in family() {
        let cfg = cfg(policy, 64.0);
        let st = cfg.initial_state();
        let unsupported = |r: Error| {
            assert!(
                matches!(r, Error::UnsupportedMargin { policy: p, .. } if p == policy.name()),
                "{policy:?}: {r:?}"
            )
        };
        unsupported(
            adaface::naive::cpu::forward_backward(&cfg, &st, inp.shape, &x32, &w32, &inp.labels)
                .unwrap_err(),
        );
        let spec = adaface::shard::ShardSpec::new(0, 10, 10).unwrap();
        let shard = adaface::cpu::ShardedCpuAdaFace::new(cfg, spec);
        unsupported(
            shard
                .phase1(inp.shape, &x32, &w32, &inp.labels, None)
                .unwrap_err(),
        );
        assert_eq!(shard.state(), st);
    }
}

#[test]
fn affine_policies_carry_t_through_every_backend_state() {
    let cfg = AdaFaceConfig::default();
    let inp = inputs(5, 6, 8, 11, 1.0, 30.0);
    let x32: Vec<f32> = inp.x.iter().map(|&v| v as f32).collect();
    let w32: Vec<f32> = inp.w.iter().map(|&v| v as f32).collect();
    let st = EmaState {
        curricular_t: -0.3,
        ..EmaState::default()
    };
    let mut fast = CpuAdaFace::new(cfg);
    fast.set_state(st).unwrap();
    fast.forward_backward_alloc(inp.shape, &x32, &w32, &inp.labels)
        .unwrap();
    assert_eq!(fast.state().curricular_t, -0.3);
    assert_ne!(fast.state().batch_mean, st.batch_mean);
    #[cfg(feature = "sim")]
    {
        use adaface::AdaFaceBackend;
        let mut sim = common::SimAdaFace::new(cfg);
        sim.set_state(st).unwrap();
        let (mut dx, mut dw) = (vec![0.0f32; x32.len()], vec![0.0f32; w32.len()]);
        let labels = &inp.labels;
        let r = AdaFaceBackend::<f32>::forward_backward(
            &mut sim, inp.shape, &x32, &w32, labels, &mut dx, &mut dw,
        )
        .unwrap();
        assert_eq!(r.state_after.curricular_t, -0.3);
        assert_eq!(sim.state().unwrap().curricular_t, -0.3);
    }
}

#[test]
fn eval_case_files_name_the_new_policies_and_their_parameters() {
    // The checks below compare values read back from text bit for bit: case
    // files must carry every double exactly, on any inputs.
    for seed in [11u64, 17, 29, 41] {
        eval_case_files_round_trip(seed);
    }
}

/// One case file per new policy on the inputs of `seed`: parsed, run on the
/// reference and the CPU backend, written and read back exactly.
fn eval_case_files_round_trip(seed: u64) {
    use adaface::eval::{run_case, Device};
    use adaface::golden::{parse_case, parse_eval_output, write_eval_output};
    use adaface::Dtype;
    let inp = inputs(seed, 3, 4, 5, 5.0, 60.0);
    let nums = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:e}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let labels = inp
        .labels
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let case_json = |margin: &str| {
        format!(
            r#"{{"config": {{"B": 3, "D": 4, "C": 5, {margin}}}, "weight": [{}],
               "steps": [{{"features": [{}], "labels": [{labels}]}},
                         {{"features": [{}], "labels": [{labels}]}}]}}"#,
            nums(&inp.w),
            nums(&inp.x),
            nums(&inp.x)
        )
    };
    let cases = [
        (
            r#""margin": "sphereface", "m": 3, "lambda": 2.5"#,
            MarginPolicy::SphereFace { m: 3, lambda: 2.5 },
        ),
        (
            r#""margin": "curricularface", "m": 0.3, "curricular_t_init": 0.2"#,
            MarginPolicy::CurricularFace { m: 0.3 },
        ),
        (r#""margin": "magface""#, MarginPolicy::mag_face()),
        (
            r#""margin": "magface", "l_a": 2, "u_a": 50, "l_m": 0.1, "u_m": 0.5, "lambda_g": 4"#,
            MarginPolicy::MagFace {
                l_a: 2.0,
                u_a: 50.0,
                l_m: 0.1,
                u_m: 0.5,
                lambda_g: 4.0,
            },
        ),
    ];
    for (margin, policy) in cases {
        let case = parse_case(&case_json(margin)).expect("case");
        assert_eq!(case.config.margin(), policy);
        let exact = run_case(&case, Device::Reference, Dtype::F64).unwrap();
        let fast = run_case(&case, Device::Cpu, Dtype::F32).unwrap();
        let mut st = case.config.initial_state();
        for (k, (e, f)) in exact.iter().zip(&fast).enumerate() {
            let want =
                reference::forward(&case.config, &st, inp.shape, &inp.x, &inp.w, &inp.labels)
                    .unwrap();
            assert_eq!(e.loss, want.loss, "{margin} step {k}");
            assert_eq!(e.state_after, want.stats.state_after);
            st = want.stats.state_after;
            assert!((e.loss - f.loss).abs() < 1e-4 * e.loss.abs().max(1.0));
        }
        if matches!(policy, MarginPolicy::CurricularFace { .. }) {
            assert_eq!(case.config.initial_state().curricular_t, 0.2);
            assert!((exact[1].state_after.curricular_t - 0.2).abs() > 1e-6);
        }
        // The output carries t and reads back.
        let text = write_eval_output("reference", Dtype::F64, &exact);
        let back = parse_eval_output(&text).unwrap();
        assert_eq!(back[1].state_after, exact[1].state_after);
        #[cfg(feature = "sim")]
        {
            // Every policy runs in the kernels, t carried through the case.
            let sim = run_case(&case, Device::Sim, Dtype::F32).unwrap();
            for (k, (s, e)) in sim.iter().zip(&exact).enumerate() {
                assert!(
                    (s.loss - e.loss).abs() < 1e-4 * e.loss.abs(),
                    "{margin} step {k}"
                );
                let (ts, te) = (s.state_after.curricular_t, e.state_after.curricular_t);
                assert!((ts - te).abs() < 1e-6, "{margin} step {k}: t {ts} vs {te}");
            }
        }
    }
    for bad in [
        r#""margin": "sphereface", "m": 2.5"#,
        r#""margin": "sphereface", "m": -1"#,
        r#""margin": "magface", "u_a": 5"#,
        r#""margin": "curricularface", "curricular_t_init": 3"#,
    ] {
        assert!(parse_case(&case_json(bad)).is_err(), "{bad}");
    }
}
