//! Every input error is reported with its typed variant, and nothing changes.

mod common;

use adaface::eval::{run_case, Device};
use adaface::golden::parse_case;
use adaface::reference::{detached_loss, forward, forward_backward};
use adaface::{AdaFaceConfig, Dtype, EmaState, Error, MarginPolicy, Shape, Tensor};
use common::Rng;

struct Inputs {
    shape: Shape,
    x: Vec<f64>,
    w: Vec<f64>,
    y: Vec<i64>,
}

fn inputs() -> Inputs {
    let shape = Shape::new(5, 4, 3);
    let mut rng = Rng::new(5);
    Inputs {
        shape,
        x: rng.normals(20, 2.0),
        w: rng.normals(12, 1.0),
        y: rng.labels(5, 3),
    }
}

/// Runs both entry points and checks they agree on the error.
fn error_of(shape: Shape, x: &[f64], w: &[f64], y: &[i64], state: &EmaState) -> Error {
    let cfg = AdaFaceConfig::default();
    let before = *state;
    let e1 = forward(&cfg, state, shape, x, w, y).unwrap_err();
    let e2 = forward_backward(&cfg, state, shape, x, w, y).unwrap_err();
    assert_eq!(e1, e2);
    let bits = |s: &EmaState| (s.batch_mean.to_bits(), s.batch_std.to_bits());
    assert_eq!(bits(state), bits(&before), "the state must be unchanged");
    assert!(!e1.to_string().is_empty() && !e1.to_string().contains('\n'));
    e1
}

#[test]
fn shape_mismatches_name_the_tensor_and_sizes() {
    let i = inputs();
    let st = EmaState::default();
    assert_eq!(
        error_of(i.shape, &i.x[..19], &i.w, &i.y, &st),
        Error::ShapeMismatch {
            tensor: Tensor::Features,
            expected: 20,
            actual: 19
        }
    );
    assert_eq!(
        error_of(i.shape, &i.x, &i.w[..8], &i.y, &st),
        Error::ShapeMismatch {
            tensor: Tensor::Weight,
            expected: 12,
            actual: 8
        }
    );
    assert_eq!(
        error_of(i.shape, &i.x, &i.w, &i.y[..4], &st),
        Error::ShapeMismatch {
            tensor: Tensor::Labels,
            expected: 5,
            actual: 4
        }
    );
    let cfg = AdaFaceConfig::default();
    assert_eq!(
        detached_loss(&cfg, i.shape, &i.x, &i.w, &i.y, &[0.0; 3]).unwrap_err(),
        Error::ShapeMismatch {
            tensor: Tensor::MarginScaler,
            expected: 5,
            actual: 3
        }
    );
}

#[test]
fn labels_out_of_range_name_row_and_value() {
    let i = inputs();
    let st = EmaState::default();
    let mut y = i.y.clone();
    y[3] = 3;
    assert_eq!(
        error_of(i.shape, &i.x, &i.w, &y, &st),
        Error::LabelOutOfRange {
            row: 3,
            label: 3,
            classes: 3
        }
    );
    y[3] = 0;
    y[1] = -1;
    assert_eq!(
        error_of(i.shape, &i.x, &i.w, &y, &st),
        Error::LabelOutOfRange {
            row: 1,
            label: -1,
            classes: 3
        }
    );
    // i32 and u32 labels go through the same check.
    let cfg = AdaFaceConfig::default();
    let y32: Vec<i32> = vec![0, 1, 2, -7, 0];
    let e = forward(&cfg, &st, i.shape, &i.x, &i.w, &y32).unwrap_err();
    assert_eq!(
        e,
        Error::LabelOutOfRange {
            row: 3,
            label: -7,
            classes: 3
        }
    );
    let yu: Vec<u32> = vec![0, 1, 2, 0, u32::MAX];
    let e = forward(&cfg, &st, i.shape, &i.x, &i.w, &yu).unwrap_err();
    assert_eq!(
        e,
        Error::LabelOutOfRange {
            row: 4,
            label: u32::MAX as i64,
            classes: 3
        }
    );
}

#[test]
fn non_finite_inputs_name_tensor_and_index() {
    let i = inputs();
    let st = EmaState::default();
    let mut x = i.x.clone();
    x[13] = f64::NAN;
    assert_eq!(
        error_of(i.shape, &x, &i.w, &i.y, &st),
        Error::NonFinite {
            tensor: Tensor::Features,
            index: 13
        }
    );
    let mut w = i.w.clone();
    w[7] = f64::NEG_INFINITY;
    assert_eq!(
        error_of(i.shape, &i.x, &w, &i.y, &st),
        Error::NonFinite {
            tensor: Tensor::Weight,
            index: 7
        }
    );
}

