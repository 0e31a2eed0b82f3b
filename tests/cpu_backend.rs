//! The fast CPU backend against the reference (`f64` as the oracle): every
//! golden file, random awkward shapes, every dtype and label type, the EMA
//! contract, errors, determinism.

mod common;

use adaface::cpu::{self, CpuAdaFace, CpuElement, CpuOptions};
use adaface::eval::{run_case, Device};
use adaface::golden::parse_case;
use adaface::{reference, AdaFaceConfig, Dtype, EmaState, Error, Shape, Tensor};
use common::{golden_files, rel, rel_norm, Rng};
use half::{bf16, f16};

const TOL_LOSS: f64 = 1e-5;
const TOL_ARRAY: f64 = 1e-4;

/// Small tiles and an odd partition count, so tiny shapes still cross tile,
/// row-block and partition boundaries.
fn small_tiles() -> CpuOptions {
    CpuOptions {
        class_tile: 16,
        row_tile: 5,
        partitions: 3,
    }
}

fn widen<E: CpuElement>(v: &[E]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

fn narrow<E: CpuElement>(v: &[f64]) -> Vec<E> {
    v.iter().map(|&x| E::from_f64(x)).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn matches_the_reference_on_every_golden_file() {
    let mut checked = 0;
    for path in golden_files() {
        let case = parse_case(&common::read_golden(&path)).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let want = run_case(&case, Device::Reference, Dtype::F64).unwrap();
        let got = run_case(&case, Device::Cpu, Dtype::F32).unwrap();
        // Directly against the official outputs too, not only the reference.
        common::assert_matches_golden(&name, &case, &got, 2e-5, 2e-4);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let at = format!("{name} step {k}");
            let e = rel(g.loss, w.loss);
            assert!(e <= TOL_LOSS, "{at}: loss rel err {e:e}");
            for (what, a, b) in [
                ("norms", &g.norms, &w.norms),
                ("margin_scaler", &g.margin_scaler, &w.margin_scaler),
                ("grad_features", &g.grad_features, &w.grad_features),
                ("grad_weight", &g.grad_weight, &w.grad_weight),
            ] {
                let e = rel_norm(a, b);
                assert!(e <= TOL_ARRAY, "{at}: {what} rel-norm err {e:e}");
            }
            assert!(rel(g.state_after.batch_mean, w.state_after.batch_mean) <= TOL_LOSS);
            assert!(rel(g.state_after.batch_std, w.state_after.batch_std) <= TOL_LOSS);
            assert!(g.logits.is_none(), "the fused backend has no logits");
            checked += 1;
        }
    }
    assert!(checked >= 12 * 3, "only {checked} steps checked");
}

struct Problem {
    cfg: AdaFaceConfig,
    shape: Shape,
    x: Vec<f64>,
    w: Vec<f64>,
    labels: Vec<i64>,
}

fn problem(seed: u64, b: usize, d: usize, c: usize) -> Problem {
    let mut rng = Rng::new(seed);
    // Norms spread widely so the scaler takes many values, some clipped.
    let x = (0..b)
        .flat_map(|_| {
            let scale = 0.05 + 3.0 * rng.uniform();
            rng.normals(d, scale)
        })
        .collect();
    Problem {
        cfg: AdaFaceConfig::builder().t_alpha(0.3).build().unwrap(),
        shape: Shape::new(b, d, c),
        x,
        w: rng.normals(c * d, 1.0),
        labels: rng.labels(b, c),
    }
}

/// Runs the backend in `E` and the `f64` reference on the same rounded
/// inputs, and compares.
fn check<E: CpuElement>(p: &Problem, options: CpuOptions) {
    let x: Vec<E> = narrow(&p.x);
    let w: Vec<E> = narrow(&p.w);
    let state = EmaState::new(1.5, 0.7);
    let want =
        reference::forward_backward(&p.cfg, &state, p.shape, &widen(&x), &widen(&w), &p.labels)
            .unwrap();
    let mut gx = vec![f32::NAN; x.len()];
    let mut gw = vec![f32::NAN; w.len()];
    let got = cpu::forward_backward(
        &p.cfg, &state, &options, p.shape, &x, &w, &p.labels, &mut gx, &mut gw,
    )
    .unwrap();
    let at = format!("{:?} {} {options:?}", p.shape, E::DTYPE);
    let e = rel(got.loss as f64, want.loss);
    assert!(e <= TOL_LOSS, "{at}: loss rel err {e:e}");
    for (what, a, b) in [
        ("grad_features", f64s(&gx), &want.grad_features),
        ("grad_weight", f64s(&gw), &want.grad_weight),
        (
            "sample_loss",
            f64s(&got.diagnostics.sample_loss),
            &want.diagnostics.sample_loss,
        ),
        (
            "margin_scaler",
            f64s(&got.diagnostics.margin_scaler),
            &want.diagnostics.margin_scaler,
        ),
        (
            "target_cosine",
            f64s(&got.diagnostics.target_cosine),
            &want.diagnostics.target_cosine,
        ),
        (
            "norms",
            f64s(&got.diagnostics.norms),
            &want.diagnostics.norms,
        ),
    ] {
        let e = rel_norm(&a, b);
        assert!(e <= TOL_ARRAY, "{at}: {what} rel-norm err {e:e}");
    }
    let (s, r) = (got.stats.state_after, want.state_after());
    assert!(
        rel(s.batch_mean, r.batch_mean) <= TOL_LOSS,
        "{at}: batch_mean"
    );
    assert!(rel(s.batch_std, r.batch_std) <= TOL_LOSS, "{at}: batch_std");
}

#[test]
fn matches_the_reference_on_awkward_shapes() {
    let mut seed = 1;
    for &(b, c) in &[(1, 7), (3, 130), (17, 1), (33, 333), (65, 1000)] {
        for &d in &[16, 64, 96, 512] {
            let p = problem(seed, b, d, c);
            seed += 1;
            check::<f32>(&p, small_tiles());
            check::<f32>(&p, CpuOptions::default());
        }
    }
}

#[test]
fn matches_the_reference_in_bf16_and_f16() {
    for (k, &(b, d, c)) in [(7, 64, 50), (33, 96, 257), (5, 512, 129)]
        .iter()
        .enumerate()
    {
        let p = problem(100 + k as u64, b, d, c);
        check::<bf16>(&p, small_tiles());
        check::<f16>(&p, small_tiles());
        check::<bf16>(&p, CpuOptions::default());
        check::<f16>(&p, CpuOptions::default());
    }
}

#[test]
fn label_types_give_identical_results() {
    let p = problem(7, 9, 32, 40);
    let x: Vec<f32> = narrow(&p.x);
    let w: Vec<f32> = narrow(&p.w);
    let run = |labels: &dyn Fn(&mut CpuAdaFace) -> adaface::Result<adaface::StepOutput<f32>>| {
        let mut loss = CpuAdaFace::new(p.cfg);
        labels(&mut loss).unwrap()
    };
    let l64 = run(&|l| l.forward_backward_alloc(p.shape, &x, &w, &p.labels));
    let l32: Vec<i32> = p.labels.iter().map(|&v| v as i32).collect();
    let lu32: Vec<u32> = p.labels.iter().map(|&v| v as u32).collect();
    assert_eq!(
        l64,
        run(&|l| l.forward_backward_alloc(p.shape, &x, &w, &l32))
    );
    assert_eq!(
        l64,
        run(&|l| l.forward_backward_alloc(p.shape, &x, &w, &lu32))
    );
}

#[test]
fn deterministic_whatever_the_thread_count() {
    let p = problem(11, 21, 64, 500);
    let x: Vec<f32> = narrow(&p.x);
    let w: Vec<f32> = narrow(&p.w);
    let options = small_tiles();
    let step = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut loss = CpuAdaFace::with_options(p.cfg, options).unwrap();
            loss.forward_backward_alloc(p.shape, &x, &w, &p.labels)
                .unwrap()
        })
    };
    let one = step(1);
    assert_eq!(one, step(3));
    assert_eq!(one, step(2));
}

