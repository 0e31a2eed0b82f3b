//! The class-sharded step on the simulated kernels
//! (`ShardedSimAdaFace`, the launches of the CUDA
//! sharded step): K in {1, 2, 3, 4} uneven shards over the in-process
//! communicator equal the unsharded simulated step (loss, dX, dW
//! concatenated, EMA state) and the f64 reference (an independent oracle),
//! in f32 (tiled kernels) and bf16 / f16 (flash kernels); labels at shard
//! boundaries, a shard holding no label, one-class shards, several steps
//! with the EMA carried; the split-phase API; Partial FC; typed errors that
//! change nothing.

mod common;

use adaface::launch::{KernelElement, PlanLimits};
use adaface::shard::reference::ShardedReference;
use adaface::shard::{reduce_partials, PartialFc, ShardSpec};
use adaface::{EmaState, Error, Shape};
use common::{
    exact_limits, f64s, fast_ema_cfg as cfg, on_shards, rel, rel_norm, round,
    shard_layouts as layouts, shard_problem, Rng,
};
use common::{ShardedSimAdaFace, SimAdaFace, SimShardStep};
use half::{bf16, f16};

const B: usize = 13;
const C: usize = 23;

/// `common::shard_problem` at B x d, C classes.
fn problem(
    seed: u64,
    d: usize,
    specs: &[ShardSpec],
    skip: Option<usize>,
) -> (Vec<f64>, Vec<f64>, Vec<i64>) {
    shard_problem(seed, Shape::new(B, d, C), specs, skip)
}

/// Small limits: several forward splits (and backward splits) per shard.
fn small_limits() -> PlanLimits {
    PlanLimits {
        target_blocks: 2,
        max_backward_splits: 2,
        ..exact_limits()
    }
}

struct ShardRun {
    out: SimShardStep,
    dx: Vec<f32>,
    dw: Vec<f32>,
    state: EmaState,
}

/// `steps` sharded simulated steps on every shard, carrying the state.
fn sim_sharded<E: KernelElement>(
    specs: &[ShardSpec],
    d: usize,
    x: &[E],
    w: &[E],
    labels: &[i64],
    steps: usize,
    sampling: Option<&PartialFc>,
) -> Vec<ShardRun> {
    on_shards(specs.len(), |r, comm| {
        let spec = specs[r];
        let mut shard = ShardedSimAdaFace::new(cfg(), spec).with_limits(small_limits());
        let shape = Shape::new(B, d, spec.classes);
        let mut dx = vec![f32::NAN; B * d];
        let mut dw = vec![f32::NAN; spec.classes * d];
        let mut last = None;
        for step in 0..steps {
            let s = sampling.map(|p| (p, step as u64));
            let wk = spec.slice(w, d);
            last = Some(
                shard
                    .step(comm, shape, x, wk, labels, s, &mut dx, &mut dw)
                    .unwrap(),
            );
        }
        ShardRun {
            out: last.unwrap(),
            dx,
            dw,
            state: shard.state(),
        }
    })
}

/// The unsharded simulated step, `steps` times from the initial state.
fn sim_unsharded<E: KernelElement>(
    d: usize,
    x: &[E],
    w: &[E],
    labels: &[i64],
    steps: usize,
) -> (f64, Vec<f32>, Vec<f32>, EmaState) {
    let mut loss = SimAdaFace::new(cfg()).with_limits(small_limits());
    let (mut dx, mut dw) = (vec![0.0f32; B * d], vec![0.0f32; C * d]);
    let mut l = 0.0;
    for _ in 0..steps {
        l = loss
            .forward_backward(Shape::new(B, d, C), x, w, labels, &mut dx, &mut dw)
            .unwrap()
            .loss()
            .unwrap();
    }
    (l, dx, dw, loss.state().unwrap())
}

