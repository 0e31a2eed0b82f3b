//! The class-chunked cuBLAS path (`adaface::chunked`): its kernels on the
//! simulator with the GEMMs done on the CPU from the same specs and betas
//! cuBLAS receives, against the f64 reference, on awkward shapes (odd B,
//! C not a multiple of the chunk, one chunk covering C, small and large D);
//! determinism, EMA over steps, typed errors that write nothing, and the
//! workspace bound. The cuBLAS implementation runs on a GPU (ignored here;
//! scripts/gpu_check.sh runs it). Like the naive path it rounds the
//! normalised inputs and, for 16-bit inputs, the logit gradient to the
//! input type, so its tolerances are the naive path's.

mod common;

use adaface::chunked::{self, ChunkedLayout};
use adaface::{naive, AdaFaceConfig, Dtype, EmaState, Error, Shape};
use common::*;
use half::{bf16, f16};

/// One chunked step on the simulator from `state` (gradients start as NaN,
/// so an unwritten element shows).
fn run_chunked<E: StepElement, L: StepLabel>(
    cfg: &AdaFaceConfig,
    state: EmaState,
    inp: &Inputs,
    chunk: usize,
) -> StepOut {
    Backend::SimChunked(chunk)
        .step_as::<E, L>(cfg, state, inp)
        .expect("chunked step")
}

#[test]
fn chunked_pipeline_on_the_simulator_matches_the_reference() {
    let cfg = AdaFaceConfig::default();
    // (B, D, C, chunk): several chunks with a partial last one; chunk == C;
    // chunk > C; D small; D large with many small chunks; chunk of one class.
    let cases = [
        (33usize, 40usize, 130usize, 32usize),
        (7, 96, 77, 77),
        (1, 16, 50, 64),
        (17, 4, 100, 33),
        (5, 600, 45, 8),
        (9, 24, 23, 1),
    ];
    for (n, &(b, d, c, chunk)) in cases.iter().enumerate() {
        let inp = random_inputs(8100 + n as u64, b, d, c);
        let labels = if n % 2 == 0 {
            LabelType::I64
        } else {
            LabelType::I32
        };
        for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
            // Bounds: `Bounds::chunked`.
            Backend::SimChunked(chunk).check(
                dtype,
                labels,
                &cfg,
                &inp,
                &format!("B={b} D={d} C={c} chunk={chunk}"),
            );
        }
    }
}

#[test]
fn every_chunk_size_gives_the_same_step_within_rounding() {
    // The chunking changes only the order of the f32 sum-exp merge: the
    // results of every chunk size agree with one chunk to f32 rounding.
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(8200, 11, 32, 97);
    let state = cfg.initial_state();
    let whole = run_chunked::<f32, i64>(&cfg, state, &inp, 97);
    for chunk in [1usize, 2, 10, 48, 96] {
        let r = run_chunked::<f32, i64>(&cfg, state, &inp, chunk);
        assert!(rel(r.loss, whole.loss) < 1e-6, "chunk {chunk}: loss");
        let dx = rel_norm(&widen32(&r.dx), &widen32(&whole.dx));
        let dw = rel_norm(&widen32(&r.dw), &widen32(&whole.dw));
        assert!(dx < 1e-5 && dw < 1e-5, "chunk {chunk}: dX {dx:e} dW {dw:e}");
    }
}

#[test]
fn chunked_steps_are_bit_identical() {
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(8300, 13, 48, 70);
    let state = cfg.initial_state();
    let a = run_chunked::<bf16, i32>(&cfg, state, &inp, 16);
    let b = run_chunked::<bf16, i32>(&cfg, state, &inp, 16);
    assert_eq!(a.bits(), b.bits());
    assert_eq!(a.state, b.state);
    assert!(a.dx.iter().chain(&a.dw).all(|v| v.is_finite()));
}

#[test]
fn the_ema_state_carries_over_steps() {
    let cfg = AdaFaceConfig::default();
    let mut state = cfg.initial_state();
    let mut ref_state = state;
    for step in 0..4u64 {
        let inp = random_inputs(8400 + step, 15, 24, 61);
        let r = run_chunked::<f32, i64>(&cfg, state, &inp, 20);
        let reference = reference_step::<f32>(&cfg, &ref_state, &inp);
        r.errors(&reference)
            .assert_f32_accuracy(&format!("chunked step {step}"));
        state = r.state;
        ref_state = reference.state_after();
        assert!(rel(state.batch_mean, ref_state.batch_mean) < 1e-9);
    }
    assert_ne!(state, cfg.initial_state());
}