#[test]
fn forward_matches_the_training_step_and_honours_the_ema_choice() {
    let p = problem(12, 13, 32, 77);
    let x: Vec<f32> = narrow(&p.x);
    let w: Vec<f32> = narrow(&p.w);
    let mut loss = CpuAdaFace::with_options(p.cfg, small_tiles()).unwrap();
    let start = loss.state();
    assert_eq!(start, p.cfg.initial_state());

    let kept = loss.forward(p.shape, &x, &w, &p.labels, false).unwrap();
    assert_eq!(loss.state(), start, "Keep must not move the state");
    assert!(kept.logits.is_empty());
    let updated = loss.forward(p.shape, &x, &w, &p.labels, true).unwrap();
    assert_eq!(kept.loss, updated.loss);
    assert_eq!(loss.state(), updated.stats.state_after);
    assert_ne!(loss.state(), start);

    // The training step from the same start gives the same loss and state.
    loss.set_state(start).unwrap();
    let step = loss
        .forward_backward_alloc(p.shape, &x, &w, &p.labels)
        .unwrap();
    assert_eq!(step.loss, updated.loss);
    assert_eq!(loss.state(), updated.stats.state_after);

    // Three steps carry the state like the reference does.
    let mut ref_state = start;
    loss.set_state(start).unwrap();
    for k in 0..3 {
        let q = problem(50 + k, 13, 32, 77);
        let xq: Vec<f32> = narrow(&q.x);
        let r = reference::forward(&p.cfg, &ref_state, p.shape, &q.x, &p.w, &q.labels).unwrap();
        ref_state = r.state_after();
        loss.forward_backward_alloc(p.shape, &xq, &w, &q.labels)
            .unwrap();
        assert!(rel(loss.state().batch_mean, ref_state.batch_mean) < 1e-5);
        assert!(rel(loss.state().batch_std, ref_state.batch_std) < 1e-5);
    }
}

