//! SphereFace in the fused kernels (simulator) against the f64 reference on
//! the same rounded inputs: every dtype and label type, awkward shapes,
//! several class tiles per split, and the policies the kernels do not
//! compute (CurricularFace, MagFace) rejected before anything is written.

mod common;

use adaface::launch::{KernelElement, KernelLabel, PlanLimits};
use adaface::{AdaFaceConfig, Dtype, EmaState, Error, MarginPolicy};
use common::SimAdaFace;
use common::*;
use half::{bf16, f16};

fn step<E: KernelElement, L: KernelLabel + TryFrom<i64>>(
    cfg: &AdaFaceConfig,
    limits: PlanLimits,
    inp: &Inputs,
) -> StepErrors {
    let mut sim = SimAdaFace::new(*cfg).with_limits(limits);
    let state = EmaState {
        curricular_t: 0.125,
        ..cfg.initial_state()
    };
    sim.set_state(state).unwrap();
    let step = sim_step::<E, L>(&mut sim, inp).expect("sim step");
    // The kernels never move CurricularFace's t; the object carries it.
    assert_eq!(sim.state().unwrap().curricular_t, 0.125);
    step.errors(&reference_step::<E>(cfg, &state, inp))
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
                    let l = PlanLimits::default();
                    let e = match (dtype, i32_labels) {
                        (Dtype::F32, false) => step::<f32, i64>(&cfg, l, &inp),
                        (Dtype::F32, true) => step::<f32, i32>(&cfg, l, &inp),
                        (Dtype::BF16, false) => step::<bf16, i64>(&cfg, l, &inp),
                        (Dtype::BF16, true) => step::<bf16, i32>(&cfg, l, &inp),
                        (Dtype::F16, false) => step::<f16, i64>(&cfg, l, &inp),
                        (_, _) => step::<f16, i32>(&cfg, l, &inp),
                    };
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

#[test]
fn curricularface_and_magface_are_rejected_and_nothing_is_written() {
    let inp = random_inputs(8, 5, 16, 20);
    let x = round::<f32>(&inp.x);
    let w = round::<f32>(&inp.w);
    for policy in [MarginPolicy::curricular_face(), MarginPolicy::mag_face()] {
        let cfg = AdaFaceConfig::builder().margin(policy).build().unwrap();
        let mut sim = SimAdaFace::new(cfg);
        let before = sim.state().unwrap();
        let (mut dx, mut dw) = (vec![3.0f32; x.len()], vec![3.0f32; w.len()]);
        let err = sim
            .forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, &mut dw)
            .unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedMargin { backend: "sim", .. }),
            "{err:?}"
        );
        assert!(dx.iter().chain(&dw).all(|&v| v == 3.0));
        assert_eq!(sim.state().unwrap(), before);
    }
}
