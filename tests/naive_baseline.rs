//! The naive GPU baseline (`adaface::naive`): its kernels on the simulator
//! with the GEMMs done on the CPU from the same specs cuBLAS receives, and
//! the real thing (cuBLAS) on a GPU when one is visible, both against the
//! f64 reference. The naive path rounds the normalised inputs and, for
//! 16-bit inputs, the logit gradient to the input type (as a mixed-precision
//! framework would), so its tolerances are looser than the fused kernels'.

mod common;

use adaface::naive::NaiveLayout;
use adaface::{AdaFaceConfig, Dtype, Shape};
use common::*;
use half::{bf16, f16};

#[test]
fn naive_pipeline_on_the_simulator_matches_the_reference() {
    let cfg = AdaFaceConfig::default();
    for (n, &(b, d, c)) in [(33usize, 40usize, 130usize), (7, 96, 77), (1, 16, 50)]
        .iter()
        .enumerate()
    {
        let inp = random_inputs(7000 + n as u64, b, d, c);
        let labels = if n % 2 == 0 {
            LabelType::I64
        } else {
            LabelType::I32
        };
        for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
            // Bounds: `Bounds::naive`.
            Backend::SimNaive.check(dtype, labels, &cfg, &inp, &format!("B={b} D={d} C={c}"));
        }
    }
}