fn check_against_unsharded<E: KernelElement>(d: usize, tol: f64, seed: u64) {
    for (case, sizes) in layouts().into_iter().enumerate() {
        let specs = ShardSpec::split(&sizes).unwrap();
        for skip in [None, Some(sizes.len() - 1), Some(0)] {
            if sizes.len() == 1 && skip.is_some() {
                continue; // the only shard must hold the labels
            }
            let (x, w, labels) = problem(seed + case as u64, d, &specs, skip);
            let (x, w): (Vec<E>, Vec<E>) = (round(&x), round(&w));
            let (loss, dx, dw, state) = sim_unsharded(d, &x, &w, &labels, 3);
            let got = sim_sharded(&specs, d, &x, &w, &labels, 3, None);
            let what = format!("{} D={d} K={} skip={skip:?}", E::SUFFIX, sizes.len());
            let mut dw_all = Vec::new();
            for g in &got {
                // Every shard: the same loss, dX and EMA state, bit for bit;
                // the state is the unsharded one, bit for bit (the norm
                // statistics come from the same global batch).
                assert_eq!(g.out.summary, got[0].out.summary, "{what}");
                assert_eq!(g.dx, got[0].dx, "{what}");
                assert_eq!(g.state, state, "{what}: EMA state");
                assert_eq!(g.out.summary.state_after, state, "{what}");
                dw_all.extend(f64s(&g.dw));
            }
            let e_loss = rel(got[0].out.summary.loss, loss);
            let e_dx = rel_norm(&f64s(&got[0].dx), &f64s(&dx));
            let e_dw = rel_norm(&dw_all, &f64s(&dw));
            println!("{what}: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e}");
            assert!(e_loss < tol && e_dx < tol && e_dw < tol, "{what}");
        }
    }
}

#[test]
fn sim_f32_sharded_equals_unsharded() {
    // D = 9: the tiled kernels.
    check_against_unsharded::<f32>(9, 1e-6, 10);
}

#[test]
fn sim_bf16_f16_sharded_equals_unsharded() {
    // D = 32: the flash kernels (tensor-core tiles, dX in the forward).
    check_against_unsharded::<bf16>(32, 1e-5, 30);
    check_against_unsharded::<f16>(32, 1e-5, 50);
}

/// The f64 reference, sharded, on the same rounded inputs: an independent
/// oracle for the sharded kernels, over three steps of carried EMA state.
fn check_against_reference<E: KernelElement>(d: usize, tol_loss: f64, tol_grad: f64) {
    let sizes = [7, 1, 9, 6];
    let specs = ShardSpec::split(&sizes).unwrap();
    let (x, w, labels) = problem(70, d, &specs, Some(2));
    let (xe, we): (Vec<E>, Vec<E>) = (round(&x), round(&w));
    let widen = |v: &[E]| v.iter().map(|e| e.to_f64()).collect::<Vec<f64>>();
    let (xr, wr) = (widen(&xe), widen(&we));
    let want = on_shards(specs.len(), |r, comm| {
        let spec = specs[r];
        let mut shard = ShardedReference::new(cfg(), spec);
        let mut last = None;
        for _ in 0..3 {
            let shape = Shape::new(B, d, spec.classes);
            last = Some(
                shard
                    .step(comm, shape, &xr, spec.slice(&wr, d), &labels, None)
                    .unwrap(),
            );
        }
        (last.unwrap(), shard.state())
    });
    let got = sim_sharded(&specs, d, &xe, &we, &labels, 3, None);
    let dw: Vec<f64> = got.iter().flat_map(|g| f64s(&g.dw)).collect();
    let dw_want: Vec<f64> = want.iter().flat_map(|g| g.0.grad_weight.clone()).collect();
    let e_loss = rel(got[0].out.summary.loss, want[0].0.loss);
    let e_dx = rel_norm(&f64s(&got[0].dx), &want[0].0.grad_features);
    let e_dw = rel_norm(&dw, &dw_want);
    let st = got[0].state;
    let e_state =
        rel(st.batch_mean, want[0].1.batch_mean).max(rel(st.batch_std, want[0].1.batch_std));
    println!(
        "{} sim sharded vs f64 reference: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e} state {e_state:.2e}",
        E::SUFFIX
    );
    assert!(e_loss < tol_loss && e_dx < tol_grad && e_dw < tol_grad && e_state < 1e-6);
}

