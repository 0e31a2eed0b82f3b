//! The margins beyond the affine formula in the fused kernels (simulator)
//! against the f64 reference on the same rounded inputs: SphereFace,
//! CurricularFace (modulated negatives, t kept with the EMA state) and
//! MagFace (norm-dependent margin, regulariser, gradient along x / ||x||).
//! Every dtype and label type, the tiled, flash and wgmma families,
//! awkward shapes, several class tiles per split, several steps with the
//! state carried, determinism, and bad input rejected with nothing written.

mod common;

use adaface::launch::{KernelElement, KernelLabel, PlanLimits};
use adaface::{AdaFaceConfig, Dtype, EmaState, Error, MarginPolicy, Shape};
use common::SimAdaFace;
use common::*;
use half::bf16;

/// A state whose CurricularFace t is not the initial 0, so that carrying
/// and moving it are both visible.
fn start_state(cfg: &AdaFaceConfig) -> EmaState {
    EmaState {
        curricular_t: 0.125,
        ..cfg.initial_state()
    }
}

fn step<E: KernelElement, L: KernelLabel + TryFrom<i64>>(
    cfg: &AdaFaceConfig,
    limits: PlanLimits,
    inp: &Inputs,
) -> StepErrors {
    sim_errors::<E, L>(cfg, limits, start_state(cfg), inp)
}

/// One step on the simulator for any dtype and label type.
fn step_any(
    dtype: Dtype,
    i32_labels: bool,
    cfg: &AdaFaceConfig,
    limits: PlanLimits,
    inp: &Inputs,
) -> StepErrors {
    sim_errors_for(dtype, i32_labels, cfg, limits, start_state(cfg), inp)
}

fn sphere_policies() -> Vec<MarginPolicy> {
    vec![
        MarginPolicy::sphere_face(),
        MarginPolicy::SphereFace { m: 3, lambda: 0.0 },
        MarginPolicy::SphereFace {
            m: 2,
            lambda: 1000.0,
        },
        MarginPolicy::SphereFace { m: 1, lambda: 0.5 },
    ]
}

#[test]
fn sphereface_matches_the_reference_for_every_dtype_on_awkward_shapes() {
    for (k, policy) in sphere_policies().into_iter().enumerate() {
        let cfg = AdaFaceConfig::builder()
            .margin(policy)
            .s(30.0)
            .t_alpha(0.5)
            .build()
            .unwrap();
        for (n, &(b, d, c)) in [(7, 64, 77), (1, 24, 3), (33, 40, 129)].iter().enumerate() {
            let inp = random_inputs(900 + 10 * k as u64 + n as u64, b, d, c);
            for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
                for i32_labels in [false, true] {
                    let e = step_any(dtype, i32_labels, &cfg, exact_limits(), &inp);
                    e.assert_f32_accuracy(&format!(
                        "{policy:?} {b}x{d}x{c} {dtype} i32={i32_labels}"
                    ));
                }
            }
        }
    }
}

#[test]
fn sphereface_with_several_class_tiles_per_split() {
    let cfg = AdaFaceConfig::builder()
        .margin(MarginPolicy::sphere_face())
        .build()
        .unwrap();
    let inp = random_inputs(77, 33, 64, 300);
    for splits in [1usize, 2] {
        let limits = PlanLimits {
            target_blocks: splits * 2,
            dx_budget_bytes: splits * 33 * 64 * 4,
            max_backward_splits: splits,
            ..PlanLimits::default()
        };
        step::<f32, i64>(&cfg, limits, &inp).assert_f32_accuracy(&format!("{splits} splits"));
    }
}

