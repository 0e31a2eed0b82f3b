//! The bench tool: fused vs naive AdaFace forward+backward, time and memory.
//!
//! ```text
//! cargo run --release --example bench -- --device cpu|cuda --batch B --dim D \
//!     --classes C [--dtype f32|bf16|f16] [--iters N] [--json] [--skip-naive] [--forward]
//!     [--class-tile N] [--row-tile N] [--partitions N]
//! ```
//!
//! Per path it prints the median wall time of `N` timed runs after two
//! warm-up runs on random inputs, TFLOP/s counting a forward+backward as
//! `8 B D C` flops (the fused algorithm's four products; the naive path is
//! given the same count so the figures compare time), the percentage of the
//! measured peak, and the peak extra heap memory.
//!
//! Memory is measured, not estimated: this binary installs
//! [`adaface::memory::CountingAllocator`] and records the peak of live heap
//! bytes during a call above the bytes live before it, minus the gradients
//! the call returns (the fused path writes into buffers allocated before the
//! call, so it returns none). Inputs and gradients are therefore excluded on
//! both paths. `peak extra` is a steady-state call (the second); the first
//! call's figure, which adds one-off per-thread buffers, is printed too, and
//! so is the resident-set growth of a call (Linux), the method
//! `scripts/torch_head_bench.py` uses for PyTorch.
//!
//! The peak is the `gemm` crate's `f32` matrix product (`1024 x 1024 x 512`,
//! one per rayon thread, all threads at once): what the backend's
//! microkernel reaches on this machine.
//!
//! On `--device cuda` the paths are fused (and its variants), naive and
//! chunked (the class-chunked cuBLAS path, `adaface::chunked`);
//! `--skip-naive` leaves out both cuBLAS paths.

use std::process::ExitCode;
use std::time::Instant;

use adaface::cpu::{CpuAdaFace, CpuElement, CpuOptions};
use adaface::memory::CountingAllocator;
use adaface::testing::Rng;
use adaface::{AdaFaceConfig, Dtype, Shape};
use half::{bf16, f16};
use rayon::prelude::*;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

struct Args {
    device: String,
    dtype: Dtype,
    shape: Shape,
    iters: usize,
    json: bool,
    skip_naive: bool,
    forward: bool,
    options: CpuOptions,
}

const USAGE: &str = "usage: bench --device cpu|cuda --batch B --dim D --classes C \
                     [--dtype f32|bf16|f16] [--iters N] [--json] [--skip-naive] [--forward] \
                     [--class-tile N] [--row-tile N] [--partitions N]";

fn parse_args() -> Result<Args, String> {
    let (mut device, mut dtype, mut iters) = (None, Dtype::F32, 10);
    let (mut b, mut d, mut c) = (None, None, None);
    let (mut json, mut skip_naive, mut forward) = (false, false, false);
    let mut options = CpuOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let size = |v: String| -> Result<usize, String> {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("not a positive size: {v:?}"))
        };
        match flag.as_str() {
            "--device" => device = Some(value()?),
            "--dtype" => {
                let v = value()?;
                dtype = Dtype::parse(&v)
                    .filter(|t| *t != Dtype::F64)
                    .ok_or_else(|| format!("unsupported dtype {v:?}: f32, bf16 or f16"))?;
            }
            "--batch" => b = Some(size(value()?)?),
            "--dim" => d = Some(size(value()?)?),
            "--classes" => c = Some(size(value()?)?),
            "--iters" => iters = size(value()?)?,
            "--json" => json = true,
            "--skip-naive" => skip_naive = true,
            "--forward" => forward = true,
            "--class-tile" => options.class_tile = size(value()?)?,
            "--row-tile" => options.row_tile = size(value()?)?,
            "--partitions" => options.partitions = size(value()?)?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let device = device.ok_or("--device is required")?;
    if device != "cpu" && device != "cuda" {
        return Err(format!("unknown device {device:?}: cpu or cuda"));
    }
    Ok(Args {
        device,
        dtype,
        shape: Shape::new(
            b.ok_or("--batch is required")?,
            d.ok_or("--dim is required")?,
            c.ok_or("--classes is required")?,
        ),
        iters,
        json,
        skip_naive,
        forward,
        options,
    })
}

/// One measured path.
struct Measurement {
    path: &'static str,
    timing: Timing,
    /// Flops credited to one call: 8BDC for a training step, 2BDC forward.
    flops: f64,
}

/// Median wall time of `iters` runs after three warm-ups, which measure
/// memory (all minus `returned_bytes`): heap peak of the first call
/// (including one-off allocations such as the matrix-multiply crate's
/// per-thread packing buffer), heap peak of the second (steady state, the
/// figure reported as `peak_extra_mb`), and resident-set growth of the third.
fn time<R>(iters: usize, returned_bytes: usize, mut f: impl FnMut() -> R) -> Timing {
    let (r, first) = ALLOC.measure(&mut f);
    drop(r);
    let (r, steady) = ALLOC.measure(&mut f);
    drop(r);
    let (r, rss) = rss_growth(&mut f);
    drop(r);
    let mut ms: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            let r = f();
            let e = t.elapsed().as_secs_f64() * 1e3;
            drop(r);
            e
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Timing {
        median_ms: ms[ms.len() / 2],
        peak_extra_bytes: steady.saturating_sub(returned_bytes),
        first_call_bytes: first.saturating_sub(returned_bytes),
        rss_extra_bytes: rss.map(|r| r.saturating_sub(returned_bytes)),
    }
}

