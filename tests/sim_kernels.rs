//! The kernels on the CPU simulator against the f64 CPU reference: golden
//! files, awkward random shapes, every dtype and label type, the B = 1
//! rule, every device-detected error, determinism.

mod common;

use adaface::eval::{run_case, Device};
use adaface::golden::parse_case;
use adaface::launch::{KernelLabel, PlanLimits};
use adaface::shape::validate_inputs;
use adaface::{AdaFaceConfig, Dtype, EmaState, Error, MarginPolicy, Shape, Tensor};
use common::SimAdaFace;
use common::*;
use half::{bf16, f16};

fn run_dtype(
    dtype: Dtype,
    i32_labels: bool,
    cfg: &AdaFaceConfig,
    limits: PlanLimits,
    inp: &Inputs,
) -> StepErrors {
    sim_errors_for(dtype, i32_labels, cfg, limits, cfg.initial_state(), inp)
}

#[test]
fn golden_files_match_the_reference() {
    for path in golden_files() {
        let case = parse_case(&read_golden(&path)).unwrap();
        let sim = run_case(&case, Device::Sim, Dtype::F32).unwrap();
        // Directly against the official outputs too, not only the reference.
        assert_matches_golden(&path.display().to_string(), &case, &sim, 2e-5, 2e-4);
        let reference = run_case(&case, Device::Reference, Dtype::F64).unwrap();
        assert_eval_steps_close(&path.display().to_string(), &sim, &reference);
        for (k, (s, r)) in sim.iter().zip(&reference).enumerate() {
            let what = format!("{} step {k}", path.display());
            assert!(rel_norm(&s.norms, &r.norms) < 1e-6, "{what}: norms");
            assert!(
                rel_norm(&s.margin_scaler, &r.margin_scaler) < 1e-5,
                "{what}: scaler"
            );
            assert!(
                rel(s.state_after.batch_mean, r.state_after.batch_mean) < 1e-6,
                "{what}: EMA mean"
            );
            assert!(
                rel(s.state_after.batch_std, r.state_after.batch_std) < 1e-6,
                "{what}: EMA std"
            );
        }
    }
}

#[test]
fn golden_files_in_bf16_and_f16_match_the_reference_on_the_same_inputs() {
    for path in golden_files()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("float64"))
    {
        let case = parse_case(&read_golden(&path)).unwrap();
        for dtype in [Dtype::BF16, Dtype::F16] {
            let sim = run_case(&case, Device::Sim, dtype).unwrap();
            // The reference on the inputs rounded to the same type.
            let mut rounded = case.clone();
            let r16 = |v: &mut Vec<f64>| {
                for x in v.iter_mut() {
                    *x = match dtype {
                        Dtype::BF16 => bf16::from_f64(*x).to_f64(),
                        _ => f16::from_f64(*x).to_f64(),
                    };
                }
            };
            r16(&mut rounded.weight);
            rounded.steps.iter_mut().for_each(|s| r16(&mut s.features));
            let reference = run_case(&rounded, Device::Reference, Dtype::F64).unwrap();
            // The eval tool runs the default plan: the flash family's
            // single-rounded gradient products.
            let tol = Bounds::flash_single(dtype).dx;
            assert_eval_steps_within(
                &format!("{} {dtype}", path.display()),
                &sim,
                &reference,
                tol,
            );
        }
    }
}

#[test]
fn awkward_shapes_every_dtype_and_label_type() {
    let cfg = AdaFaceConfig::default();
    let classes = [50, 130, 300, 77];
    let dtypes = [Dtype::F32, Dtype::BF16, Dtype::F16];
    let mut n = 0usize;
    for b in [1usize, 7, 33, 129] {
        for d in [16usize, 64, 96, 512] {
            let c = classes[n % classes.len()];
            let dtype = dtypes[n % dtypes.len()];
            let i32_labels = (n / 2) % 2 == 1;
            let inp = random_inputs(1000 + n as u64, b, d, c);
            // The default plan (single-rounded flash gradients) and its
            // exact mode.
            let e = run_dtype(dtype, i32_labels, &cfg, PlanLimits::default(), &inp);
            let what = format!("B={b} D={d} C={c} {dtype} i32={i32_labels}");
            println!("{what}: {e:?}");
            e.assert_within(Bounds::flash_single(dtype), &what);
            let e = run_dtype(dtype, i32_labels, &cfg, exact_limits(), &inp);
            println!("{what} exact: {e:?}");
            e.assert_f32_accuracy(&what);
            n += 1;
        }
    }
}