#[test]
fn a_batch_of_one_keeps_the_std() {
    let p = problem(13, 1, 16, 9);
    let x: Vec<f32> = narrow(&p.x);
    let w: Vec<f32> = narrow(&p.w);
    let mut loss = CpuAdaFace::new(p.cfg);
    let before = loss.state();
    let step = loss
        .forward_backward_alloc(p.shape, &x, &w, &p.labels)
        .unwrap();
    assert!(step.loss.is_finite());
    assert_eq!(loss.state().batch_std, before.batch_std);
    assert_ne!(loss.state().batch_mean, before.batch_mean);
}

#[test]
fn errors_write_nothing_and_keep_the_state() {
    let p = problem(14, 6, 16, 10);
    let x: Vec<f32> = narrow(&p.x);
    let w: Vec<f32> = narrow(&p.w);
    let shape = p.shape;
    let mut loss = CpuAdaFace::new(p.cfg);
    loss.forward_backward_alloc(shape, &x, &w, &p.labels)
        .unwrap();
    let state = loss.state();

    let mut bad_label = p.labels.clone();
    bad_label[3] = 10;
    let mut nan_x = x.clone();
    nan_x[17] = f32::NAN;
    let mut zero_w = w.clone();
    zero_w[2 * 16..3 * 16].fill(0.0);
    // (features, weight, labels, dX length, dW length, expected error)
    type Case = (Vec<f32>, Vec<f32>, Vec<i64>, usize, usize, Error);
    let cases: Vec<Case> = vec![
        (
            x.clone(),
            w.clone(),
            bad_label,
            6 * 16,
            10 * 16,
            Error::LabelOutOfRange {
                row: 3,
                label: 10,
                classes: 10,
            },
        ),
        (
            nan_x,
            w.clone(),
            p.labels.clone(),
            6 * 16,
            10 * 16,
            Error::NonFinite {
                tensor: Tensor::Features,
                index: 17,
            },
        ),
        (
            x.clone(),
            zero_w,
            p.labels.clone(),
            6 * 16,
            10 * 16,
            Error::ZeroNorm {
                tensor: Tensor::Weight,
                row: 2,
            },
        ),
        (
            x.clone(),
            w[..9 * 16].to_vec(),
            p.labels.clone(),
            6 * 16,
            10 * 16,
            Error::ShapeMismatch {
                tensor: Tensor::Weight,
                expected: 160,
                actual: 144,
            },
        ),
        (
            x.clone(),
            w.clone(),
            p.labels.clone(),
            6 * 16 - 1,
            10 * 16,
            Error::ShapeMismatch {
                tensor: Tensor::GradFeatures,
                expected: 96,
                actual: 95,
            },
        ),
        (
            x.clone(),
            w.clone(),
            p.labels.clone(),
            6 * 16,
            10 * 16 + 1,
            Error::ShapeMismatch {
                tensor: Tensor::GradWeight,
                expected: 160,
                actual: 161,
            },
        ),
    ];
    for (xs, ws, ls, nx, nw, want) in cases {
        let mut gx = vec![7.0f32; nx];
        let mut gw = vec![7.0f32; nw];
        let err = loss
            .forward_backward(shape, &xs, &ws, &ls, &mut gx, &mut gw)
            .unwrap_err();
        assert_eq!(err, want);
        assert!(
            gx.iter().chain(&gw).all(|&v| v == 7.0),
            "{want:?}: output written"
        );
        assert_eq!(loss.state(), state, "{want:?}: state moved");
        if nx == 96 && nw == 160 {
            // An input error: the forward rejects it too, state untouched.
            assert_eq!(loss.forward(shape, &xs, &ws, &ls, true).err(), Some(want));
            assert_eq!(loss.state(), state);
        }
    }
    let empty = Shape::new(0, 16, 10);
    assert_eq!(
        loss.forward_backward(
            empty,
            &[] as &[f32],
            &w,
            &[] as &[i64],
            &mut [],
            &mut vec![0.0; 160]
        ),
        Err(Error::EmptyBatch)
    );
    assert!(loss.set_state(EmaState::new(f64::NAN, 1.0)).is_err());
    assert_eq!(loss.state(), state);
    let zero_tiles = CpuOptions {
        class_tile: 0,
        ..CpuOptions::default()
    };
    assert!(CpuAdaFace::with_options(p.cfg, zero_tiles).is_err());
}