#[test]
fn sim_sharded_matches_the_reference() {
    check_against_reference::<f32>(9, 1e-5, 1e-4);
    check_against_reference::<bf16>(32, 1e-5, 1e-4);
    check_against_reference::<f16>(32, 1e-5, 1e-4);
}

/// The split-phase API (phase 1, the reduction over host buffers, phase
/// 2, the caller's sum of dX) equals the whole step; one-class and
/// label-less shards report their partial statistics as documented.
#[test]
fn split_phase_api_and_edge_shards() {
    let specs = ShardSpec::split(&[7, 1, 9, 6]).unwrap();
    let d = 9;
    let (x, w, labels) = problem(5, d, &specs, Some(2));
    let (x, w): (Vec<f32>, Vec<f32>) = (round(&x), round(&w));
    let whole = sim_sharded(&specs, d, &x, &w, &labels, 1, None);
    let split = on_shards(specs.len(), |r, comm| {
        let spec = specs[r];
        let mut shard = ShardedSimAdaFace::new(cfg(), spec).with_limits(small_limits());
        let wk = spec.slice(&w, d);
        let shape = Shape::new(B, d, spec.classes);
        let (p, pending) = shard.phase1(shape, &x, wk, &labels, None).unwrap();
        let owned: f32 = p.owned.iter().sum();
        let holds = labels.iter().filter(|&&l| spec.local(l).is_some()).count();
        assert_eq!(owned as usize, holds, "shard {r}");
        if r == 1 {
            // One class: its max is its only logit, its sum exactly 1.
            assert!(p.sumexp.iter().all(|&s| s == 1.0));
        }
        if r == 2 {
            assert_eq!(holds, 0);
            assert!(p.target_logit.iter().all(|&t| t == 0.0));
        }
        let global = reduce_partials(comm, &p).unwrap();
        let mut dx = vec![0.0f32; B * d];
        let mut dw = vec![0.0f32; spec.classes * d];
        let out = shard
            .phase2(&pending, &x, wk, &labels, &global, &mut dx, &mut dw)
            .unwrap();
        use adaface::shard::{Communicator, ReduceOp};
        comm.all_reduce_f32(&mut dx, ReduceOp::Sum).unwrap();
        (out, dx, dw, shard.state())
    });
    for (g, s) in whole.iter().zip(&split) {
        assert_eq!(g.state, s.3);
        assert!(rel(g.out.summary.loss, s.0.summary.loss) < 1e-6);
        assert!(rel_norm(&f64s(&g.dx), &f64s(&s.1)) < 1e-6);
        assert!(rel_norm(&f64s(&g.dw), &f64s(&s.2)) < 1e-6);
    }
}

#[test]
fn shards_must_partition_the_classes() {
    // Two shards that both hold class 3: the device check finds row 0's
    // label held twice; nothing is written, the state does not move.
    let d = 9;
    let specs = [
        ShardSpec::new(0, 5, C).unwrap(),
        ShardSpec::new(3, 20, C).unwrap(),
    ];
    let (x, w, mut labels) = problem(6, d, &ShardSpec::split(&[5, 18]).unwrap(), None);
    labels[0] = 3;
    let (x, w): (Vec<f32>, Vec<f32>) = (round(&x), round(&w));
    on_shards(2, |r, comm| {
        let spec = specs[r];
        let mut s = ShardedSimAdaFace::new(cfg(), spec);
        let before = s.state();
        let mut dx = vec![7.0f32; B * d];
        let mut dw = vec![7.0f32; spec.classes * d];
        let e = s
            .step(
                comm,
                Shape::new(B, d, spec.classes),
                &x,
                spec.slice(&w, d),
                &labels,
                None,
                &mut dx,
                &mut dw,
            )
            .unwrap_err();
        assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
        assert_eq!(s.state(), before);
        assert!(dx.iter().chain(&dw).all(|&v| v == 7.0));
    });
}

