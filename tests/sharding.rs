//! The class-sharded step (`adaface::shard`): K shards over the in-process
//! communicator equal the unsharded step (loss, dX, dW concatenated, EMA
//! state) on the reference (f32, f64) and the fast CPU backend; edge cases
//! (labels at shard boundaries, shards holding no label, one-class shards);
//! Partial FC sampling; typed errors that change nothing.

mod common;

use adaface::cpu::{CpuOptions, ShardedCpuAdaFace};
use adaface::shard::reference::ShardedReference;
use adaface::shard::{
    reduce_partials, Communicator, GlobalRows, PartialFc, ReduceOp, ShardSpec, ShardStepOutput,
};
use adaface::{EmaState, Error, Shape};
use common::{
    cast, f64s, fast_ema_cfg as cfg, on_shards, rel, rel_norm, shard_layouts as layouts,
    shard_problem, Rng,
};

const B: usize = 13;
const D: usize = 9;
const C: usize = 23;

/// `common::shard_problem` at B x D, C classes.
fn problem(seed: u64, specs: &[ShardSpec], skip: Option<usize>) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    shard_problem(seed, Shape::new(B, D, C), specs, skip)
}

/// `steps` reference steps of every shard, carrying the state; returns the
/// last step's outputs and each shard's final state.
fn reference_sharded<T: adaface::shard::CommReal>(
    specs: &[ShardSpec],
    x: &[T],
    w: &[T],
    labels: &[i64],
    steps: usize,
    sampling: Option<&PartialFc>,
) -> Vec<(ShardStepOutput<T>, EmaState)> {
    on_shards(specs.len(), |r, comm| {
        let spec = specs[r];
        let mut shard = ShardedReference::new(cfg(), spec);
        let shape = Shape::new(B, D, spec.classes);
        let mut last = None;
        for step in 0..steps {
            let s = sampling.map(|p| (p, step as u64));
            last = Some(
                shard
                    .step(comm, shape, x, spec.slice(w, D), labels, s)
                    .unwrap(),
            );
        }
        (last.unwrap(), shard.state())
    })
}

fn check_against_unsharded<T: adaface::shard::CommReal>(tol: f64) {
    for (case, sizes) in layouts().into_iter().enumerate() {
        let specs = ShardSpec::split(&sizes).unwrap();
        for skip in [None, Some(sizes.len() - 1)] {
            if sizes.len() == 1 && skip.is_some() {
                continue;
            }
            let (x, w, labels) = problem(10 + case as u64, &specs, skip);
            let (x, w): (Vec<T>, Vec<T>) = (cast(&x), cast(&w));
            // Two steps, so the second runs on a carried state.
            let cfg = cfg();
            let shape = Shape::new(B, D, C);
            let mut state = cfg.initial_state();
            let mut want = None;
            for _ in 0..2 {
                let out =
                    adaface::reference::forward_backward(&cfg, &state, shape, &x, &w, &labels)
                        .unwrap();
                state = out.state_after();
                want = Some(out);
            }
            let want = want.unwrap();
            let got = reference_sharded(&specs, &x, &w, &labels, 2, None);
            let what = format!("{} K={} skip={skip:?}", T::NAME, sizes.len());
            let mut dw = Vec::new();
            for (out, st) in &got {
                // Every shard: the same loss, dX and EMA state, bit for bit.
                assert_eq!(out.loss, got[0].0.loss, "{what}");
                assert_eq!(out.grad_features, got[0].0.grad_features, "{what}");
                assert_eq!(*st, got[0].1, "{what}");
                // The EMA state is the unsharded one, bit for bit.
                assert_eq!(*st, state, "{what}");
                dw.extend(f64s(&out.grad_weight));
            }
            let first = &got[0].0;
            let e_loss = rel(first.loss.to_f64(), want.loss.to_f64());
            let e_dx = rel_norm(&f64s(&first.grad_features), &f64s(&want.grad_features));
            let e_dw = rel_norm(&dw, &f64s(&want.grad_weight));
            let e_sl = rel_norm(
                &f64s(&first.diagnostics.sample_loss),
                &f64s(&want.diagnostics.sample_loss),
            );
            println!("{what}: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e} rows {e_sl:.2e}");
            assert!(
                e_loss < tol && e_dx < tol && e_dw < tol && e_sl < tol,
                "{what}"
            );
            assert_eq!(
                first.diagnostics.margin_scaler,
                want.diagnostics.margin_scaler
            );
            assert_eq!(
                first.diagnostics.target_cosine,
                want.diagnostics.target_cosine
            );
        }
    }
}