#[test]
fn sphereface_changes_the_loss_so_the_test_is_not_vacuous() {
    // The same inputs under ArcFace and SphereFace give different losses in
    // the kernels, each matching its own reference.
    let inp = random_inputs(5, 9, 32, 40);
    let x = round::<f32>(&inp.x);
    let w = round::<f32>(&inp.w);
    let loss = |policy| {
        let cfg = AdaFaceConfig::builder().margin(policy).build().unwrap();
        let mut sim = SimAdaFace::new(cfg);
        sim.forward(inp.shape, &x, &w, &inp.labels, false)
            .unwrap()
            .summary()
            .unwrap()
            .loss
    };
    let (a, s) = (
        loss(MarginPolicy::ArcFace { m: 0.5 }),
        loss(MarginPolicy::sphere_face()),
    );
    assert!((a - s).abs() > 1e-3 * a.abs(), "{a} vs {s}");
}

/// Inputs for CurricularFace and MagFace: rows leaning towards their
/// class (target cosines over (0, 1), so that some negatives lie above
/// each row's threshold and some below) with norms uniform in [5, 120),
/// across both of MagFace's clamp bounds (10 and 110).
fn leaning(seed: u64, b: usize, d: usize, c: usize) -> Inputs {
    Inputs::leaning(seed, Shape::new(b, d, c), RowNorms::Between(5.0, 120.0))
}

/// The f32 bounds, with the loss's at 1e-5: the loss is a difference of
/// logits of size `s` from f32 cosines (and f32 thresholds that pick the
/// modulated negatives), measured up to 1.8e-6 relative at `B = 1`.
const NON_AFFINE_BOUNDS: Bounds = Bounds {
    loss: 1e-5,
    ..Bounds::F32
};

/// [`NON_AFFINE_BOUNDS`] in the exact mode, the single-rounded bounds of
/// dX and dW otherwise.
fn bounds_for(limits: &PlanLimits, dtype: Dtype) -> Bounds {
    if limits.split_gradients {
        NON_AFFINE_BOUNDS
    } else {
        Bounds {
            loss: NON_AFFINE_BOUNDS.loss,
            ..Bounds::flash_single(dtype)
        }
    }
}

fn non_affine() -> Vec<MarginPolicy> {
    vec![
        MarginPolicy::curricular_face(),
        MarginPolicy::CurricularFace { m: 0.3 },
        MarginPolicy::mag_face(),
        MarginPolicy::MagFace {
            l_a: 20.0,
            u_a: 90.0,
            l_m: 0.3,
            u_m: 0.6,
            lambda_g: 5.0,
        },
    ]
}

fn cfg_for(policy: MarginPolicy) -> AdaFaceConfig {
    AdaFaceConfig::builder()
        .margin(policy)
        .s(32.0)
        .t_alpha(0.3)
        .build()
        .unwrap()
}

/// The family's plan limits: the default plan (flash for bf16 / f16 where
/// it applies, single-rounded gradient products), its exact mode, tiled
/// only, and the flash family on wgmma.
fn families() -> [(&'static str, PlanLimits); 4] {
    [
        ("default", PlanLimits::default()),
        ("exact", exact_limits()),
        (
            "tiled",
            PlanLimits {
                flash: false,
                ..PlanLimits::default()
            },
        ),
        (
            "wgmma",
            PlanLimits {
                wgmma: true,
                ..PlanLimits::default()
            },
        ),
    ]
}

#[test]
fn curricularface_and_magface_match_the_reference_for_every_dtype_and_family() {
    let _g = counter_lock();
    for (k, policy) in non_affine().into_iter().enumerate() {
        let cfg = cfg_for(policy);
        for (n, &(b, d, c)) in [(7, 64, 77), (1, 24, 3), (33, 40, 129), (65, 128, 200)]
            .iter()
            .enumerate()
        {
            let inp = leaning(1300 + 10 * k as u64 + n as u64, b, d, c);
            for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
                for (family, limits) in families() {
                    let wg_before = wgmma_count();
                    let e = step_any(dtype, n % 2 == 1, &cfg, limits, &inp);
                    let what = format!("{policy:?} {b}x{d}x{c} {dtype} {family}");
                    println!("{what}: {e:?}");
                    e.assert_within(bounds_for(&limits, dtype), &what);
                    // The wgmma kernels ran where they apply (bf16, D % 128 == 0).
                    let wg = wgmma_count() > wg_before;
                    assert_eq!(
                        wg,
                        family == "wgmma" && dtype == Dtype::BF16 && d % 128 == 0,
                        "{what}"
                    );
                }
            }
        }
    }
}