#[test]
fn every_dtype_with_both_label_types_on_one_shape() {
    let cfg = AdaFaceConfig::builder().t_alpha(1.0).build().unwrap();
    let inp = random_inputs(7, 33, 96, 130);
    for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        for i32_labels in [false, true] {
            let e = run_dtype(dtype, i32_labels, &cfg, PlanLimits::default(), &inp);
            e.assert_within(
                Bounds::flash_single(dtype),
                &format!("{dtype} i32={i32_labels}"),
            );
            let e = run_dtype(dtype, i32_labels, &cfg, exact_limits(), &inp);
            e.assert_f32_accuracy(&format!("{dtype} i32={i32_labels} exact"));
        }
    }
}

#[test]
fn other_margin_policies_and_hyper_parameters() {
    let policies = [
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
        MarginPolicy::AdaFace { m: 0.75, h: 0.22 },
    ];
    for (k, policy) in policies.into_iter().enumerate() {
        let cfg = AdaFaceConfig::builder()
            .margin(policy)
            .s(30.0)
            .t_alpha(0.5)
            .build()
            .unwrap();
        let inp = random_inputs(50 + k as u64, 7, 64, 77);
        let e = run_dtype(Dtype::F32, false, &cfg, PlanLimits::default(), &inp);
        e.assert_f32_accuracy(&format!("{policy:?}"));
    }
}

#[test]
fn several_class_tiles_per_split() {
    // 300 classes = 5 tiles; force 1 and 2 splits in both passes.
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(77, 33, 64, 300);
    for splits in [1usize, 2] {
        let limits = PlanLimits {
            target_blocks: splits * 2, // 2 row tiles at B = 33
            dx_budget_bytes: splits * 33 * 64 * 4,
            max_backward_splits: splits,
            ..PlanLimits::default()
        };
        let e = run_dtype(Dtype::F32, false, &cfg, limits, &inp);
        e.assert_f32_accuracy(&format!("{splits} splits"));
    }
}

#[test]
fn batch_of_one_keeps_the_std_term() {
    let cfg = AdaFaceConfig::builder().t_alpha(0.3).build().unwrap();
    let inp = random_inputs(3, 1, 64, 77);
    let mut sim = SimAdaFace::new(cfg);
    let before = sim.state().unwrap();
    let x = round::<f32>(&inp.x);
    let w = round::<f32>(&inp.w);
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    let summary = sim
        .forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, &mut dw)
        .unwrap()
        .summary()
        .unwrap();
    let after = sim.state().unwrap();
    assert_eq!(summary.norm_std, None);
    assert_eq!(after.batch_std, before.batch_std, "std term kept");
    assert_ne!(after.batch_mean, before.batch_mean, "mean still updated");
    assert!(after.batch_mean.is_finite() && summary.loss.is_finite());
    let r = reference_step::<f32>(&cfg, &before, &inp);
    StepErrors::new(summary.loss, &dx, &dw, after, &r).assert_f32_accuracy("B = 1");
}

#[test]
fn state_carries_over_steps_and_forward_chooses_whether_it_updates() {
    let cfg = AdaFaceConfig::builder().t_alpha(0.2).build().unwrap();
    let mut sim = SimAdaFace::new(cfg);
    let mut state = cfg.initial_state();
    for k in 0..3 {
        let inp = random_inputs(200 + k, 7, 32, 50);
        let x = round::<f32>(&inp.x);
        let w = round::<f32>(&inp.w);
        let r = reference_step::<f32>(&cfg, &state, &inp);
        // An evaluation forward that leaves the state alone...
        let loss = sim
            .forward(inp.shape, &x, &w, &inp.labels, false)
            .unwrap()
            .loss()
            .unwrap();
        assert!(
            rel(loss, r.loss) < 1e-5,
            "forward loss {loss} vs {}",
            r.loss
        );
        assert_eq!(sim.state().unwrap(), state);
        // ...then a training step that moves it.
        let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        let s = sim
            .forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, &mut dw)
            .unwrap();
        let summary = s.summary().unwrap();
        StepErrors::new(summary.loss, &dx, &dw, sim.state().unwrap(), &r)
            .assert_f32_accuracy("step");
        // Carry the kernels' own state (f32 norms: close to, not equal to, the reference's).
        state = sim.state().unwrap();
    }
    // An evaluation forward that updates it.
    let inp = random_inputs(300, 7, 32, 50);
    let (x, w) = (round::<f32>(&inp.x), round::<f32>(&inp.w));
    let s = sim
        .forward(inp.shape, &x, &w, &inp.labels, true)
        .unwrap()
        .summary()
        .unwrap();
    assert_eq!(sim.state().unwrap(), s.state_after);
    assert_ne!(s.state_after, state);
    // Restore for a checkpoint.
    sim.set_state(state).unwrap();
    assert_eq!(sim.state().unwrap(), state);
    assert!(sim.set_state(EmaState::new(f64::NAN, 1.0)).is_err());
}