#[test]
fn reference_f64_sharded_equals_unsharded() {
    check_against_unsharded::<f64>(1e-12);
}

#[test]
fn reference_f32_sharded_equals_unsharded() {
    check_against_unsharded::<f32>(1e-6);
}

/// Small tiles and several partitions, so a shard spans many tiles and
/// chunks of the CPU passes.
fn cpu_options() -> CpuOptions {
    CpuOptions {
        class_tile: 4,
        row_tile: 5,
        partitions: 2,
    }
}

fn cpu_sharded<E: adaface::cpu::CpuElement>(
    specs: &[ShardSpec],
    x: &[E],
    w: &[E],
    labels: &[i64],
    steps: usize,
    sampling: Option<&PartialFc>,
) -> Vec<(adaface::cpu::CpuShardStep, Vec<f32>, Vec<f32>, EmaState)> {
    on_shards(specs.len(), |r, comm| {
        let spec = specs[r];
        let mut shard = ShardedCpuAdaFace::with_options(cfg(), spec, cpu_options()).unwrap();
        let shape = Shape::new(B, D, spec.classes);
        let mut dx = vec![f32::NAN; B * D];
        let mut dw = vec![f32::NAN; spec.classes * D];
        let mut last = None;
        for step in 0..steps {
            let s = sampling.map(|p| (p, step as u64));
            last = Some(
                shard
                    .step(
                        comm,
                        shape,
                        x,
                        spec.slice(w, D),
                        labels,
                        s,
                        &mut dx,
                        &mut dw,
                    )
                    .unwrap(),
            );
        }
        (last.unwrap(), dx, dw, shard.state())
    })
}

#[test]
fn cpu_sharded_equals_unsharded() {
    let cfg = cfg();
    for (case, sizes) in layouts().into_iter().enumerate() {
        let specs = ShardSpec::split(&sizes).unwrap();
        for skip in [None, Some(0)] {
            if sizes.len() == 1 && skip.is_some() {
                continue; // the only shard must hold the labels
            }
            let (x, w, labels) = problem(40 + case as u64, &specs, skip);
            let (x, w): (Vec<f32>, Vec<f32>) = (cast(&x), cast(&w));
            let shape = Shape::new(B, D, C);
            let mut state = cfg.initial_state();
            let mut want = None;
            for _ in 0..2 {
                let out = adaface::cpu::forward_backward_alloc(
                    &cfg,
                    &state,
                    &cpu_options(),
                    shape,
                    &x,
                    &w,
                    &labels,
                )
                .unwrap();
                state = out.state_after();
                want = Some(out);
            }
            let want = want.unwrap();
            let got = cpu_sharded(&specs, &x, &w, &labels, 2, None);
            let what = format!("cpu K={} skip={skip:?}", sizes.len());
            let mut dw = Vec::new();
            for (out, dx, dw_k, st) in &got {
                assert_eq!(out.loss, got[0].0.loss, "{what}");
                assert_eq!(dx, &got[0].1, "{what}");
                assert_eq!(*st, state, "{what}: EMA state");
                dw.extend(f64s(dw_k));
            }
            let e_loss = rel(got[0].0.loss as f64, want.loss as f64);
            let e_dx = rel_norm(&f64s(&got[0].1), &f64s(&want.grad_features));
            let e_dw = rel_norm(&dw, &f64s(&want.grad_weight));
            println!("{what}: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e}");
            assert!(e_loss < 1e-6 && e_dx < 1e-6 && e_dw < 1e-6, "{what}");
        }
    }
}