#[test]
fn naive_extra_memory_is_the_materialised_logits_and_copies() {
    // B = 512, D = 512, C = 1M, bf16: f32 logits (2.05 GB) + bf16 logit
    // gradient (1.02 GB) + bf16 normalised W (1.02 GB) + small vectors.
    let l = NaiveLayout::new(Shape::new(512, 512, 1_000_000), 2).unwrap();
    let gb = l.extra_bytes() as f64 / 1e9;
    assert!((4.0..4.2).contains(&gb), "naive extra bytes {gb} GB");
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn naive_cublas_path_on_a_gpu_matches_the_reference() {
    use adaface::cuda::default_stream;
    use adaface::naive::cuda::NaiveCuda;
    let stream = match default_stream(0) {
        Ok(s) => s,
        Err(e) => {
            panic!("no GPU visible ({e})");
        }
    };
    let cfg = AdaFaceConfig::default();
    let mut naive = match NaiveCuda::new(stream.clone(), cfg) {
        Ok(n) => n,
        Err(e) => {
            panic!("no cuBLAS: {e}");
        }
    };
    for (n, &(b, d, c)) in [(33usize, 40usize, 130usize), (129, 512, 3001)]
        .iter()
        .enumerate()
    {
        let inp = random_inputs(7100 + n as u64, b, d, c);
        let state = cfg.initial_state();
        naive.set_state(state).unwrap();
        macro_rules! run {
            ($e:ty, $dtype:expr) => {{
                let x = stream.clone_htod(&round::<$e>(&inp.x)).unwrap();
                let w = stream.clone_htod(&round::<$e>(&inp.w)).unwrap();
                let labels = stream.clone_htod(&inp.labels).unwrap();
                let mut dx = stream.alloc_zeros::<f32>(b * d).unwrap();
                let mut dw = stream.alloc_zeros::<f32>(c * d).unwrap();
                let s = naive
                    .forward_backward(inp.shape, &x, &w, &labels, &mut dx, &mut dw)
                    .unwrap()
                    .summary()
                    .unwrap();
                naive.set_state(state).unwrap();
                let r = reference_step::<$e>(&cfg, &state, &inp);
                let e = StepErrors::new(
                    s.loss,
                    &stream.clone_dtoh(&dx).unwrap(),
                    &stream.clone_dtoh(&dw).unwrap(),
                    s.state_after,
                    &r,
                );
                let what = format!("cuBLAS naive B={b} D={d} C={c} {}", $dtype);
                println!("{what}: {e:?}");
                e.assert_within(Bounds::naive($dtype), &what);
            }};
        }
        run!(f32, Dtype::F32);
        run!(bf16, Dtype::BF16);
        run!(f16, Dtype::F16);
    }
}

#[cfg(feature = "cuda")]
fn bench_rows(shape: Shape, iters: usize) -> Option<Vec<adaface::cuda::bench::BenchResult>> {
    use adaface::cuda::bench::{bench, BenchConfig, BenchPath};
    use adaface::cuda::default_stream;
    let stream = match default_stream(0) {
        Ok(s) => s,
        Err(e) => {
            panic!("no GPU visible ({e})");
        }
    };
    let cfg = BenchConfig {
        shape,
        dtype: Dtype::BF16,
        warmup: 3,
        iters,
        seed: 11,
    };
    Some(bench(&stream, &cfg, &[BenchPath::Fused, BenchPath::Naive]).expect("bench"))
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn bench_helper_times_both_paths() {
    let Some(rows) = bench_rows(Shape::new(64, 64, 1000), 3) else {
        return;
    };
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert!(r.median_ms > 0.0 && r.median_ms.is_finite(), "{r:?}");
    }
    assert!(
        rows[1].peak_extra_bytes > rows[0].peak_extra_bytes,
        "{rows:?}"
    );
}

/// The H200 numbers of docs/PERF.md: `cargo test --release --test
/// naive_baseline -- --ignored --nocapture` (scripts/gpu_check.sh runs it).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "GPU benchmark, minutes"]
fn bench_b512_d512_bf16_fused_vs_naive() {
    println!("BENCH path   dtype  B    D    C        median_ms  TFLOP/s  extra_MB");
    for c in [100_000usize, 1_000_000] {
        let Some(rows) = bench_rows(Shape::new(512, 512, c), 20) else {
            return;
        };
        for r in rows {
            println!(
                "BENCH {:6} bf16   512  512  {:<8} {:10.3} {:8.1} {:9.1}",
                r.path.name(),
                c,
                r.median_ms,
                r.tflops,
                r.peak_extra_bytes as f64 / 1e6
            );
        }
    }
}

/// The naive forward (the benches' forward pass) is the training step cut
/// after the loss: same loss and EMA state, bit for bit, since the same
/// kernels compute them.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn naive_cublas_forward_is_the_step_up_to_the_loss() {
    use adaface::cuda::default_stream;
    use adaface::naive::cuda::NaiveCuda;
    let stream = default_stream(0).expect("no GPU visible");
    let cfg = AdaFaceConfig::default();
    let mut naive = match NaiveCuda::new(stream.clone(), cfg) {
        Ok(n) => n,
        Err(e) => {
            panic!("no cuBLAS: {e}");
        }
    };
    let inp = random_inputs(7200, 37, 72, 1001);
    let (b, d, c) = (37, 72, 1001);
    let x = stream.clone_htod(&round::<bf16>(&inp.x)).unwrap();
    let w = stream.clone_htod(&round::<bf16>(&inp.w)).unwrap();
    let labels = stream.clone_htod(&inp.labels).unwrap();
    let mut dx = stream.alloc_zeros::<f32>(b * d).unwrap();
    let mut dw = stream.alloc_zeros::<f32>(c * d).unwrap();
    let state = cfg.initial_state();
    naive.set_state(state).unwrap();
    let fwd = naive
        .forward(inp.shape, &x, &w, &labels)
        .unwrap()
        .summary()
        .unwrap();
    naive.set_state(state).unwrap();
    let step = naive
        .forward_backward(inp.shape, &x, &w, &labels, &mut dx, &mut dw)
        .unwrap()
        .summary()
        .unwrap();
    println!("naive forward loss {} step loss {}", fwd.loss, step.loss);
    assert!(fwd.loss.is_finite() && fwd.loss > 0.0);
    assert_eq!(fwd.loss, step.loss);
    assert_eq!(fwd.state_after, step.state_after);
}