#[test]
fn same_inputs_same_bits() {
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(11, 33, 96, 300);
    let run = || {
        let mut sim = SimAdaFace::new(cfg);
        let step = sim_step::<bf16, i64>(&mut sim, &inp).unwrap();
        (step.bits(), step.state)
    };
    assert!(run() == run(), "two runs differ");
}

/// Runs a step expected to fail and checks the error equals the host-side
/// check's, and that outputs and state are untouched.
fn expect_device_error<L: KernelLabel + Copy>(
    shape: Shape,
    x: &[f32],
    w: &[f32],
    labels: &[L],
) -> Error {
    let host = validate_inputs(&shape, x, w, labels).expect_err("host check must fail too");
    let mut sim = SimAdaFace::new(AdaFaceConfig::default());
    let state = sim.state().unwrap();
    let mut dx = vec![7.5f32; x.len()];
    let mut dw = vec![-3.25f32; w.len()];
    let step = sim
        .forward_backward(shape, x, w, labels, &mut dx, &mut dw)
        .unwrap();
    let err = step.summary().expect_err("device must detect it");
    assert_eq!(err, host, "device error differs from the host check's");
    assert!(step.loss().is_err());
    assert!(
        dx.iter().all(|&v| v == 7.5) && dw.iter().all(|&v| v == -3.25),
        "outputs written"
    );
    assert_eq!(sim.state().unwrap(), state, "state moved");
    let f = sim.forward(shape, x, w, labels, true).unwrap();
    assert_eq!(f.summary().unwrap_err(), host);
    assert_eq!(
        sim.state().unwrap(),
        state,
        "state moved by a failed forward"
    );
    // The next valid step works (the record is reset per step).
    let good = random_inputs(5, shape.batch, shape.dim, shape.classes);
    let (gx, gw) = (round::<f32>(&good.x), round::<f32>(&good.w));
    sim.forward_backward(shape, &gx, &gw, &good.labels, &mut dx, &mut dw)
        .unwrap()
        .summary()
        .unwrap();
    err
}

/// The inputs the device-detected error tests corrupt.
fn error_inputs() -> (Shape, Vec<f32>, Vec<f32>, Vec<i64>) {
    let inp = random_inputs(9, 33, 40, 130);
    (inp.shape, round(&inp.x), round(&inp.w), inp.labels)
}

/// Two non-finite values in each of the features and the weight; the host
/// checks name the first of each.
fn with_non_finite(x: &[f32], w: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut xb, mut wb) = (x.to_vec(), w.to_vec());
    xb[40 * 9 + 3] = f32::NAN;
    xb[40 * 20] = f32::INFINITY;
    wb[40 * 100 + 39] = f32::NEG_INFINITY;
    wb[40 * 129] = f32::NAN;
    (xb, wb)
}

#[test]
fn device_detected_label_errors_match_the_host_checks() {
    let (shape, x, w, labels) = error_inputs();

    let mut l = labels.clone();
    l[17] = 130;
    l[20] = -1;
    let e = expect_device_error(shape, &x, &w, &l);
    assert_eq!(
        e,
        Error::LabelOutOfRange {
            row: 17,
            label: 130,
            classes: 130
        }
    );
    let l32: Vec<i32> = labels
        .iter()
        .enumerate()
        .map(|(i, &v)| if i == 4 { -7 } else { v as i32 })
        .collect();
    assert!(matches!(
        expect_device_error(shape, &x, &w, &l32),
        Error::LabelOutOfRange {
            row: 4,
            label: -7,
            ..
        }
    ));
}

#[test]
fn device_detected_non_finite_values_match_the_host_checks() {
    let (shape, x, w, labels) = error_inputs();
    let (xb, wb) = with_non_finite(&x, &w);
    assert_eq!(
        expect_device_error(shape, &xb, &w, &labels),
        Error::NonFinite {
            tensor: Tensor::Features,
            index: 363
        }
    );
    assert_eq!(
        expect_device_error(shape, &x, &wb, &labels),
        Error::NonFinite {
            tensor: Tensor::Weight,
            index: 4039
        }
    );
}