/// The error of the chunked path and of the naive simulated path on the
/// same input, with the gradients checked untouched.
fn both_errors(
    shape: Shape,
    x: &[f32],
    w: &[f32],
    labels: &[i64],
    state: EmaState,
    grads: (usize, usize),
) -> (Error, Error) {
    let cfg = AdaFaceConfig::default();
    let mut dx = vec![7.0f32; grads.0];
    let mut dw = vec![7.0f32; grads.1];
    let e1 = chunked::sim::forward_backward(&cfg, state, shape, 4, x, w, labels, &mut dx, &mut dw)
        .expect_err("chunked path accepts bad input");
    assert!(
        dx.iter().chain(&dw).all(|&v| v == 7.0),
        "chunked path wrote on {e1:?}"
    );
    let e2 = naive::sim::forward_backward(&cfg, state, shape, x, w, labels, &mut dx, &mut dw)
        .expect_err("naive path accepts bad input");
    (e1, e2)
}

#[test]
fn bad_input_gives_the_typed_errors_of_the_naive_path_and_writes_nothing() {
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(8500, 5, 8, 10);
    let shape = inp.shape;
    let x = round::<f32>(&inp.x);
    let w = round::<f32>(&inp.w);
    let state = cfg.initial_state();
    let sizes = (x.len(), w.len());
    let same = |(a, b): (Error, Error)| {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        a
    };

    let mut labels = inp.labels.clone();
    labels[3] = 10;
    let e = same(both_errors(shape, &x, &w, &labels, state, sizes));
    assert!(matches!(e, Error::LabelOutOfRange { .. }), "{e:?}");
    labels[3] = -1;
    let e = same(both_errors(shape, &x, &w, &labels, state, sizes));
    assert!(matches!(e, Error::LabelOutOfRange { .. }), "{e:?}");

    let mut bad_x = x.clone();
    bad_x[7] = f32::NAN;
    let e = same(both_errors(shape, &bad_x, &w, &inp.labels, state, sizes));
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");

    let mut bad_w = w.clone();
    for v in &mut bad_w[8..16] {
        *v = 0.0;
    }
    let e = same(both_errors(shape, &x, &bad_w, &inp.labels, state, sizes));
    assert!(matches!(e, Error::ZeroNorm { .. }), "{e:?}");

    let e = same(both_errors(
        shape,
        &x,
        &w,
        &inp.labels,
        state,
        (sizes.0 - 1, sizes.1),
    ));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");

    let bad_state = EmaState {
        batch_mean: f64::NAN,
        ..state
    };
    let e = same(both_errors(shape, &x, &w, &inp.labels, bad_state, sizes));
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");

    // A chunk of zero classes: a typed configuration error, nothing written.
    let mut dx = vec![7.0f32; sizes.0];
    let mut dw = vec![7.0f32; sizes.1];
    let e = chunked::sim::forward_backward(
        &cfg,
        state,
        shape,
        0,
        &x,
        &w,
        &inp.labels,
        &mut dx,
        &mut dw,
    )
    .expect_err("zero chunk");
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
    assert!(dx.iter().chain(&dw).all(|&v| v == 7.0));
}

#[test]
fn workspace_is_o_of_batch_times_chunk_and_independent_of_classes() {
    // B = 512, D = 512, bf16, 16k classes per chunk: f32 chunk logits
    // (33.6 MB) + bf16 chunk gradient (16.8 MB) + bf16 normalised W chunk
    // (16.8 MB) + normalised x and vectors.
    let at = |c: usize, chunk: usize, eb: usize| {
        ChunkedLayout::new(Shape::new(512, 512, c), eb, chunk)
            .unwrap()
            .extra_bytes()
    };
    let mb = at(1_000_000, 16384, 2) as f64 / 1e6;
    assert!((67.0..69.0).contains(&mb), "chunked extra {mb} MB");
    assert_eq!(at(1_000_000, 16384, 2), at(100_000, 16384, 2));
    assert_eq!(at(1_000_000, 16384, 2), at(16384, 16384, 2));
    let mb8 = at(1_000_000, 8192, 2) as f64 / 1e6;
    assert!((33.5..35.0).contains(&mb8), "chunked extra {mb8} MB at 8k");
    // A chunk wider than C is clamped to C.
    assert_eq!(at(1000, 16384, 2), at(1000, 1000, 2));
    // f32 inputs: no separate gradient copy, 4-byte normalised copies.
    let f32_mb = at(1_000_000, 16384, 4) as f64 / 1e6;
    assert!(
        (68.0..70.0).contains(&f32_mb),
        "chunked f32 extra {f32_mb} MB"
    );
    // Against the naive path at the same shape: 4.1 GB.
    let naive_bytes = naive::NaiveLayout::new(Shape::new(512, 512, 1_000_000), 2)
        .unwrap()
        .extra_bytes();
    assert!(naive_bytes > 50 * at(1_000_000, 16384, 2));
    assert!(ChunkedLayout::new(Shape::new(4, 4, 4), 2, 0).is_err());
}

