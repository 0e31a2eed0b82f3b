//! The class-sharded step on a real GPU (`adaface::cuda::ShardedCudaAdaFace`):
//! K in {1, 2, 3, 4} shards, each on its own stream of GPU 0 and thread,
//! reducing through the in-process communicator (`HostStaged(ThreadComm)`),
//! equal the unsharded CUDA step (loss, dX, dW concatenated, EMA state) in
//! f32 (tiled kernels) and bf16 / f16 (flash, and wgmma on Hopper), over
//! three steps of carried EMA state. `#[ignore]`d: run on a GPU machine with
//! `--include-ignored` (scripts/gpu_check.sh), where a missing GPU fails.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use adaface::cuda::{default_stream, CudaAdaFace, HostStaged, ShardedCudaAdaFace};
use adaface::launch::{KernelElement, PlanLimits};
use adaface::shard::{ShardSpec, ThreadComm};
use adaface::{AdaFaceConfig, EmaState, Error, Shape};
use common::{exact_limits, rel, rel_norm, Rng};
use cudarc::driver::{CudaStream, DeviceRepr};
use half::{bf16, f16};

fn gpu() -> Arc<CudaStream> {
    default_stream(0).unwrap_or_else(|e| panic!("no GPU visible ({e})"))
}

fn cfg() -> AdaFaceConfig {
    AdaFaceConfig::builder().t_alpha(0.3).build().unwrap()
}

fn inputs(
    seed: u64,
    b: usize,
    d: usize,
    c: usize,
    sizes: &[usize],
) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    let mut rng = Rng::new(seed);
    let mut x = rng.normals(b * d, 1.0);
    for row in x.chunks_mut(d) {
        let scale = 0.5 + 30.0 * rng.uniform();
        row.iter_mut().for_each(|v| *v *= scale);
    }
    let w = rng.normals(c * d, 0.3);
    // Labels at every shard boundary, none in the last shard (when K > 1).
    let specs = ShardSpec::split(sizes).unwrap();
    let avoid = (specs.len() > 1).then(|| specs[specs.len() - 1]);
    let mut labels: Vec<i64> = specs[..specs.len() - usize::from(avoid.is_some())]
        .iter()
        .flat_map(|s| [s.offset as i64, (s.offset + s.classes - 1) as i64])
        .take(b)
        .collect();
    while labels.len() < b {
        let l = rng.below(c) as i64;
        if avoid.map_or(true, |s| s.local(l).is_none()) {
            labels.push(l);
        }
    }
    (x, w, labels)
}

type Run = (f64, Vec<f32>, Vec<f32>, EmaState);

/// Loss, dX, dW and the sampled classes of a Partial FC step.
type Sampled = (f64, Vec<f32>, Vec<f32>, Vec<usize>);

fn unsharded<E: KernelElement + DeviceRepr>(
    shape: Shape,
    x: &[E],
    w: &[E],
    labels: &[i64],
    steps: usize,
) -> Run {
    let stream = gpu();
    let up = |e: cudarc::driver::DriverError| Error::Backend {
        message: e.to_string(),
    };
    // The exact mode on both sides: the sharded and the unsharded flash
    // steps split their class tiles differently, and single-rounded
    // gradient products would differ by their rounding (~1e-3).
    let loss = CudaAdaFace::new(stream.clone(), cfg()).unwrap();
    let limits = PlanLimits {
        split_gradients: true,
        ..loss.limits()
    };
    let mut loss = loss.with_limits(limits);
    let xd = stream.clone_htod(x).map_err(up).unwrap();
    let wd = stream.clone_htod(w).map_err(up).unwrap();
    let ld = stream.clone_htod(labels).map_err(up).unwrap();
    let mut dx = stream.alloc_zeros::<f32>(x.len()).unwrap();
    let mut dw = stream.alloc_zeros::<f32>(w.len()).unwrap();
    let mut l = 0.0;
    for _ in 0..steps {
        l = loss
            .forward_backward(shape, &xd, &wd, &ld, &mut dx, &mut dw)
            .unwrap()
            .loss()
            .unwrap();
    }
    (
        l,
        stream.clone_dtoh(&dx).unwrap(),
        stream.clone_dtoh(&dw).unwrap(),
        loss.state().unwrap(),
    )
}

