//! The flash kernels' Hopper twins (the `_wg` entries of
//! kernels/adaface_flash.cu: asynchronous `wgmma` products from
//! 128-byte-swizzled shared memory) on the simulator, against the f64
//! reference on the same bf16-rounded inputs: awkward shapes (B odd and
//! below, at and above the 64-row tile; C not a multiple of 64; every depth
//! the `wgmma` kernels take, 128 to 512), 1 and 3 splits, both label types,
//! hi + lo and single-rounded gradients; the exact `wgmma` count of the
//! tiling and no `mma.sync` at all (so the sm_80 kernels cannot pass for
//! them); bit-identical repeats; device-detected errors that write nothing.
//!
//! The simulator runs each `wgmma` when the issuing thread waits for it,
//! reading shared memory then, so a kernel that refills an operand tile or
//! reads the accumulators before the wait gets wrong numbers here.
//!
//! One test function: the instruction counters are process-wide.

mod kernels_common;

use adaface::launch::{Pass, PlanLimits, StepPlan, Variant};
use adaface::sim::{mma_count, wgmma_count};
use adaface::sim_backend::SimAdaFace;
use adaface::{AdaFaceConfig, Dtype, Error, Tensor};
use half::bf16;
use kernels_common::*;

/// `wgmma` instructions per (row tile, class tile) pair of 64 x 64: the
/// logit product is D/16 `m64n32k16` per warpgroup, two warpgroups: D/8
/// (forward, and again in flash_dw). Each gradient product (O in the
/// forward, dW in flash_dw) is 4 k-steps x D/128 `m64n64k16` per warpgroup
/// x 2 (hi, lo): D/8 per pair, or D/16 single-rounded.
fn expected_wgmma(b: usize, d: usize, c: usize, training: bool, split: bool) -> u64 {
    let pairs = (b.div_ceil(64) * c.div_ceil(64)) as u64;
    let d = d as u64;
    let logits = d / 8;
    let grad = if split { d / 8 } else { d / 16 };
    pairs
        * if training {
            2 * (logits + grad)
        } else {
            logits
        }
}

fn limits(splits: usize, b: usize, split: bool) -> PlanLimits {
    PlanLimits {
        flash_blocks: splits * b.div_ceil(64),
        split_gradients: split,
        wgmma: true,
        ..PlanLimits::default()
    }
}

struct Run {
    loss_forward: f64,
    errors: StepErrors,
    dx: Vec<f32>,
    dw: Vec<f32>,
    wgmma_forward: u64,
    wgmma_step: u64,
    mma: u64,
}

fn run(cfg: &AdaFaceConfig, inp: &Inputs, limits: PlanLimits, i32_labels: bool) -> Run {
    let x = round::<bf16>(&inp.x);
    let w = round::<bf16>(&inp.w);
    let mut sim = SimAdaFace::new(*cfg).with_limits(limits);
    let labels32: Vec<i32> = inp.labels.iter().map(|&l| l as i32).collect();
    let mut dx = vec![0.0f32; x.len()];
    let mut dw = vec![0.0f32; w.len()];
    let (mma0, wg0) = (mma_count(), wgmma_count());
    let (loss_forward, summary, wg1) = if i32_labels {
        let l = sim
            .forward(inp.shape, &x, &w, &labels32, false)
            .expect("forward");
        let wg1 = wgmma_count();
        let s = sim
            .forward_backward(inp.shape, &x, &w, &labels32, &mut dx, &mut dw)
            .expect("step");
        (l.loss().expect("loss"), s.summary().expect("summary"), wg1)
    } else {
        let l = sim
            .forward(inp.shape, &x, &w, &inp.labels, false)
            .expect("forward");
        let wg1 = wgmma_count();
        let s = sim
            .forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, &mut dw)
            .expect("step");
        (l.loss().expect("loss"), s.summary().expect("summary"), wg1)
    };
    let (mma2, wg2) = (mma_count(), wgmma_count());
    let r = reference_step::<bf16>(cfg, &cfg.initial_state(), inp);
    Run {
        loss_forward: rel(loss_forward, r.loss),
        errors: StepErrors::new(summary.loss, &dx, &dw, summary.state_after, &r),
        dx,
        dw,
        wgmma_forward: wg1 - wg0,
        wgmma_step: wg2 - wg1,
        mma: mma2 - mma0,
    }
}