#[test]
fn cpu_sharded_bf16_matches_reference_sharded() {
    let sizes = [6, 1, 16];
    let specs = ShardSpec::split(&sizes).unwrap();
    let (x, w, labels) = problem(77, &specs, Some(1));
    let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f64(v)).collect();
    let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f64(v)).collect();
    // The reference in f64 on the bf16-rounded inputs.
    let xr: Vec<f64> = xb.iter().map(|v| v.to_f64()).collect();
    let wr: Vec<f64> = wb.iter().map(|v| v.to_f64()).collect();
    let want = reference_sharded(&specs, &xr, &wr, &labels, 1, None);
    let got = cpu_sharded(&specs, &xb, &wb, &labels, 1, None);
    let e_loss = rel(got[0].0.loss as f64, want[0].0.loss);
    let e_dx = rel_norm(&f64s(&got[0].1), &want[0].0.grad_features);
    let dw: Vec<f64> = got.iter().flat_map(|g| f64s(&g.2)).collect();
    let dw_want: Vec<f64> = want.iter().flat_map(|g| g.0.grad_weight.clone()).collect();
    let e_dw = rel_norm(&dw, &dw_want);
    println!("bf16 cpu vs f64 reference: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e}");
    assert!(e_loss < 1e-5 && e_dx < 1e-4 && e_dw < 1e-4);
}

#[test]
fn shard_holding_no_label_and_one_class_shards() {
    let specs = ShardSpec::split(&[7, 1, 9, 6]).unwrap();
    let (x, w, labels) = problem(5, &specs, Some(2));
    for (rank, spec) in specs.iter().enumerate() {
        let shard = ShardedReference::new(cfg(), *spec);
        let (p, _) = shard
            .phase1(
                Shape::new(B, D, spec.classes),
                &x,
                spec.slice(&w, D),
                &labels,
                None,
            )
            .unwrap();
        let owned: f64 = p.owned.iter().sum();
        let holds = labels.iter().filter(|&&l| spec.local(l).is_some()).count();
        assert_eq!(owned as usize, holds, "shard {rank}");
        if rank == 2 {
            assert_eq!(holds, 0);
            assert!(p.target_logit.iter().all(|&t| t == 0.0));
        }
        if rank == 1 {
            // One class: its max is its only logit, its sum exactly 1.
            assert!(p.sumexp.iter().all(|&s| s == 1.0));
        }
    }
}

#[test]
fn shards_must_partition_the_classes() {
    // Two shards that both hold class 3: the reduction finds row labels
    // held twice.
    let specs = [
        ShardSpec::new(0, 5, C).unwrap(),
        ShardSpec::new(3, 20, C).unwrap(),
    ];
    let (x, w, mut labels) = problem(6, &specs, None);
    labels[0] = 3;
    let errs = on_shards(2, |r, comm| {
        let spec = specs[r];
        let mut s = ShardedReference::new(cfg(), spec);
        let before = s.state();
        let e = s.step(
            comm,
            Shape::new(B, D, spec.classes),
            &x,
            spec.slice(&w, D),
            &labels,
            None,
        );
        assert_eq!(s.state(), before);
        e.unwrap_err()
    });
    for e in errs {
        assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    }
    assert!(ShardSpec::new(20, 4, C).is_err());
    assert!(ShardSpec::new(0, 0, C).is_err());
    assert!(ShardSpec::even(3, 4).is_err());
    let even = ShardSpec::even(C, 4).unwrap();
    assert_eq!(
        even.iter().map(|s| s.classes).collect::<Vec<_>>(),
        [6, 6, 6, 5]
    );
}