fn sharded<E: KernelElement + DeviceRepr>(
    b: usize,
    d: usize,
    sizes: &[usize],
    x: &[E],
    w: &[E],
    labels: &[i64],
    steps: usize,
) -> Vec<Run> {
    let specs = ShardSpec::split(sizes).unwrap();
    let comms = ThreadComm::group(specs.len());
    let ctx = gpu().context().clone();
    std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .iter()
            .zip(comms)
            .map(|(spec, comm)| {
                let ctx = ctx.clone();
                s.spawn(move || {
                    let stream = ctx.new_stream().unwrap();
                    let comm = HostStaged(comm);
                    let mut shard = ShardedCudaAdaFace::new(stream.clone(), cfg(), *spec)
                        .unwrap()
                        .with_limits(exact_limits());
                    let xd = stream.clone_htod(x).unwrap();
                    let wd = stream.clone_htod(spec.slice(w, d)).unwrap();
                    let ld = stream.clone_htod(labels).unwrap();
                    let mut dx = stream.alloc_zeros::<f32>(b * d).unwrap();
                    let mut dw = stream.alloc_zeros::<f32>(spec.classes * d).unwrap();
                    let shape = Shape::new(b, d, spec.classes);
                    let mut l = 0.0;
                    for _ in 0..steps {
                        let step = shard
                            .step(&comm, shape, &xd, &wd, &ld, &mut dx, &mut dw)
                            .unwrap();
                        l = step.loss().unwrap();
                    }
                    (
                        l,
                        stream.clone_dtoh(&dx).unwrap(),
                        stream.clone_dtoh(&dw).unwrap(),
                        shard.state().unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn check<E: KernelElement + DeviceRepr>(b: usize, d: usize, c: usize, tol: f64) {
    for sizes in [
        vec![c],
        vec![5, c - 5],
        vec![1, c / 2, c - c / 2 - 1],
        vec![c / 3, 1, c / 3, c - 2 * (c / 3) - 1],
    ] {
        let (x, w, labels) = inputs(b as u64 + sizes.len() as u64, b, d, c, &sizes);
        let (x, w): (Vec<E>, Vec<E>) = (
            x.iter().map(|&v| E::from_f64(v)).collect(),
            w.iter().map(|&v| E::from_f64(v)).collect(),
        );
        let want = unsharded(Shape::new(b, d, c), &x, &w, &labels, 3);
        let got = sharded(b, d, &sizes, &x, &w, &labels, 3);
        let dw: Vec<f64> = got
            .iter()
            .flat_map(|g| g.2.iter().map(|&v| v as f64))
            .collect();
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        for g in &got {
            assert_eq!(g.3, want.3, "EMA state");
            assert_eq!(g.1, got[0].1, "dX the same on every shard");
        }
        let (e_loss, e_dx, e_dw) = (
            rel(got[0].0, want.0),
            rel_norm(&f(&got[0].1), &f(&want.1)),
            rel_norm(&dw, &f(&want.2)),
        );
        println!(
            "{} B={b} D={d} K={}: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e}",
            E::SUFFIX,
            sizes.len()
        );
        assert!(e_loss < tol && e_dx < tol && e_dw < tol);
    }
}

#[test]
#[ignore = "needs a GPU (scripts/gpu_check.sh)"]
fn gpu_sharded_equals_unsharded_f32() {
    check::<f32>(13, 9, 23, 1e-6);
    check::<f32>(200, 96, 3000, 1e-6);
}

#[test]
#[ignore = "needs a GPU (scripts/gpu_check.sh)"]
fn gpu_sharded_equals_unsharded_bf16_f16() {
    check::<bf16>(130, 128, 3000, 1e-5);
    check::<f16>(130, 128, 3000, 1e-5);
}

/// Partial FC on the GPU: the sampled sets of the simulator (and of the
/// reference), dW exactly zero on unsampled rows, the simulated sampled
/// step's values; `sample_rate = 1` is the unsampled step bit for bit.
#[test]
#[ignore = "needs a GPU (scripts/gpu_check.sh)"]
fn gpu_partial_fc() {
    use adaface::shard::PartialFc;
    use common::ShardedSimAdaFace;
    let (b, d, c) = (13, 9, 23);
    let sizes = [5, 18];
    let specs = ShardSpec::split(&sizes).unwrap();
    let (x, w, labels) = inputs(7, b, d, c, &sizes);
    let (x, w): (Vec<f32>, Vec<f32>) = (
        x.iter().map(|&v| v as f32).collect(),
        w.iter().map(|&v| v as f32).collect(),
    );
    for rate in [0.4, 1.0] {
        let pfc = PartialFc::new(rate, 11).unwrap();
        let ctx = gpu().context().clone();
        let comms = ThreadComm::group(2);
        let got: Vec<Sampled> = std::thread::scope(|s| {
            let hs: Vec<_> = specs
                .iter()
                .zip(comms)
                .map(|(spec, comm)| {
                    let (ctx, x, w, labels, pfc) = (ctx.clone(), &x, &w, &labels, &pfc);
                    s.spawn(move || {
                        let stream = ctx.new_stream().unwrap();
                        let comm = HostStaged(comm);
                        let mut shard = ShardedCudaAdaFace::new(stream.clone(), cfg(), *spec)
                            .unwrap()
                            .with_limits(exact_limits());
                        let xd = stream.clone_htod(x).unwrap();
                        let wd = stream.clone_htod(spec.slice(w, d)).unwrap();
                        let ld = stream.clone_htod(labels).unwrap();
                        let mut dx = stream.alloc_zeros::<f32>(b * d).unwrap();
                        let mut dw = stream.alloc_zeros::<f32>(spec.classes * d).unwrap();
                        let shape = Shape::new(b, d, spec.classes);
                        let (step, kept) = shard
                            .step_sampled(
                                &comm,
                                shape,
                                &xd,
                                &wd,
                                &ld,
                                labels,
                                (pfc, 3),
                                &mut dx,
                                &mut dw,
                            )
                            .unwrap();
                        let l = step.loss().unwrap();
                        (
                            l,
                            stream.clone_dtoh(&dx).unwrap(),
                            stream.clone_dtoh(&dw).unwrap(),
                            kept,
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // The simulator's sampled step (same kernels) and the GPU's.
        let comms = ThreadComm::group(2);
        let want: Vec<Sampled> = std::thread::scope(|s| {
            let hs: Vec<_> = specs
                .iter()
                .zip(comms)
                .map(|(spec, comm)| {
                    let (x, w, labels, pfc) = (&x, &w, &labels, &pfc);
                    s.spawn(move || {
                        let mut shard = ShardedSimAdaFace::new(cfg(), *spec);
                        let (mut dx, mut dw) =
                            (vec![0.0f32; b * d], vec![0.0f32; spec.classes * d]);
                        let shape = Shape::new(b, d, spec.classes);
                        let out = shard
                            .step(
                                &comm,
                                shape,
                                x,
                                spec.slice(w, d),
                                labels,
                                Some((pfc, 3)),
                                &mut dx,
                                &mut dw,
                            )
                            .unwrap();
                        (out.summary.loss, dx, dw, out.sampled.unwrap())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        for ((g, r), spec) in got.iter().zip(&want).zip(&specs) {
            assert_eq!(g.3, r.3, "the sampled set");
            for j in (0..spec.classes).filter(|j| !g.3.contains(j)) {
                assert!(g.2[j * d..(j + 1) * d].iter().all(|&v| v == 0.0));
            }
            let (e_loss, e_dx, e_dw) = (
                rel(g.0, r.0),
                rel_norm(&f(&g.1), &f(&r.1)),
                rel_norm(&f(&g.2), &f(&r.2)),
            );
            println!("rate {rate}: gpu vs sim loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e}");
            assert!(e_loss < 1e-5 && e_dx < 1e-5 && e_dw < 1e-5);
        }
    }
}