#[test]
fn curricularface_and_magface_with_several_class_tiles_per_split() {
    for policy in non_affine() {
        let cfg = cfg_for(policy);
        let inp = leaning(77, 33, 64, 300);
        for splits in [1usize, 2] {
            let limits = PlanLimits {
                target_blocks: splits * 2,
                dx_budget_bytes: splits * 33 * 64 * 4,
                max_backward_splits: splits,
                flash_blocks: splits,
                ..exact_limits()
            };
            for dtype in [Dtype::F32, Dtype::BF16] {
                step_any(dtype, false, &cfg, limits, &inp).assert_within(
                    NON_AFFINE_BOUNDS,
                    &format!("{policy:?} {dtype} {splits} splits"),
                );
            }
        }
    }
}

#[test]
fn the_state_and_curricular_t_carry_over_steps_as_in_the_reference() {
    for policy in non_affine() {
        let cfg = cfg_for(policy);
        for dtype in [Dtype::F32, Dtype::BF16] {
            let mut sim = SimAdaFace::new(cfg).with_limits(exact_limits());
            let mut state = cfg.initial_state();
            for k in 0..4u64 {
                let inp = leaning(40 + k, 9 + 2 * k as usize, 64, 70);
                let out = match dtype {
                    Dtype::F32 => sim_step::<f32, i64>(&mut sim, &inp),
                    _ => sim_step::<bf16, i64>(&mut sim, &inp),
                }
                .unwrap();
                let r = reference_for(dtype, &cfg, &state, &inp);
                out.errors(&r)
                    .assert_within(NON_AFFINE_BOUNDS, &format!("{policy:?} {dtype} step {k}"));
                let after = r.state_after();
                if matches!(policy, MarginPolicy::CurricularFace { .. }) {
                    // t moves every step, towards the batch's target cosines.
                    assert!((after.curricular_t - state.curricular_t).abs() > 1e-4);
                } else {
                    assert_eq!(after.curricular_t, state.curricular_t);
                }
                assert_eq!(sim.state().unwrap(), out.state);
                state = after;
            }
        }
    }
}