#[test]
fn bad_inputs_change_nothing() {
    let specs = ShardSpec::split(&[10, 13]).unwrap();
    let (x, w, labels) = problem(8, &specs, None);
    let (x, w): (Vec<f32>, Vec<f32>) = (cast(&x), cast(&w));
    let spec = specs[1];
    let shape = Shape::new(B, D, spec.classes);
    let wk = spec.slice(&w, D);
    let mut shard = ShardedCpuAdaFace::with_options(cfg(), spec, cpu_options()).unwrap();
    let before = shard.state();

    // A label outside the global classes.
    let mut bad = labels.clone();
    bad[4] = C as i64;
    let e = shard.phase1(shape, &x, wk, &bad, None).unwrap_err();
    assert!(matches!(e, Error::LabelOutOfRange { row: 4, .. }), "{e}");
    // The shape does not match the shard.
    let e = shard
        .phase1(Shape::new(B, D, 12), &x, &w[..12 * D], &labels, None)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    // Phase 2 with statistics of the wrong length or non-finite: outputs
    // untouched, state unchanged.
    let (p, pending) = shard.phase1(shape, &x, wk, &labels, None).unwrap();
    let mut dx = vec![7.0f32; B * D];
    let mut dw = vec![7.0f32; spec.classes * D];
    let short = GlobalRows {
        lse: p.max[..B - 1].to_vec(),
        target_logit: p.target_logit.clone(),
        target_cosine: p.target_cosine.clone(),
    };
    let e = shard
        .phase2(&pending, wk, &short, &mut dx, &mut dw)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    let mut nan = GlobalRows {
        lse: p.max.clone(),
        target_logit: p.target_logit.clone(),
        target_cosine: p.target_cosine.clone(),
    };
    nan.lse[3] = f32::NAN;
    let e = shard
        .phase2(&pending, wk, &nan, &mut dx, &mut dw)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    // A wrong output buffer.
    let ok = GlobalRows {
        lse: p.max.clone(),
        target_logit: p.target_logit.clone(),
        target_cosine: p.target_cosine.clone(),
    };
    let mut dw_short = vec![7.0f32; spec.classes * D - 1];
    let e = shard
        .phase2(&pending, wk, &ok, &mut dx, &mut dw_short)
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(dx.iter().chain(&dw).chain(&dw_short).all(|&v| v == 7.0));
    assert_eq!(shard.state(), before);
    // A pending from an older state is refused.
    shard.set_state(EmaState::new(3.0, 1.0)).unwrap();
    let e = shard
        .phase2(&pending, wk, &ok, &mut dx, &mut dw)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    assert!(dx.iter().chain(&dw).all(|&v| v == 7.0));
}

#[test]
fn thread_comm_reduces_in_rank_order_and_checks_lengths() {
    let out = on_shards(3, |r, comm| {
        let mut a = vec![r as f64 + 0.5, -(r as f64)];
        comm.all_reduce_f64(&mut a, ReduceOp::Sum).unwrap();
        let mut m = vec![r as f32, 10.0 - r as f32];
        comm.all_reduce_f32(&mut m, ReduceOp::Max).unwrap();
        let mut bad = vec![1.0f32; 2 + usize::from(r == 1)];
        let e = comm.all_reduce_f32(&mut bad, ReduceOp::Sum);
        assert_eq!(comm.world_size(), 3);
        (a, m, e.is_err(), bad)
    });
    for (a, m, failed, bad) in out {
        assert_eq!(a, [4.5, -3.0]);
        assert_eq!(m, [2.0, 10.0]);
        assert!(failed);
        assert!(bad.iter().all(|&v| v == 1.0));
    }
}

/// The reduction helper equals a direct log-sum-exp over all classes.
#[test]
fn reduced_lse_is_the_global_lse() {
    let specs = ShardSpec::split(&[4, 11, 8]).unwrap();
    let (x, w, labels) = problem(9, &specs, None);
    let lse = on_shards(3, |r, comm| {
        let spec = specs[r];
        let shard = ShardedReference::new(cfg(), spec);
        let (p, _) = shard
            .phase1(
                Shape::new(B, D, spec.classes),
                &x,
                spec.slice(&w, D),
                &labels,
                None,
            )
            .unwrap();
        reduce_partials(comm, &p).unwrap().lse
    });
    let full = adaface::reference::forward(
        &cfg(),
        &cfg().initial_state(),
        Shape::new(B, D, C),
        &x,
        &w,
        &labels,
    )
    .unwrap();
    for (i, row) in full.logits.chunks_exact(C).enumerate() {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let want = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        assert!(rel(lse[0][i], want) < 1e-14, "row {i}");
        assert_eq!(lse[1][i], lse[0][i]);
        assert_eq!(lse[2][i], lse[0][i]);
    }
}

// ---------------------------------------------------------------- Partial FC