#[test]
fn wgmma_kernels_match_the_reference_with_the_exact_instruction_count() {
    let cfg = AdaFaceConfig::default();
    let shapes = [
        (33usize, 128usize, 130usize),
        (65, 256, 200),
        (1, 128, 70),
        (130, 384, 77),
        (7, 512, 65),
    ];
    for (n, &(b, d, c)) in shapes.iter().enumerate() {
        let inp = random_inputs(9000 + n as u64, b, d, c);
        for (splits, split) in [(1usize, true), (3, true), (3, false)] {
            let lim = limits(splits, b, split);
            let plan = StepPlan::new(inp.shape, Pass::ForwardBackward, Dtype::BF16, lim).unwrap();
            assert_eq!(plan.variant, Variant::Flash);
            assert!(plan.wgmma);
            assert_eq!(plan.forward_splits, splits.min(c.div_ceil(64)));
            let what = format!("B={b} D={d} C={c} splits={splits} split={split}");
            let r = run(&cfg, &inp, lim, n % 2 == 1);
            println!(
                "{what}: {:?} forward-only loss {:e}, wgmma {} / {}",
                r.errors, r.loss_forward, r.wgmma_forward, r.wgmma_step
            );
            assert!(
                r.loss_forward < 1e-6,
                "{what}: forward loss {:e}",
                r.loss_forward
            );
            if split {
                r.errors.assert_f32_accuracy(&what);
            } else {
                assert!(r.errors.loss < 1e-6, "{what}: loss {:e}", r.errors.loss);
                assert!(
                    r.errors.dx < 4e-3 && r.errors.dw < 4e-3,
                    "{what}: {:?}",
                    r.errors
                );
            }
            assert_eq!(r.mma, 0, "{what}: mma.sync executed");
            assert_eq!(
                r.wgmma_forward,
                expected_wgmma(b, d, c, false, split),
                "{what}: forward wgmma"
            );
            assert_eq!(
                r.wgmma_step,
                expected_wgmma(b, d, c, true, split),
                "{what}: step wgmma"
            );
        }
    }

    // The same step on mma.sync and on wgmma: both near the reference (the
    // products' summation orders differ, so not bit-identical).
    let inp = random_inputs(9100, 65, 256, 200);
    let wg = run(&cfg, &inp, limits(3, 65, true), false);
    let sm80 = run(
        &cfg,
        &inp,
        PlanLimits {
            wgmma: false,
            ..limits(3, 65, true)
        },
        false,
    );
    assert!(sm80.mma > 0 && sm80.wgmma_step == 0);
    let diff = rel_norm(&widen32(&wg.dw), &widen32(&sm80.dw));
    assert!(diff < 1e-5, "dW wgmma vs mma.sync: {diff:e}");

    // Same inputs, same bits.
    let again = run(&cfg, &inp, limits(3, 65, true), false);
    assert!(wg
        .dx
        .iter()
        .zip(&again.dx)
        .all(|(p, q)| p.to_bits() == q.to_bits()));
    assert!(wg
        .dw
        .iter()
        .zip(&again.dw)
        .all(|(p, q)| p.to_bits() == q.to_bits()));

    errors_write_nothing();
}

fn errors_write_nothing() {
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(9200, 33, 128, 150);
    let x = round::<bf16>(&inp.x);
    let cases: [(usize, f32, Error); 2] = [
        (
            70 * 128 + 5,
            f32::NAN,
            Error::NonFinite {
                tensor: Tensor::Weight,
                index: 70 * 128 + 5,
            },
        ),
        (
            129 * 128,
            0.0,
            Error::ZeroNorm {
                tensor: Tensor::Weight,
                row: 129,
            },
        ),
    ];
    for (index, value, want) in cases {
        let mut w = round::<bf16>(&inp.w);
        if value == 0.0 {
            w[index..index + 128].fill(bf16::ZERO);
        } else {
            w[index] = bf16::from_f32(value);
        }
        let mut sim = SimAdaFace::new(cfg).with_limits(limits(3, 33, true));
        let before = sim.state().unwrap();
        let mut dx = vec![7.0f32; x.len()];
        let mut dw = vec![7.0f32; w.len()];
        let err = sim
            .forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, &mut dw)
            .expect("launch")
            .summary()
            .unwrap_err();
        assert_eq!(err, want);
        assert!(
            dx.iter().chain(&dw).all(|&v| v == 7.0),
            "{want:?}: gradients written"
        );
        assert_eq!(sim.state().unwrap(), before, "{want:?}: state moved");
    }
}
