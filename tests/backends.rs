//! The same checks on every backend that computes a training step: the
//! f32 reference, the fast CPU backend, the materialising CPU baseline, the
//! kernels on the simulator (tiled, flash, class-chunked, naive) and on a
//! GPU (`#[ignore]`d: scripts/gpu_check.sh runs them with
//! `--include-ignored`, where no GPU is a failure). Each check is one test
//! per backend (`check::backend`), each against the f64 reference on the
//! same rounded inputs within that backend's bounds.

mod common;

use adaface::{AdaFaceConfig, Dtype, Error, Tensor};
use common::*;

/// Awkward shapes (B = 1, odd B across row tiles, C not a multiple of any
/// class tile, D from 16 to the 512 maximum), every dtype, both label
/// types.
fn matches_the_reference_on_awkward_shapes(backend: Backend) {
    let cfg = AdaFaceConfig::default();
    let shapes = [
        (1usize, 16usize, 7usize),
        (7, 40, 130),
        (33, 96, 77),
        (5, 512, 65),
    ];
    for (n, &(b, d, c)) in shapes.iter().enumerate() {
        let inp = random_inputs(6000 + n as u64, b, d, c);
        for (k, dtype) in [Dtype::F32, Dtype::BF16, Dtype::F16]
            .into_iter()
            .enumerate()
        {
            let labels = if (n + k) % 2 == 0 {
                LabelType::I64
            } else {
                LabelType::I32
            };
            backend.check(dtype, labels, &cfg, &inp, &format!("B={b} D={d} C={c}"));
        }
    }
}
test_backend!(matches_the_reference_on_awkward_shapes);

/// The EMA state carries over steps: three steps, each from the state the
/// backend reported after the previous one, against the reference chained
/// the same way.
fn the_ema_state_carries_over_steps(backend: Backend) {
    let cfg = AdaFaceConfig::builder().t_alpha(0.2).build().unwrap();
    let mut state = cfg.initial_state();
    for k in 0..3u64 {
        let inp = random_inputs(6100 + k, 9, 32, 50);
        let step = backend
            .step(Dtype::F32, LabelType::I64, &cfg, state, &inp)
            .expect("step");
        let r = reference_for(Dtype::F32, &cfg, &state, &inp);
        step.errors(&r)
            .assert_within(backend.bounds(Dtype::F32), &format!("{backend:?} step {k}"));
        assert_ne!(
            step.state, state,
            "{backend:?} step {k}: the state did not move"
        );
        state = step.state;
    }
}
test_backend!(the_ema_state_carries_over_steps);

/// Same inputs, same bits (fixed reduction orders everywhere).
fn same_inputs_same_bits(backend: Backend) {
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(6200, 33, 64, 150);
    let run = || {
        let s = backend
            .step(Dtype::BF16, LabelType::I64, &cfg, cfg.initial_state(), &inp)
            .expect("step");
        (s.bits(), s.state)
    };
    assert!(run() == run(), "{backend:?}: two runs differ");
}
test_backend!(same_inputs_same_bits);

/// A non-finite feature and a label out of range: the typed errors, with
/// the index the host-side checks name.
fn bad_input_gives_the_typed_error(backend: Backend) {
    let cfg = AdaFaceConfig::default();
    let mut inp = random_inputs(6300, 7, 16, 20);
    let state = cfg.initial_state();
    inp.x[3 * 16 + 5] = f64::NAN;
    let err = backend
        .step(Dtype::F32, LabelType::I64, &cfg, state, &inp)
        .expect_err("a NaN feature accepted");
    assert_eq!(
        err,
        Error::NonFinite {
            tensor: Tensor::Features,
            index: 53
        },
        "{backend:?}"
    );
    let mut inp = random_inputs(6301, 7, 16, 20);
    inp.labels[4] = 20;
    let err = backend
        .step(Dtype::F32, LabelType::I64, &cfg, state, &inp)
        .expect_err("a label out of range accepted");
    assert!(
        matches!(
            err,
            Error::LabelOutOfRange {
                row: 4,
                label: 20,
                ..
            }
        ),
        "{backend:?}: {err:?}"
    );
}
test_backend!(bad_input_gives_the_typed_error);