#[test]
fn partial_fc_keeps_positives_and_is_deterministic() {
    let specs = ShardSpec::split(&[7, 1, 9, 6]).unwrap();
    let (x, w, labels) = problem(21, &specs, Some(3));
    let pfc = PartialFc::new(0.3, 1234).unwrap();
    let a = reference_sharded(&specs, &x, &w, &labels, 1, Some(&pfc));
    let b = reference_sharded(&specs, &x, &w, &labels, 1, Some(&pfc));
    for (k, spec) in specs.iter().enumerate() {
        let (oa, ob) = (&a[k].0, &b[k].0);
        assert_eq!(oa, ob, "shard {k}: same seed and step, same result");
        let sampled = oa.sampled.as_ref().unwrap();
        let positives: Vec<usize> = {
            let mut p: Vec<usize> = labels.iter().filter_map(|&l| spec.local(l)).collect();
            p.sort_unstable();
            p.dedup();
            p
        };
        for p in &positives {
            assert!(sampled.contains(p), "shard {k}: positive {p} dropped");
        }
        assert_eq!(sampled.len(), pfc.kept(spec.classes, positives.len()));
        assert!(sampled.windows(2).all(|w| w[0] < w[1]));
        for j in 0..spec.classes {
            let row = &oa.grad_weight[j * D..(j + 1) * D];
            if sampled.contains(&j) {
                assert!(row.iter().any(|&v| v != 0.0), "shard {k} class {j}");
            } else {
                assert!(row.iter().all(|&v| v == 0.0), "shard {k} class {j}");
            }
        }
    }
    // Another step (or another shard position) draws another subset of a
    // big shard's negatives; the same step draws the same.
    let p = PartialFc::new(0.3, 1234).unwrap();
    let big = ShardSpec::new(0, 40, 80).unwrap();
    let moved = ShardSpec::new(40, 40, 80).unwrap();
    let few = [3i64, 17, 17, 60];
    let s0 = p.sample(&big, &few, 0).unwrap();
    let s1 = p.sample(&big, &few, 1).unwrap();
    let s0_again = p.sample(&big, &few, 0).unwrap();
    let other = p.sample(&moved, &few, 0).unwrap();
    assert_eq!(s0.len(), 12);
    assert!(s0.contains(&3) && s0.contains(&17) && other.contains(&20));
    assert_ne!(s0, s1);
    assert_ne!(s0, other);
    assert_eq!(s0, s0_again);
    // The shard with no label samples negatives only, at the rate.
    assert_eq!(a[3].0.sampled.as_ref().unwrap().len(), 1);
}

#[test]
fn partial_fc_rate_one_equals_unsampled_bitwise() {
    let specs = ShardSpec::split(&[5, 18]).unwrap();
    let (x, w, labels) = problem(22, &specs, None);
    let pfc = PartialFc::new(1.0, 99).unwrap();
    let plain = reference_sharded(&specs, &x, &w, &labels, 2, None);
    let sampled = reference_sharded(&specs, &x, &w, &labels, 2, Some(&pfc));
    for (p, s) in plain.iter().zip(&sampled) {
        assert_eq!(p.0.loss, s.0.loss);
        assert_eq!(p.0.grad_features, s.0.grad_features);
        assert_eq!(p.0.grad_weight, s.0.grad_weight);
        assert_eq!(p.1, s.1);
    }
    let (xf, wf): (Vec<f32>, Vec<f32>) = (cast(&x), cast(&w));
    let plain = cpu_sharded(&specs, &xf, &wf, &labels, 2, None);
    let sampled = cpu_sharded(&specs, &xf, &wf, &labels, 2, Some(&pfc));
    for (p, s) in plain.iter().zip(&sampled) {
        assert_eq!(p.0.loss, s.0.loss);
        assert_eq!((&p.1, &p.2, p.3), (&s.1, &s.2, s.3));
    }
}