#[test]
fn bad_inputs_change_nothing() {
    let d = 9;
    let specs = ShardSpec::split(&[10, 13]).unwrap();
    let (x, w, labels) = problem(8, d, &specs, None);
    let (x, w): (Vec<f32>, Vec<f32>) = (round(&x), round(&w));
    let spec = specs[1];
    let shape = Shape::new(B, d, spec.classes);
    let wk = spec.slice(&w, d);
    let mut shard = ShardedSimAdaFace::new(cfg(), spec);
    let before = shard.state();

    // A label outside the global classes (found by the stats kernel).
    let mut bad = labels.clone();
    bad[4] = C as i64;
    let e = shard.phase1(shape, &x, wk, &bad, None).unwrap_err();
    assert!(
        matches!(e, Error::LabelOutOfRange { row: 4, label, classes: C } if label == C as i64),
        "{e}"
    );
    // A non-finite weight of this shard.
    let mut wbad = wk.to_vec();
    wbad[5] = f32::NAN;
    let e = shard.phase1(shape, &x, &wbad, &labels, None).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
    // The shape does not match the shard.
    let e = shard
        .phase1(Shape::new(B, d, 12), &x, &w[..12 * d], &labels, None)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    assert_eq!(shard.state(), before);

    let (p, pending) = shard.phase1(shape, &x, wk, &labels, None).unwrap();
    let mut dx = vec![7.0f32; B * d];
    let mut dw = vec![7.0f32; spec.classes * d];
    let ok = adaface::shard::GlobalRows {
        lse: p.max.clone(),
        target_logit: p.target_logit.clone(),
        target_cosine: p.target_cosine.clone(),
    };
    let mut nan = ok.clone();
    nan.lse[3] = f32::NAN;
    let e = shard
        .phase2(&pending, &x, wk, &labels, &nan, &mut dx, &mut dw)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    let mut dw_short = vec![7.0f32; spec.classes * d - 1];
    let e = shard
        .phase2(&pending, &x, wk, &labels, &ok, &mut dx, &mut dw_short)
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    // Other buffers than phase 1's.
    let x2 = x.clone();
    let e = shard
        .phase2(&pending, &x2, wk, &labels, &ok, &mut dx, &mut dw)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    assert!(dx.iter().chain(&dw).chain(&dw_short).all(|&v| v == 7.0));
    assert_eq!(shard.state(), before);
    // A pending from before a state change is refused.
    shard.set_state(EmaState::new(3.0, 1.0)).unwrap();
    let e = shard
        .phase2(&pending, &x, wk, &labels, &ok, &mut dx, &mut dw)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidShard { .. }), "{e}");
    assert!(dx.iter().chain(&dw).all(|&v| v == 7.0));
}