#[test]
fn the_chunk_plan_covers_every_class_once() {
    assert_eq!(
        chunked::chunks(10, 4).unwrap(),
        vec![(0, 4), (4, 4), (8, 2)]
    );
    assert_eq!(chunked::chunks(10, 10).unwrap(), vec![(0, 10)]);
    assert_eq!(chunked::chunks(3, 100).unwrap(), vec![(0, 3)]);
    assert!(chunked::chunks(3, 0).is_err());
    let g = chunked::ChunkGemms::new(Shape::new(3, 5, 10), 4).unwrap();
    assert_eq!((g.cos.m, g.cos.n, g.cos.k, g.cos.ldc), (4, 3, 5, 4));
    assert_eq!((g.dx.m, g.dx.n, g.dx.k, g.dx.ldb), (5, 3, 4, 4));
    assert_eq!((g.dw.m, g.dw.n, g.dw.k, g.dw.ldc), (5, 4, 3, 5));
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn chunked_cublas_path_on_a_gpu_matches_the_reference() {
    use adaface::chunked::cuda::ChunkedCuda;
    use adaface::cuda::default_stream;
    let stream = default_stream(0).unwrap_or_else(|e| panic!("no GPU visible ({e})"));
    let cfg = AdaFaceConfig::default();
    for (n, &(b, d, c, chunk)) in [
        (33usize, 40usize, 130usize, 32usize),
        (129, 512, 3001, 1024),
    ]
    .iter()
    .enumerate()
    {
        let mut path = ChunkedCuda::new(stream.clone(), cfg, chunk)
            .unwrap_or_else(|e| panic!("no cuBLAS: {e}"));
        let inp = random_inputs(8600 + n as u64, b, d, c);
        let state = cfg.initial_state();
        macro_rules! run {
            ($e:ty, $dtype:expr) => {{
                path.set_state(state).unwrap();
                let x = stream.clone_htod(&round::<$e>(&inp.x)).unwrap();
                let w = stream.clone_htod(&round::<$e>(&inp.w)).unwrap();
                let labels = stream.clone_htod(&inp.labels).unwrap();
                let mut dx = stream.alloc_zeros::<f32>(b * d).unwrap();
                let mut dw = stream.alloc_zeros::<f32>(c * d).unwrap();
                let step = path
                    .forward_backward(inp.shape, &x, &w, &labels, &mut dx, &mut dw)
                    .unwrap();
                let s = step.summary().unwrap();
                let r = reference_step::<$e>(&cfg, &state, &inp);
                let e = StepErrors::new(
                    s.loss,
                    &stream.clone_dtoh(&dx).unwrap(),
                    &stream.clone_dtoh(&dw).unwrap(),
                    s.state_after,
                    &r,
                );
                // Determinism: the same step again is bit-identical.
                path.set_state(state).unwrap();
                let mut dx2 = stream.alloc_zeros::<f32>(b * d).unwrap();
                let mut dw2 = stream.alloc_zeros::<f32>(c * d).unwrap();
                let s2 = path
                    .forward_backward(inp.shape, &x, &w, &labels, &mut dx2, &mut dw2)
                    .unwrap()
                    .summary()
                    .unwrap();
                assert_eq!(s.loss.to_bits(), s2.loss.to_bits());
                let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                assert_eq!(
                    bits(stream.clone_dtoh(&dx).unwrap()),
                    bits(stream.clone_dtoh(&dx2).unwrap())
                );
                assert_eq!(
                    bits(stream.clone_dtoh(&dw).unwrap()),
                    bits(stream.clone_dtoh(&dw2).unwrap())
                );
                let what = format!("cuBLAS chunked B={b} D={d} C={c} chunk={chunk} {}", $dtype);
                println!("{what}: {e:?} extra {} bytes", step.extra_bytes);
                e.assert_within(Bounds::chunked($dtype), &what);
            }};
        }
        run!(f32, Dtype::F32);
        run!(bf16, Dtype::BF16);
        run!(f16, Dtype::F16);
    }
}