#[test]
fn eval_device_cpu_accepts_the_narrow_dtypes() {
    let path = golden_files().remove(0);
    let case = parse_case(&common::read_golden(&path)).unwrap();
    assert_eq!(Device::parse("cpu"), Some(Device::Cpu));
    assert_eq!(Device::Cpu.default_dtype(), Dtype::F32);
    for dtype in [Dtype::BF16, Dtype::F16] {
        let steps = run_case(&case, Device::Cpu, dtype).unwrap();
        assert!(steps.iter().all(|s| s.loss.is_finite()));
    }
    assert!(run_case(&case, Device::Cpu, Dtype::F64).is_err());
}

#[test]
fn naive_baseline_matches_the_reference() {
    for (k, &(b, d, c)) in [(5, 16, 12), (1, 64, 30), (19, 96, 77)].iter().enumerate() {
        let p = problem(15 + k as u64, b, d, c);
        let x: Vec<bf16> = narrow(&p.x);
        let w: Vec<bf16> = narrow(&p.w);
        let state = p.cfg.initial_state();
        let naive =
            adaface::naive::cpu::forward_backward(&p.cfg, &state, p.shape, &x, &w, &p.labels)
                .unwrap();
        let want =
            reference::forward_backward(&p.cfg, &state, p.shape, &widen(&x), &widen(&w), &p.labels)
                .unwrap();
        assert!(rel(naive.loss as f64, want.loss) <= TOL_LOSS);
        assert!(rel_norm(&f64s(&naive.grad_features), &want.grad_features) <= TOL_ARRAY);
        assert!(rel_norm(&f64s(&naive.grad_weight), &want.grad_weight) <= TOL_ARRAY);
        let fwd = adaface::naive::cpu::forward(&p.cfg, &state, p.shape, &x, &w, &p.labels).unwrap();
        assert_eq!(fwd.logits.len(), b * c);
        assert_eq!(fwd.loss, naive.loss);
    }
}