/// What [`time`] measures.
struct Timing {
    median_ms: f64,
    peak_extra_bytes: usize,
    first_call_bytes: usize,
    rss_extra_bytes: Option<usize>,
}

/// Linux only: resets the resident-set high-water mark
/// (`/proc/self/clear_refs`), runs `f`, and returns the high-water mark
/// above the resident size before the call: the same method as
/// `scripts/torch_head_bench.py`, so the two tools compare like for like.
fn rss_growth<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    fn status_kb(field: &str) -> Option<usize> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = text.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
    let before = status_kb("VmRSS:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let r = f();
    let after = status_kb("VmHWM:");
    match (before, after, reset) {
        (Some(b), Some(a), true) => (r, Some(a.saturating_sub(b) * 1024)),
        _ => (r, None),
    }
}

fn bench_cpu<E: CpuElement>(args: &Args) -> Result<Vec<Measurement>, String> {
    let s = args.shape;
    let mut rng = Rng::new(42);
    let x: Vec<E> = (0..s.batch * s.dim)
        .map(|_| E::from_f64(3.0 * rng.normal()))
        .collect();
    let w: Vec<E> = (0..s.classes * s.dim)
        .map(|_| E::from_f64(rng.normal()))
        .collect();
    let labels: Vec<i64> = (0..s.batch)
        .map(|i| ((i * 7919) % s.classes) as i64)
        .collect();
    let cfg = AdaFaceConfig::default();
    let mut out = Vec::new();
    let step_flops = 8.0 * (s.batch * s.dim * s.classes) as f64;

    let mut loss = CpuAdaFace::with_options(cfg, args.options).map_err(|e| e.to_string())?;
    let mut gx = vec![0.0f32; s.batch * s.dim];
    let mut gw = vec![0.0f32; s.classes * s.dim];
    let mut failure = None;
    let timing = time(args.iters, 0, || {
        if let Err(e) = loss.forward_backward(s, &x, &w, &labels, &mut gx, &mut gw) {
            failure = Some(e.to_string());
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    out.push(Measurement {
        path: "fused",
        timing,
        flops: step_flops,
    });

    if args.forward {
        let timing = time(args.iters, 0, || {
            loss.forward(s, &x, &w, &labels, false).map(|o| o.loss)
        });
        out.push(Measurement {
            path: "fused_forward",
            timing,
            flops: step_flops / 4.0,
        });
    }
    if !args.skip_naive {
        let state = cfg.initial_state();
        let grads = (s.batch + s.classes) * s.dim * std::mem::size_of::<f32>();
        let timing = time(args.iters, grads, || {
            adaface::naive::cpu::forward_backward(&cfg, &state, s, &x, &w, &labels)
        });
        out.push(Measurement {
            path: "naive",
            timing,
            flops: step_flops,
        });
    }
    Ok(out)
}

/// f32 GEMM throughput of the backend's microkernel on all rayon threads.
fn measured_peak_tflops() -> f64 {
    let (m, n, k) = (1024usize, 1024usize, 512usize);
    let threads = rayon::current_num_threads();
    let run = |reps: usize| {
        (0..threads).into_par_iter().for_each(|_| {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0.0f32; m * n];
            for _ in 0..reps {
                // SAFETY: dense row-major buffers of the stated sizes.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
        })
    };
    run(2);
    let reps = 8;
    let t = Instant::now();
    run(reps);
    let secs = t.elapsed().as_secs_f64();
    (2 * m * n * k * reps * threads) as f64 / secs / 1e12
}

/// Device `cuda`: the fused kernels and the naive cuBLAS path, timed by
/// [`adaface::cuda::bench::bench`] with CUDA events after warm-up, on the
/// same random device inputs. The peak is known for an H200 with 16-bit
/// inputs (790 TFLOP/s dense bf16, measured there; docs/PERF.md).
#[cfg(feature = "cuda")]
fn bench_cuda(args: &Args) -> Result<(Vec<Measurement>, Option<f64>), String> {
    use adaface::cuda::bench::{bench, BenchConfig, BenchPath};
    let stream = adaface::cuda::default_stream(0).map_err(|e| e.to_string())?;
    let mut paths = vec![BenchPath::Fused];
    if matches!(args.dtype, adaface::Dtype::BF16 | adaface::Dtype::F16) {
        // The flash family's exact (hi + lo) gradient products (see
        // PlanLimits::split_gradients): the speed / accuracy trade-off.
        paths.push(BenchPath::FusedExact);
    }
    // Hopper's wgmma kernels (PlanLimits::wgmma, bf16), where the device has them.
    if args.dtype == adaface::Dtype::BF16
        && stream.context().compute_capability().ok() == Some((9, 0))
    {
        paths.push(BenchPath::FusedWgmma);
    }
    if !args.skip_naive {
        // The cuBLAS paths: materialising, and class-chunked.
        paths.push(BenchPath::Naive);
        paths.push(BenchPath::Chunked);
    }
    let cfg = BenchConfig {
        shape: args.shape,
        dtype: args.dtype,
        warmup: 3,
        iters: args.iters,
        seed: 42,
    };
    let results = bench(&stream, &cfg, &paths).map_err(|e| e.to_string())?;
    let s = args.shape;
    let flops = 8.0 * (s.batch * s.dim * s.classes) as f64;
    let measure = |r: &adaface::cuda::bench::BenchResult, path, flops| Measurement {
        path,
        timing: Timing {
            median_ms: r.median_ms,
            peak_extra_bytes: r.peak_extra_bytes,
            first_call_bytes: r.peak_extra_bytes,
            rss_extra_bytes: None,
        },
        flops,
    };
    let mut measurements: Vec<Measurement> = results
        .iter()
        .map(|r| measure(r, r.path.name(), flops))
        .collect();
    if args.forward {
        let forward =
            adaface::cuda::bench::bench_pass(&stream, &cfg, &paths, adaface::launch::Pass::Forward)
                .map_err(|e| e.to_string())?;
        for r in &forward {
            let path = match r.path {
                BenchPath::Fused => "fused_forward",
                BenchPath::FusedExact => continue, // the same forward as fused
                BenchPath::FusedWgmma => "fused_wgmma_forward",
                BenchPath::Naive => "naive_forward",
                BenchPath::Chunked => "chunked_forward",
            };
            measurements.push(measure(r, path, flops / 4.0));
        }
    }
    let is_h200 = stream
        .context()
        .name()
        .map(|n| n.contains("H200"))
        .unwrap_or(false);
    let peak = (is_h200 && args.dtype != Dtype::F32).then_some(790.0);
    Ok((measurements, peak))
}

/// Device `cuda` in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
fn bench_cuda(_args: &Args) -> Result<(Vec<Measurement>, Option<f64>), String> {
    Err("this build has no CUDA backend (the `cuda` feature is off)".into())
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let (results, peak) = match args.device.as_str() {
        "cuda" => bench_cuda(&args)?,
        _ => {
            let r = match args.dtype {
                Dtype::BF16 => bench_cpu::<bf16>(&args)?,
                Dtype::F16 => bench_cpu::<f16>(&args)?,
                _ => bench_cpu::<f32>(&args)?,
            };
            (r, Some(measured_peak_tflops()))
        }
    };
    let s = args.shape;
    if !args.json {
        println!(
            "device {} dtype {} B={} D={} C={} threads={} measured peak {}",
            args.device,
            args.dtype,
            s.batch,
            s.dim,
            s.classes,
            rayon::current_num_threads(),
            peak.map_or("unknown".into(), |p| format!("{p:.3} TFLOP/s"))
        );
        println!(
            "{:<14} {:>11} {:>9} {:>8} {:>15} {:>14} {:>15}",
            "path",
            "median ms",
            "TFLOP/s",
            "% peak",
            "peak extra MB",
            "RSS extra MB",
            "1st call MB"
        );
    }
    for m in &results {
        let t = &m.timing;
        let tflops = m.flops / (t.median_ms * 1e-3) / 1e12;
        let pct = peak.map(|p| 100.0 * tflops / p);
        let mb = t.peak_extra_bytes as f64 / 1e6;
        let first_mb = t.first_call_bytes as f64 / 1e6;
        let rss = t.rss_extra_bytes.map(|b| b as f64 / 1e6);
        if args.json {
            println!(
                "{{\"path\":\"{}\",\"device\":\"{}\",\"dtype\":\"{}\",\"batch\":{},\"dim\":{},\
                 \"classes\":{},\"median_ms\":{:.4},\"tflops\":{:.5},\"peak_extra_mb\":{:.3},\
                 \"pct_of_peak\":{},\"rss_extra_mb\":{},\"first_call_extra_mb\":{:.3}}}",
                m.path,
                args.device,
                args.dtype,
                s.batch,
                s.dim,
                s.classes,
                t.median_ms,
                tflops,
                mb,
                pct.map_or("null".into(), |p| format!("{p:.1}")),
                rss.map_or("null".into(), |r| format!("{r:.3}")),
                first_mb
            );
        } else {
            println!(
                "{:<14} {:>11.3} {:>9.4} {:>8} {:>15.3} {:>14} {:>15.3}",
                m.path,
                t.median_ms,
                tflops,
                pct.map_or("-".into(), |p| format!("{p:.1}")),
                mb,
                rss.map_or("-".into(), |r| format!("{r:.3}")),
                first_mb
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