#[test]
fn zero_and_overflowing_norms_are_rejected() {
    let i = inputs();
    let st = EmaState::default();
    let mut x = i.x.clone();
    x[8..12].fill(0.0);
    assert_eq!(
        error_of(i.shape, &x, &i.w, &i.y, &st),
        Error::ZeroNorm {
            tensor: Tensor::Features,
            row: 2
        }
    );
    let mut w = i.w.clone();
    w[4..8].fill(-0.0);
    assert_eq!(
        error_of(i.shape, &i.x, &w, &i.y, &st),
        Error::ZeroNorm {
            tensor: Tensor::Weight,
            row: 1
        }
    );
    let mut x = i.x.clone();
    x[0] = 1e200;
    x[1] = 1e200;
    assert_eq!(
        error_of(i.shape, &x, &i.w, &i.y, &st),
        Error::NormOverflow {
            tensor: Tensor::Features,
            row: 0
        }
    );
    // In f32 the squares underflow or overflow earlier than in f64.
    let cfg = AdaFaceConfig::default();
    let x32: Vec<f32> = (0..20).map(|k| if k < 4 { 1e-30 } else { 1.0 }).collect();
    let w32: Vec<f32> = vec![1.0; 12];
    let e = forward(&cfg, &st, i.shape, &x32, &w32, &i.y).unwrap_err();
    assert_eq!(
        e,
        Error::ZeroNorm {
            tensor: Tensor::Features,
            row: 0
        }
    );
}

#[test]
fn empty_shapes_are_rejected() {
    let st = EmaState::default();
    assert_eq!(
        error_of(Shape::new(0, 4, 3), &[], &[0.5; 12], &[], &st),
        Error::EmptyBatch
    );
    assert_eq!(
        error_of(Shape::new(2, 0, 3), &[], &[], &[0, 1], &st),
        Error::EmptyDimension { dimension: "dim" }
    );
    assert_eq!(
        error_of(Shape::new(2, 4, 0), &[1.0; 8], &[], &[0, 0], &st),
        Error::EmptyDimension {
            dimension: "classes"
        }
    );
    assert_eq!(
        error_of(Shape::new(usize::MAX, 2, 1), &[], &[1.0, 1.0], &[], &st),
        Error::TooLarge { what: "B * D" }
    );
}

#[test]
fn invalid_states_are_rejected() {
    let i = inputs();
    for state in [
        EmaState::new(f64::NAN, 1.0),
        EmaState::new(1.0, f64::INFINITY),
        EmaState::new(1.0, -0.5),
    ] {
        assert!(matches!(
            error_of(i.shape, &i.x, &i.w, &i.y, &state),
            Error::InvalidState { .. }
        ));
    }
}

#[test]
fn invalid_configs_are_rejected_when_made() {
    let b = AdaFaceConfig::builder;
    let cases: Vec<(&str, adaface::Result<AdaFaceConfig>)> = vec![
        ("s", b().s(0.0).build()),
        ("s", b().s(-2.0).build()),
        ("s", b().s(f64::INFINITY).build()),
        ("m", b().m(-0.1).build()),
        ("m", b().m(f64::NAN).build()),
        ("h", b().h(-1.0).build()),
        ("t_alpha", b().t_alpha(0.0).build()),
        ("t_alpha", b().t_alpha(1.5).build()),
        ("t_alpha", b().t_alpha(f64::NAN).build()),
        ("eps", b().eps(0.0).build()),
        ("norm_clip_min", b().norm_clip(0.0, 100.0).build()),
        ("norm_clip_max", b().norm_clip(1.0, 0.5).build()),
        ("m", b().margin(MarginPolicy::ArcFace { m: -0.5 }).build()),
        (
            "m",
            b().margin(MarginPolicy::CosFace { m: f64::NAN }).build(),
        ),
        (
            "m1",
            b().margin(MarginPolicy::Combined {
                m1: 0.0,
                m2: 0.5,
                m3: 0.0,
            })
            .build(),
        ),
        (
            "initial_state",
            b().initial_state(EmaState::new(f64::NAN, 1.0)).build(),
        ),
    ];
    for (param, result) in cases {
        match result {
            Err(Error::InvalidConfig { parameter, .. }) => assert_eq!(parameter, param),
            other => panic!("{param}: expected InvalidConfig, got {other:?}"),
        }
    }
    // The defaults and the official head's own defaults are valid.
    assert!(b().build().is_ok());
    assert!(b().t_alpha(1.0).build().is_ok());
}

#[test]
fn unavailable_dtype_is_a_device_error() {
    let path = common::golden_files().remove(0);
    let case = parse_case(&common::read_golden(&path)).unwrap();
    assert!(matches!(
        run_case(&case, Device::Reference, Dtype::BF16),
        Err(Error::DeviceUnavailable { .. })
    ));
}