/// The share of negative cosines above their row's CurricularFace
/// threshold `cos(theta_y + m)`, in f64.
fn hard_negative_share(inp: &Inputs, m: f64) -> f64 {
    let Shape {
        batch: b,
        dim: d,
        classes: c,
    } = inp.shape;
    let unit = |v: &[f64]| {
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        v.iter().map(|a| a / n).collect::<Vec<_>>()
    };
    let cos = |i: usize, j: usize| {
        let x = unit(&inp.x[i * d..(i + 1) * d]);
        let w = unit(&inp.w[j * d..(j + 1) * d]);
        x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut hard = 0usize;
    for i in 0..b {
        let y = inp.labels[i] as usize;
        let threshold = (cos(i, y).acos() + m).cos();
        hard += (0..c).filter(|&j| j != y && cos(i, j) > threshold).count();
    }
    hard as f64 / (b * (c - 1)) as f64
}

#[test]
fn the_checks_are_not_vacuous() {
    // CurricularFace: the inputs hold hard negatives and easy ones, and the
    // loss differs from ArcFace's with the same margin.
    let inp = leaning(5, 17, 64, 60);
    let share = hard_negative_share(&inp, 0.5);
    assert!(share > 0.05 && share < 0.95, "hard-negative share {share}");
    let x = round::<f32>(&inp.x);
    let w = round::<f32>(&inp.w);
    let run = |policy| {
        let mut sim = SimAdaFace::new(cfg_for(policy));
        let (mut dx, mut dw) = (vec![0.0f32; x.len()], vec![0.0f32; w.len()]);
        let loss = sim
            .forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, &mut dw)
            .unwrap()
            .summary()
            .unwrap()
            .loss;
        (loss, dx)
    };
    let (arc, arc_dx) = run(MarginPolicy::ArcFace { m: 0.5 });
    let (cur, _) = run(MarginPolicy::CurricularFace { m: 0.5 });
    assert!((arc - cur).abs() > 1e-3 * arc.abs(), "{arc} vs {cur}");
    // MagFace: norms on both sides of the clamp, and the radial part of dX
    // (along x_i, which the other policies' gradients never have) present
    // exactly on the rows inside [l_a, u_a].
    let (_, mag_dx) = run(MarginPolicy::mag_face());
    let d = inp.shape.dim;
    let (mut inside, mut outside) = (0, 0);
    for i in 0..inp.shape.batch {
        let xi = &inp.x[i * d..(i + 1) * d];
        let norm = xi.iter().map(|v| v * v).sum::<f64>().sqrt();
        let along = |g: &[f32]| {
            let g = &g[i * d..(i + 1) * d];
            g.iter().zip(xi).map(|(a, b)| *a as f64 * b).sum::<f64>() / norm
        };
        let scale: f64 = mag_dx[i * d..(i + 1) * d]
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            along(&arc_dx).abs() < 1e-4 * scale.max(1e-12) + 1e-9,
            "ArcFace row {i} has a radial part"
        );
        if (10.0..=110.0).contains(&norm) {
            inside += 1;
            assert!(
                along(&mag_dx).abs() > 1e-3 * scale,
                "MagFace row {i} (norm {norm}) lacks its radial part"
            );
        } else {
            outside += 1;
        }
    }
    assert!(
        inside > 0 && outside > 0,
        "{inside} inside, {outside} outside"
    );
}

#[test]
fn curricularface_and_magface_steps_are_bit_identical_across_runs() {
    for policy in non_affine() {
        let cfg = cfg_for(policy);
        let inp = leaning(9, 33, 64, 150);
        let run = || {
            let mut sim = SimAdaFace::new(cfg);
            sim_step::<bf16, i64>(&mut sim, &inp).unwrap().bits()
        };
        assert_eq!(run(), run(), "{policy:?}");
    }
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let inp = leaning(8, 5, 32, 20);
    let x = round::<bf16>(&inp.x);
    let w = round::<bf16>(&inp.w);
    for policy in non_affine() {
        let mut sim = SimAdaFace::new(cfg_for(policy));
        sim.set_state(EmaState {
            curricular_t: 0.25,
            ..sim.state().unwrap()
        })
        .unwrap();
        let before = sim.state().unwrap();
        let mut labels = inp.labels.clone();
        labels[3] = 20;
        let (mut dx, mut dw) = (vec![3.0f32; x.len()], vec![3.0f32; w.len()]);
        let err = sim
            .forward_backward(inp.shape, &x, &w, &labels, &mut dx, &mut dw)
            .unwrap()
            .summary()
            .unwrap_err();
        assert!(
            matches!(err, Error::LabelOutOfRange { row: 3, .. }),
            "{err:?}"
        );
        assert!(
            dx.iter().chain(&dw).all(|&v| v == 3.0),
            "{policy:?}: outputs written"
        );
        assert_eq!(sim.state().unwrap(), before, "{policy:?}");
        // A non-finite weight in a target row (read by CurricularFace's
        // stats pass) is the forward's error, and t stays.
        let mut w_bad = w.clone();
        let y = inp.labels[0] as usize;
        w_bad[y * 32 + 1] = bf16::from_f64(f64::NAN);
        let err = sim
            .forward_backward(inp.shape, &x, &w_bad, &inp.labels, &mut dx, &mut dw)
            .unwrap()
            .summary()
            .unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
        assert!(
            dx.iter().chain(&dw).all(|&v| v == 3.0),
            "{policy:?}: outputs written"
        );
        assert_eq!(sim.state().unwrap(), before, "{policy:?}");
    }
}