/// A shard whose own weights are bad fails the step on every rank, even
/// when no label of the batch is in that shard (so no ownership count
/// misses it): its NaN row statistics reach the others through the
/// reduction. Checked on the first step (fresh row buffers) and after a
/// good step (the previous step's rows still in them); no state moves.
/// Were a rank to go on alone, it would wait forever in the `dX`
/// all-reduce: the ranks run on a thread of their own, and a group that
/// has not finished after two minutes fails the test.
#[test]
fn a_shard_error_stops_every_shard() {
    let d = 9;
    let specs = ShardSpec::split(&[10, 13]).unwrap();
    let (x, w, labels) = problem(9, d, &specs, Some(1));
    assert!(labels.iter().all(|&l| l < 10), "no label in shard 1");
    let (x, w): (Vec<f32>, Vec<f32>) = (round(&x), round(&w));
    let mut w_bad = w.clone();
    w_bad[(10 + 4) * d + 2] = f32::NAN; // shard 1, its class 4
    for good_first in [false, true] {
        let (x, w, w_bad, labels, specs) = (
            x.clone(),
            w.clone(),
            w_bad.clone(),
            labels.clone(),
            specs.clone(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runs = on_shards(specs.len(), |r, comm| {
                let spec = specs[r];
                let shape = Shape::new(B, d, spec.classes);
                let mut shard = ShardedSimAdaFace::new(cfg(), spec).with_limits(small_limits());
                let mut dx = vec![0.0f32; B * d];
                let mut dw = vec![0.0f32; spec.classes * d];
                if good_first {
                    let wk = spec.slice(&w, d);
                    shard
                        .step(comm, shape, &x, wk, &labels, None, &mut dx, &mut dw)
                        .unwrap();
                }
                let before = (shard.state(), dx.clone(), dw.clone());
                let wk = spec.slice(&w_bad, d);
                let got = shard.step(comm, shape, &x, wk, &labels, None, &mut dx, &mut dw);
                (got.map(|_| ()), before == (shard.state(), dx, dw))
            });
            tx.send(runs).ok();
        });
        let runs = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!("good first: {good_first}: the ranks diverged (one went on alone)")
            });
        for (r, (got, unchanged)) in runs.into_iter().enumerate() {
            let e = got.expect_err("the step must fail on every rank");
            if r == 1 {
                assert!(matches!(e, Error::NonFinite { .. }), "rank 1: {e}");
            } else {
                assert!(matches!(e, Error::InvalidShard { .. }), "rank {r}: {e}");
            }
            assert!(
                unchanged,
                "rank {r} (good first: {good_first}) changed its state or gradients"
            );
        }
    }
}

// ---------------------------------------------------------------- Partial FC

#[test]
fn partial_fc_rate_one_equals_unsampled_bitwise() {
    let d = 9;
    let specs = ShardSpec::split(&[5, 18]).unwrap();
    let (x, w, labels) = problem(22, d, &specs, None);
    let (x, w): (Vec<f32>, Vec<f32>) = (round(&x), round(&w));
    let pfc = PartialFc::new(1.0, 99).unwrap();
    let plain = sim_sharded(&specs, d, &x, &w, &labels, 2, None);
    let sampled = sim_sharded(&specs, d, &x, &w, &labels, 2, Some(&pfc));
    for (p, s) in plain.iter().zip(&sampled) {
        assert_eq!(p.out.summary, s.out.summary);
        assert_eq!((&p.dx, &p.dw, p.state), (&s.dx, &s.dw, s.state));
    }
}

#[test]
fn partial_fc_matches_the_reference() {
    let d = 9;
    let specs = ShardSpec::split(&[1, 10, 12]).unwrap();
    let (x, w, labels) = problem(23, d, &specs, None);
    let pfc = PartialFc::new(0.4, 5).unwrap();
    let (xf, wf): (Vec<f32>, Vec<f32>) = (round(&x), round(&w));
    let (xr, wr) = (f64s(&xf), f64s(&wf));
    let want = on_shards(specs.len(), |r, comm| {
        let spec = specs[r];
        let mut shard = ShardedReference::new(cfg(), spec);
        let mut last = None;
        for step in 0..2 {
            let shape = Shape::new(B, d, spec.classes);
            let wk = spec.slice(&wr, d);
            last = Some(
                shard
                    .step(comm, shape, &xr, wk, &labels, Some((&pfc, step)))
                    .unwrap(),
            );
        }
        last.unwrap()
    });
    let got = sim_sharded(&specs, d, &xf, &wf, &labels, 2, Some(&pfc));
    for (g, r) in got.iter().zip(&want) {
        assert_eq!(g.out.sampled, r.sampled);
    }
    let dw: Vec<f64> = got.iter().flat_map(|g| f64s(&g.dw)).collect();
    let dw_want: Vec<f64> = want.iter().flat_map(|g| g.grad_weight.clone()).collect();
    let (e_loss, e_dx, e_dw) = (
        rel(got[0].out.summary.loss, want[0].loss),
        rel_norm(&f64s(&got[0].dx), &want[0].grad_features),
        rel_norm(&dw, &dw_want),
    );
    println!("sampled sim f32 vs reference f64: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e}");
    assert!(e_loss < 1e-5 && e_dx < 1e-4 && e_dw < 1e-4);
    // Unsampled classes: dW exactly zero; some class is unsampled.
    let mut unsampled = 0;
    for (g, spec) in got.iter().zip(&specs) {
        let s = g.out.sampled.as_ref().unwrap();
        for j in (0..spec.classes).filter(|j| !s.contains(j)) {
            unsampled += 1;
            assert!(g.dw[j * d..(j + 1) * d].iter().all(|&v| v == 0.0));
        }
    }
    assert!(unsampled > 0);
}

