//! Fused vs naive on the CPU, forward and forward+backward, at
//! `B in {128, 512}`, `D = 512`, `C in {10k, 100k}`.
//!
//! Throughput is reported as elements per second where one element is one
//! flop of the fused algorithm's count (`8 B D C` per training step,
//! `2 B D C` per forward), so "Kelem/s" reads as flop/s. Before timing, each
//! case prints once the peak extra heap memory of one call (measured by
//! [`adaface::memory::CountingAllocator`]; gradients the naive path returns
//! are excluded, as are inputs and the fused path's caller-owned gradient
//! buffers).
//!
//! Sample counts are criterion's minimum and measurement times short so the
//! whole run finishes in a few minutes on two cores:
//! `cargo bench --bench cpu` (filter with e.g. `-- fused`).

use std::hint::black_box;
use std::time::Duration;

use adaface::cpu::CpuAdaFace;
use adaface::memory::CountingAllocator;
use adaface::testing::Rng;
use adaface::{naive, AdaFaceConfig, Shape};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

struct Inputs {
    shape: Shape,
    x: Vec<f32>,
    w: Vec<f32>,
    labels: Vec<i64>,
}

fn inputs(batch: usize, dim: usize, classes: usize) -> Inputs {
    // Timing does not depend on the values, only on them being finite and
    // not degenerate.
    let mut rng = Rng::new(7);
    Inputs {
        shape: Shape::new(batch, dim, classes),
        x: (0..batch * dim)
            .map(|_| rng.uniform_f32(-3.0, 3.0))
            .collect(),
        w: (0..classes * dim)
            .map(|_| rng.uniform_f32(-0.5, 0.5))
            .collect(),
        labels: (0..batch).map(|i| ((i * 7919) % classes) as i64).collect(),
    }
}

fn report_memory(name: &str, bytes: usize) {
    println!(
        "memory {name}: peak extra heap {:.2} MB",
        bytes as f64 / 1e6
    );
}

fn bench(c: &mut Criterion) {
    let cfg = AdaFaceConfig::default();
    let state = cfg.initial_state();
    for &(batch, classes) in &[(128, 10_000), (512, 10_000), (128, 100_000), (512, 100_000)] {
        let dim = 512;
        let inp = inputs(batch, dim, classes);
        let s = inp.shape;
        let step_flops = 8 * (batch * dim * classes) as u64;
        let case = format!("B{batch}_D{dim}_C{classes}");
        let grads = (batch + classes) * dim * 4;

        let mut group = c.benchmark_group("cpu_forward_backward");
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(step_flops));
        let mut loss = CpuAdaFace::new(cfg);
        let mut gx = vec![0.0f32; batch * dim];
        let mut gw = vec![0.0f32; classes * dim];
        let (_, mem) = ALLOC.measure(|| {
            loss.forward_backward(s, &inp.x, &inp.w, &inp.labels, &mut gx, &mut gw)
                .unwrap()
        });
        report_memory(&format!("fused forward_backward {case}"), mem);
        group.bench_function(BenchmarkId::new("fused", &case), |b| {
            b.iter(|| {
                black_box(
                    loss.forward_backward(s, &inp.x, &inp.w, &inp.labels, &mut gx, &mut gw)
                        .unwrap(),
                )
            })
        });
        let (_, mem) = ALLOC.measure(|| {
            naive::cpu::forward_backward(&cfg, &state, s, &inp.x, &inp.w, &inp.labels).unwrap()
        });
        report_memory(&format!("naive forward_backward {case}"), mem - grads);
        group.bench_function(BenchmarkId::new("naive", &case), |b| {
            b.iter(|| {
                black_box(
                    naive::cpu::forward_backward(&cfg, &state, s, &inp.x, &inp.w, &inp.labels)
                        .unwrap(),
                )
            })
        });
        group.finish();

        let mut group = c.benchmark_group("cpu_forward");
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(step_flops / 4));
        let (_, mem) =
            ALLOC.measure(|| loss.forward(s, &inp.x, &inp.w, &inp.labels, false).unwrap());
        report_memory(&format!("fused forward {case}"), mem);
        group.bench_function(BenchmarkId::new("fused", &case), |b| {
            b.iter(|| black_box(loss.forward(s, &inp.x, &inp.w, &inp.labels, false).unwrap()))
        });
        let (_, mem) = ALLOC
            .measure(|| naive::cpu::forward(&cfg, &state, s, &inp.x, &inp.w, &inp.labels).unwrap());
        report_memory(
            &format!("naive forward {case} (incl. the returned logits)"),
            mem,
        );
        group.bench_function(BenchmarkId::new("naive", &case), |b| {
            b.iter(|| {
                black_box(
                    naive::cpu::forward(&cfg, &state, s, &inp.x, &inp.w, &inp.labels).unwrap(),
                )
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