#[test]
fn partial_fc_cpu_matches_reference() {
    let specs = ShardSpec::split(&[1, 10, 12]).unwrap();
    let (x, w, labels) = problem(23, &specs, None);
    let pfc = PartialFc::new(0.4, 5).unwrap();
    let want = reference_sharded(&specs, &x, &w, &labels, 2, Some(&pfc));
    let (xf, wf): (Vec<f32>, Vec<f32>) = (cast(&x), cast(&w));
    let got = cpu_sharded(&specs, &xf, &wf, &labels, 2, Some(&pfc));
    let dw: Vec<f64> = got.iter().flat_map(|g| f64s(&g.2)).collect();
    let dw_want: Vec<f64> = want.iter().flat_map(|g| g.0.grad_weight.clone()).collect();
    for (g, r) in got.iter().zip(&want) {
        assert_eq!(g.0.sampled, r.0.sampled);
    }
    let (e_loss, e_dx, e_dw) = (
        rel(got[0].0.loss as f64, want[0].0.loss),
        rel_norm(&f64s(&got[0].1), &want[0].0.grad_features),
        rel_norm(&dw, &dw_want),
    );
    println!("sampled cpu f32 vs reference f64: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e}");
    assert!(e_loss < 1e-5 && e_dx < 1e-4 && e_dw < 1e-4);
    // Unsampled classes: dW exactly zero on the CPU too.
    for (g, spec) in got.iter().zip(&specs) {
        let s = g.0.sampled.as_ref().unwrap();
        for j in (0..spec.classes).filter(|j| !s.contains(j)) {
            assert!(g.2[j * D..(j + 1) * D].iter().all(|&v| v == 0.0));
        }
    }
}

/// Finite differences of the sampled loss (the softmax over the sampled
/// classes of every shard, scalers held fixed) against the sampled step's
/// gradients, in f64.
#[test]
fn partial_fc_finite_differences() {
    let specs = ShardSpec::split(&[9, 14]).unwrap();
    let (x, w, labels) = problem(24, &specs, None);
    let pfc = PartialFc::new(0.35, 77).unwrap();
    let out = reference_sharded(&specs, &x, &w, &labels, 1, Some(&pfc));
    // The sampled classes, globally, in shard order.
    let global: Vec<usize> = specs
        .iter()
        .zip(&out)
        .flat_map(|(s, o)| {
            o.0.sampled
                .clone()
                .unwrap()
                .into_iter()
                .map(|j| s.offset + j)
        })
        .collect();
    let n = global.len();
    assert!(n < C);
    let compact_labels: Vec<i64> = labels
        .iter()
        .map(|&l| global.iter().position(|&g| g == l as usize).unwrap() as i64)
        .collect();
    let z = out[0].0.diagnostics.margin_scaler.clone();
    let cfg = cfg();
    let loss = |x: &[f64], w: &[f64]| {
        let wc: Vec<f64> = global
            .iter()
            .flat_map(|&g| w[g * D..(g + 1) * D].iter().copied())
            .collect();
        adaface::reference::detached_loss(&cfg, Shape::new(B, D, n), x, &wc, &compact_labels, &z)
            .unwrap()
    };
    assert!(rel(loss(&x, &w), out[0].0.loss) < 1e-13);
    let dw: Vec<f64> = out.iter().flat_map(|o| o.0.grad_weight.clone()).collect();
    let dx = &out[0].0.grad_features;
    // Central differences with h = 1e-6 on a loss of ~10: rounding noise
    // ~1e-16 * 10 / 1e-6 = 1e-9 absolute, truncation ~h^2.
    let h = 1e-6;
    const ATOL: f64 = 1e-8;
    const RTOL: f64 = 1e-5;
    let mut rng = Rng::new(3);
    let mut worst: f64 = 0.0;
    for _ in 0..12 {
        let i = rng.below(B * D);
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += h;
        xm[i] -= h;
        let fd = (loss(&xp, &w) - loss(&xm, &w)) / (2.0 * h);
        worst = worst.max((fd - dx[i]).abs() / (ATOL + RTOL * dx[i].abs()));
    }
    for k in 0..12 {
        // Half on sampled classes, half anywhere (unsampled: both zero).
        let j = if k % 2 == 0 {
            global[rng.below(n)] * D + rng.below(D)
        } else {
            rng.below(C * D)
        };
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[j] += h;
        wm[j] -= h;
        let fd = (loss(&x, &wp) - loss(&x, &wm)) / (2.0 * h);
        worst = worst.max((fd - dw[j]).abs() / (ATOL + RTOL * dw[j].abs()));
    }
    println!("sampled loss, worst finite-difference error / (1e-8 + 1e-5 |g|): {worst:.2e}");
    assert!(worst < 1.0, "{worst}");
}
