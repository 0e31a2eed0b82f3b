//! Inputs a fuzzer or a careless caller produces: each test here is a
//! wrong answer or a crash that was once possible, on every backend it
//! concerns.

mod common;

use adaface::cpu::{CpuAdaFace, CpuOptions};
use adaface::golden::parse_case;
use adaface::{naive, reference, AdaFaceConfig, EmaState, Error, Shape, Tensor};
use common::SimAdaFace;
use common::{rel_norm, Rng};
use half::f16;

/// A class row of norm ~2.5e-20: its `1 / ||w||^2` overflows `f32`.
fn tiny_row_problem() -> (Shape, Vec<f32>, Vec<f32>, Vec<i64>) {
    let x = vec![1.0, 2.0, -0.5, 0.3, -1.0, 0.5, 0.7, 2.0];
    let w = vec![
        0.5, -0.2, 0.1, 1.0, 1e-20, -2e-20, 5e-21, 1e-20, 0.3, 0.3, -0.9, 0.1,
    ];
    (Shape::new(2, 4, 3), x, w, vec![1, 2])
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn tiny_weight_rows_give_finite_gradients_on_every_backend() {
    let (shape, x, w, y) = tiny_row_problem();
    let cfg = AdaFaceConfig::default();
    let x64: Vec<f64> = widen(&x);
    let w64: Vec<f64> = widen(&w);
    let exact =
        reference::forward_backward(&cfg, &cfg.initial_state(), shape, &x64, &w64, &y).unwrap();
    // The tiny row's gradient is about 1e20: large, but a number.
    let big = exact.grad_weight[4..8]
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(big > 1e15 && big.is_finite(), "reference dW row 1: {big}");

    let check = |name: &str, dx: &[f32], dw: &[f32]| {
        assert!(
            dx.iter().chain(dw).all(|v| v.is_finite()),
            "{name}: non-finite gradient in an Ok result: dx {dx:?} dw {dw:?}"
        );
        let ex = rel_norm(&widen(dx), &exact.grad_features);
        let ew = rel_norm(&widen(dw), &exact.grad_weight);
        assert!(
            ex < 1e-3 && ew < 1e-3,
            "{name}: dX error {ex:.2e}, dW error {ew:.2e}"
        );
    };

    let mut cpu = CpuAdaFace::new(cfg);
    let (mut dx, mut dw) = (vec![0.0f32; 8], vec![0.0f32; 12]);
    cpu.forward_backward(shape, &x, &w, &y, &mut dx, &mut dw)
        .unwrap();
    check("cpu", &dx, &dw);

    let r32 = reference::forward_backward(&cfg, &cfg.initial_state(), shape, &x, &w, &y).unwrap();
    check("reference f32", &r32.grad_features, &r32.grad_weight);

    let n = naive::cpu::forward_backward(&cfg, &cfg.initial_state(), shape, &x, &w, &y).unwrap();
    check("naive cpu", &n.grad_features, &n.grad_weight);

    let mut sim = SimAdaFace::new(cfg);
    let (mut dx, mut dw) = (vec![0.0f32; 8], vec![0.0f32; 12]);
    sim.forward_backward(shape, &x, &w, &y, &mut dx, &mut dw)
        .unwrap()
        .summary()
        .unwrap();
    check("sim", &dx, &dw);
}

#[test]
fn states_f32_cannot_carry_are_rejected_everywhere() {
    let cfg = AdaFaceConfig::default();
    for bad in [
        EmaState::new(1e39, 1e39),
        EmaState::new(1e300, 1.0),
        EmaState::new(-1e31, 1.0),
        EmaState::new(20.0, 1e31),
    ] {
        let is_state_error = |r: adaface::Result<()>| matches!(r, Err(Error::InvalidState { .. }));
        assert!(is_state_error(bad.validate()), "{bad:?}");
        assert!(
            is_state_error(CpuAdaFace::new(cfg).set_state(bad)),
            "{bad:?}"
        );
        assert!(
            is_state_error(SimAdaFace::new(cfg).set_state(bad)),
            "{bad:?}"
        );
        assert!(
            is_state_error(adaface::trainer::AdaFaceLoss::new(cfg).set_state(bad)),
            "{bad:?}"
        );
        assert!(
            matches!(
                AdaFaceConfig::builder().initial_state(bad).build(),
                Err(Error::InvalidConfig {
                    parameter: "initial_state",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    // The largest accepted state still gives a finite step in f32.
    let edge = EmaState::new(-EmaState::MAX_MAGNITUDE, EmaState::MAX_MAGNITUDE);
    let (shape, x, mut w, y) = tiny_row_problem();
    w[4..8].copy_from_slice(&[0.2, 0.4, -0.1, 0.3]);
    let mut cpu = CpuAdaFace::new(cfg);
    cpu.set_state(edge).unwrap();
    let out = cpu.forward_backward_alloc(shape, &x, &w, &y).unwrap();
    assert!(out.loss.is_finite());
    let after = cpu.state();
    assert!(after.batch_mean.is_finite() && after.batch_std.is_finite());
    assert!(cpu.forward_backward_alloc(shape, &x, &w, &y).is_ok());
    // A norm clip whose squares cannot be summed in f32 is refused.
    assert!(AdaFaceConfig::builder()
        .norm_clip(1e-3, 1e20)
        .build()
        .is_err());
}

#[test]
fn case_files_declaring_sizes_their_data_lacks_are_format_errors() {
    let case = |b: &str, d: &str, c: &str, margin: &str| {
        format!(
            r#"{{"config": {{"B": {b}, "D": {d}, "C": {c}{margin}}},
                "weight": [1, 2, 3, 4],
                "steps": [{{"features": [1, 2, 3, 4], "labels": [0, 1]}}]}}"#
        )
    };
    // Consistent: parses.
    assert!(parse_case(&case("2", "2", "2", "")).is_ok());
    for (b, d, c) in [
        ("2", "2", "3000000000"),
        ("4294967295", "4294967295", "2"),
        ("2", "3", "2"),
        ("3", "2", "2"),
    ] {
        let err = parse_case(&case(b, d, c, "")).unwrap_err().to_string();
        assert!(
            err.contains("declared shape") || err.contains("overflows"),
            "{err}"
        );
    }
    // A margin that is not a policy name is not silently AdaFace.
    let err = parse_case(&case("2", "2", "2", r#", "margin": 3"#))
        .unwrap_err()
        .to_string();
    assert!(err.contains("margin"), "{err}");
    assert!(parse_case(&case("2", "2", "2", r#", "margin": "cosface""#)).is_ok());
}

#[test]
fn naive_simulated_pipeline_rejects_what_the_other_backends_reject() {
    let cfg = AdaFaceConfig::default();
    let mut rng = Rng::new(41);
    let shape = Shape::new(4, 8, 6);
    let x: Vec<f32> = rng.normals_f32(32, 1.0);
    let w: Vec<f32> = rng.normals_f32(48, 1.0);
    let y = rng.labels(4, 6);
    let state = cfg.initial_state();
    let mut bad_inputs = Vec::new();
    for (k, v) in [f32::NAN, f32::INFINITY].into_iter().enumerate() {
        let mut w2 = w.clone();
        w2[8 * (k + 2) + 3] = v;
        bad_inputs.push((w2, state));
    }
    let mut zero = w.clone();
    zero[8..16].fill(0.0);
    bad_inputs.push((zero, state));
    for bad_state in [EmaState::new(20.0, f64::NAN), EmaState::new(20.0, -1.0)] {
        bad_inputs.push((w.clone(), bad_state));
    }
    for (w2, st) in bad_inputs {
        let want = naive::cpu::forward_backward(&cfg, &st, shape, &x, &w2, &y).unwrap_err();
        let exact = reference::forward_backward(&cfg, &st, shape, &x, &w2, &y).unwrap_err();
        assert_eq!(want, exact);
        let (mut dx, mut dw) = (vec![7.0f32; 32], vec![7.0f32; 48]);
        let got = naive::sim::forward_backward(&cfg, st, shape, &x, &w2, &y, &mut dx, &mut dw)
            .unwrap_err();
        assert_eq!(got, want);
        assert!(dx.iter().chain(&dw).all(|&v| v == 7.0), "outputs written");
    }
    // And the same inputs, valid, pass.
    let (mut dx, mut dw) = (vec![0.0f32; 32], vec![0.0f32; 48]);
    naive::sim::forward_backward(&cfg, state, shape, &x, &w, &y, &mut dx, &mut dw).unwrap();
    assert!(dw.iter().any(|&v| v != 0.0));
}

#[test]
fn logit_scale_is_bounded_to_what_f16_carries_and_f16_works_at_the_bounds() {
    for s in [1e24, 1e5, 1e-20, 1e-4, 0.0, -1.0] {
        assert!(
            matches!(
                AdaFaceConfig::builder().s(s).build(),
                Err(Error::InvalidConfig { parameter: "s", .. })
            ),
            "s = {s} accepted"
        );
    }
    let mut rng = Rng::new(43);
    let shape = Shape::new(8, 32, 40);
    let x64 = rng.normals(8 * 32, 1.0);
    let w64 = rng.normals(40 * 32, 1.0);
    let y = rng.labels(8, 40);
    for s in [AdaFaceConfig::MIN_S, AdaFaceConfig::MAX_S] {
        let cfg = AdaFaceConfig::builder().s(s).build().unwrap();
        let xh: Vec<f16> = x64.iter().map(|&v| f16::from_f64(v)).collect();
        let wh: Vec<f16> = w64.iter().map(|&v| f16::from_f64(v)).collect();
        // The oracle sees the same rounded inputs.
        let xr: Vec<f64> = xh.iter().map(|v| v.to_f64()).collect();
        let wr: Vec<f64> = wh.iter().map(|v| v.to_f64()).collect();
        let exact =
            reference::forward_backward(&cfg, &cfg.initial_state(), shape, &xr, &wr, &y).unwrap();
        let mut sim = SimAdaFace::new(cfg);
        let (mut dx, mut dw) = (vec![0.0f32; 8 * 32], vec![0.0f32; 40 * 32]);
        let loss = sim
            .forward_backward(shape, &xh, &wh, &y, &mut dx, &mut dw)
            .unwrap()
            .loss()
            .unwrap();
        assert!(loss.is_finite(), "s = {s}: loss {loss}");
        assert!(dx.iter().chain(&dw).all(|v| v.is_finite()), "s = {s}");
        let ex = rel_norm(&widen(&dx), &exact.grad_features);
        let ew = rel_norm(&widen(&dw), &exact.grad_weight);
        assert!(ex < 2e-2 && ew < 2e-2, "s = {s}: dX {ex:.2e}, dW {ew:.2e}");
    }
}

#[test]
fn default_cpu_results_do_not_depend_on_the_thread_count() {
    // 40 class tiles of 16: more partitions than any of the thread counts.
    let mut rng = Rng::new(44);
    let shape = Shape::new(24, 16, 640);
    let x = rng.normals_f32(24 * 16, 2.0);
    let w = rng.normals_f32(640 * 16, 1.0);
    let y = rng.labels(24, 640);
    let options = CpuOptions {
        class_tile: 16,
        ..CpuOptions::default()
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut a = CpuAdaFace::new(AdaFaceConfig::default());
            let plain = a.forward_backward_alloc(shape, &x, &w, &y).unwrap();
            let mut b = CpuAdaFace::with_options(AdaFaceConfig::default(), options).unwrap();
            let tiled = b.forward_backward_alloc(shape, &x, &w, &y).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            (
                plain.loss.to_bits(),
                bits(&plain.grad_features),
                bits(&plain.grad_weight),
                tiled.loss.to_bits(),
                bits(&tiled.grad_features),
                bits(&tiled.grad_weight),
            )
        })
    };
    let one = run(1);
    assert!(one.2.iter().any(|&b| b != 0));
    for threads in [2, 3] {
        assert!(run(threads) == one, "{threads} threads differ from 1");
    }
}

#[test]
fn a_wrong_shape_is_blamed_on_the_inputs_and_a_wrong_buffer_on_its_gradient() {
    let (shape, x, mut w, y) = tiny_row_problem();
    w[4..8].copy_from_slice(&[0.2, 0.4, -0.1, 0.3]);
    let cfg = AdaFaceConfig::default();
    // The shape says D = 5: features, not the (correctly sized for D = 4)
    // gradient buffers, are wrong.
    let wrong = Shape::new(2, 5, 3);
    let (mut dx, mut dw) = (vec![0.0f32; 8], vec![0.0f32; 12]);
    let want = Error::ShapeMismatch {
        tensor: Tensor::Features,
        expected: 10,
        actual: 8,
    };
    let mut cpu = CpuAdaFace::new(cfg);
    let mut sim = SimAdaFace::new(cfg);
    assert_eq!(
        cpu.forward_backward(wrong, &x, &w, &y, &mut dx, &mut dw)
            .unwrap_err(),
        want
    );
    assert_eq!(
        sim.forward_backward(wrong, &x, &w, &y, &mut dx, &mut dw)
            .unwrap_err(),
        want
    );
    for (dxl, dwl, tensor) in [(7, 12, Tensor::GradFeatures), (8, 11, Tensor::GradWeight)] {
        let mut bx = vec![0.0f32; dxl];
        let mut bw = vec![0.0f32; dwl];
        for err in [
            cpu.forward_backward(shape, &x, &w, &y, &mut bx, &mut bw)
                .unwrap_err(),
            sim.forward_backward(shape, &x, &w, &y, &mut bx, &mut bw)
                .unwrap_err(),
        ] {
            assert!(
                matches!(err, Error::ShapeMismatch { tensor: t, .. } if t == tensor),
                "{err:?}"
            );
        }
    }
}

#[test]
fn row_diagnostics_after_a_rejected_step_are_that_steps_error() {
    let (shape, x, mut w, y) = tiny_row_problem();
    w[4..8].copy_from_slice(&[0.2, 0.4, -0.1, 0.3]);
    let mut sim = SimAdaFace::new(AdaFaceConfig::default());
    let (mut dx, mut dw) = (vec![0.0f32; 8], vec![0.0f32; 12]);
    sim.forward_backward(shape, &x, &w, &y, &mut dx, &mut dw)
        .unwrap()
        .summary()
        .unwrap();
    let (norms, z) = sim.row_diagnostics().unwrap();
    assert_eq!((norms.len(), z.len()), (2, 2));
    let mut nan_x = x.clone();
    nan_x[5] = f32::NAN;
    let step = sim
        .forward_backward(shape, &nan_x, &w, &y, &mut dx, &mut dw)
        .unwrap();
    let err = step.summary().unwrap_err();
    assert_eq!(sim.row_diagnostics().unwrap_err(), err);
}

/// Two training steps through the trait only: what a trainer written once
/// against [`AdaFaceBackend`] sees.
fn two_steps<B: adaface::AdaFaceBackend<f32>>(
    loss: &mut B,
) -> (Vec<adaface::StepResult>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(45);
    let shape = Shape::new(6, 32, 9);
    let w = rng.normals_f32(9 * 32, 1.0);
    let (mut dx, mut dw) = (vec![0.0f32; 6 * 32], vec![0.0f32; 9 * 32]);
    let mut steps = Vec::new();
    for _ in 0..2 {
        let x = rng.normals_f32(6 * 32, 3.0);
        let y = rng.labels(6, 9);
        steps.push(
            loss.forward_backward(shape, &x, &w, &y, &mut dx, &mut dw)
                .unwrap(),
        );
    }
    // A rejected step through the trait changes nothing.
    let before = loss.state().unwrap();
    let (mut bx, mut bw) = (dx.clone(), dw.clone());
    let mut nan_x = rng.normals_f32(6 * 32, 3.0);
    nan_x[3] = f32::NAN;
    assert!(loss
        .forward_backward(shape, &nan_x, &w, &rng.labels(6, 9), &mut bx, &mut bw)
        .is_err());
    assert_eq!(loss.state().unwrap(), before);
    assert!(bx == dx && bw == dw);
    (steps, dx, dw)
}

#[test]
fn one_trait_drives_every_stateful_backend() {
    let cfg = AdaFaceConfig::default();
    let (cpu, cdx, cdw) = two_steps(&mut CpuAdaFace::new(cfg));
    let (sim, sdx, sdw) = two_steps(&mut SimAdaFace::new(cfg));
    for (c, s) in cpu.iter().zip(&sim) {
        assert!(
            (c.loss - s.loss).abs() <= 1e-5 * c.loss.abs(),
            "{c:?} {s:?}"
        );
        assert!((c.state_after.batch_mean - s.state_after.batch_mean).abs() < 1e-4);
        assert_eq!(c.norms.len(), 6);
        assert!(rel_norm(&widen(&c.margin_scaler), &widen(&s.margin_scaler)) < 1e-5);
    }
    assert!(rel_norm(&widen(&sdx), &widen(&cdx)) < 1e-4);
    assert!(rel_norm(&widen(&sdw), &widen(&cdw)) < 1e-4);
    assert!(cdw.iter().any(|&v| v != 0.0));
}