/// Shards of several class tiles, each over several forward splits (flash,
/// bf16) and backward splits (tiled, f32): the merge of the splits inside a
/// shard and across shards equals the unsharded merge.
#[test]
fn shards_spanning_several_splits() {
    let (b, c) = (21, 300);
    let sizes = [100, 64, 136];
    let specs = ShardSpec::split(&sizes).unwrap();
    let limits = PlanLimits {
        target_blocks: 2,
        max_backward_splits: 2,
        flash_blocks: 2,
        ..exact_limits()
    };
    for d in [9, 32] {
        let mut rng = Rng::new(90 + d as u64);
        let x: Vec<f64> = rng.normals(b * d, 3.0);
        let w: Vec<f64> = rng.normals(c * d, 0.3);
        let mut labels: Vec<i64> = vec![0, 99, 100, 163, 164, 299];
        labels.extend((labels.len()..b).map(|_| rng.below(c) as i64));
        let run = |x: &[bf16], w: &[bf16], xf: &[f32], wf: &[f32]| {
            // bf16 at D = 32 (flash), f32 at D = 9 (tiled).
            let shape = Shape::new(b, d, c);
            let (mut dx, mut dw) = (vec![0.0f32; b * d], vec![0.0f32; c * d]);
            let mut full = SimAdaFace::new(cfg()).with_limits(limits);
            let loss = if d == 32 {
                full.forward_backward(shape, x, w, &labels, &mut dx, &mut dw)
            } else {
                full.forward_backward(shape, xf, wf, &labels, &mut dx, &mut dw)
            }
            .unwrap()
            .loss()
            .unwrap();
            let got = on_shards(specs.len(), |r, comm| {
                let spec = specs[r];
                let mut shard = ShardedSimAdaFace::new(cfg(), spec).with_limits(limits);
                let shape = Shape::new(b, d, spec.classes);
                let (mut sdx, mut sdw) = (vec![0.0f32; b * d], vec![0.0f32; spec.classes * d]);
                let out = if d == 32 {
                    let wk = spec.slice(w, d);
                    shard.step(comm, shape, x, wk, &labels, None, &mut sdx, &mut sdw)
                } else {
                    let wk = spec.slice(wf, d);
                    shard.step(comm, shape, xf, wk, &labels, None, &mut sdx, &mut sdw)
                }
                .unwrap();
                (out.summary.loss, sdx, sdw)
            });
            let dw_all: Vec<f64> = got.iter().flat_map(|g| f64s(&g.2)).collect();
            let e_loss = rel(got[0].0, loss);
            let e_dx = rel_norm(&f64s(&got[0].1), &f64s(&dx));
            let e_dw = rel_norm(&dw_all, &f64s(&dw));
            println!("D={d} several splits: loss {e_loss:.2e} dX {e_dx:.2e} dW {e_dw:.2e}");
            let tol = if d == 32 { 1e-5 } else { 1e-6 };
            assert!(e_loss < tol && e_dx < tol && e_dw < tol, "D={d}");
        };
        let (xb, wb): (Vec<bf16>, Vec<bf16>) = (round(&x), round(&w));
        let (xf, wf): (Vec<f32>, Vec<f32>) = (round(&x), round(&w));
        run(&xb, &wb, &xf, &wf);
    }
}