#[test]
fn device_detected_errors_rank_as_the_host_checks_rank_them() {
    let (shape, x, w, labels) = error_inputs();
    let (xb, wb) = with_non_finite(&x, &w);
    // A label error outranks a non-finite value, which outranks a zero row.
    let mut l2 = labels.clone();
    l2[30] = 1000;
    let mut xz = xb.clone();
    xz[..40].fill(0.0);
    assert!(matches!(
        expect_device_error(shape, &xz, &wb, &l2),
        Error::LabelOutOfRange { row: 30, .. }
    ));
}

#[test]
fn device_detected_zero_norms_match_the_host_checks() {
    let (shape, x, w, labels) = error_inputs();
    let mut xz = x.clone();
    xz[40 * 12..40 * 13].fill(0.0);
    assert_eq!(
        expect_device_error(shape, &xz, &w, &labels),
        Error::ZeroNorm {
            tensor: Tensor::Features,
            row: 12
        }
    );
    let mut wz = w.clone();
    wz[40 * 77..40 * 78].fill(0.0);
    assert_eq!(
        expect_device_error(shape, &x, &wz, &labels),
        Error::ZeroNorm {
            tensor: Tensor::Weight,
            row: 77
        }
    );
    // Features are reported before weights.
    assert!(matches!(
        expect_device_error(shape, &xz, &wz, &labels),
        Error::ZeroNorm {
            tensor: Tensor::Features,
            ..
        }
    ));
}

#[test]
fn device_detected_norm_overflows_match_the_host_checks() {
    let (shape, x, w, labels) = error_inputs();
    let mut xo = x.clone();
    xo[40 * 2..40 * 3].fill(1e20);
    assert_eq!(
        expect_device_error(shape, &xo, &w, &labels),
        Error::NormOverflow {
            tensor: Tensor::Features,
            row: 2
        }
    );
    let mut wo = w.clone();
    wo[40 * 129..40 * 130].fill(-1e20);
    assert_eq!(
        expect_device_error(shape, &x, &wo, &labels),
        Error::NormOverflow {
            tensor: Tensor::Weight,
            row: 129
        }
    );
}

#[test]
fn host_checks_reject_bad_shapes_before_launching() {
    let inp = random_inputs(1, 7, 16, 50);
    let (x, w) = (round::<f32>(&inp.x), round::<f32>(&inp.w));
    let mut sim = SimAdaFace::new(AdaFaceConfig::default());
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    let bad = Shape::new(7, 16, 51);
    assert!(matches!(
        sim.forward_backward(bad, &x, &w, &inp.labels, &mut dx, &mut dw),
        Err(Error::ShapeMismatch {
            tensor: Tensor::Weight,
            ..
        })
    ));
    assert!(matches!(
        sim.forward(inp.shape, &x[1..], &w, &inp.labels, true),
        Err(Error::ShapeMismatch {
            tensor: Tensor::Features,
            ..
        })
    ));
    assert!(matches!(
        sim.forward(inp.shape, &x, &w, &inp.labels[1..], true),
        Err(Error::ShapeMismatch {
            tensor: Tensor::Labels,
            ..
        })
    ));
    let mut short = vec![0.0; w.len() - 1];
    assert!(matches!(
        sim.forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, &mut short),
        Err(Error::ShapeMismatch {
            tensor: Tensor::GradWeight,
            ..
        })
    ));
    assert_eq!(
        sim.forward::<f32, i64>(Shape::new(0, 16, 50), &[], &w, &[], true)
            .unwrap_err(),
        Error::EmptyBatch
    );
    assert_eq!(
        sim.state().unwrap(),
        AdaFaceConfig::default().initial_state()
    );
}

#[test]
fn clamp_and_angle_clip_gates_close_where_the_reference_closes_them() {
    // Rows parallel to their target class (cosine 1: clamp and angle clip
    // active), rows anti-parallel to another class (cosine -1), and a row
    // whose target angle is just inside the clip.
    let cfg = AdaFaceConfig::builder().t_alpha(1.0).build().unwrap();
    let mut inp = random_inputs(61, 9, 48, 70);
    let d = inp.shape.dim;
    for (i, scale) in [(0usize, 3.0f64), (3, 25.0), (5, 80.0)] {
        let j = inp.labels[i] as usize;
        for k in 0..d {
            inp.x[i * d + k] = scale * inp.w[j * d + k];
        }
    }
    let other = (inp.labels[7] as usize + 1) % 70;
    for k in 0..d {
        inp.x[7 * d + k] = -10.0 * inp.w[other * d + k];
    }
    let e = run_dtype(Dtype::F32, false, &cfg, PlanLimits::default(), &inp);
    e.assert_f32_accuracy("gates");
}
