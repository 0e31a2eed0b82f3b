//! The tensor-core (mma) tile product of the bf16 and f16 kernels on the
//! simulator: it is really taken (the simulator counts every warp-wide mma,
//! and the count must match the tiling exactly; f32 must execute none), and
//! it matches the f64 reference on awkward shapes (B odd, C not a multiple
//! of the 64-class tile, D not a multiple of 16, so the K tail is zero
//! padding in shared memory).
//!
//! The mma counter is process-wide: each test holds the harness's
//! `counter_lock`, so that no other simulated launch runs while one
//! measures, and each dtype still reports on its own.

mod common;

use adaface::launch::{KernelElement, PlanLimits};

use adaface::{AdaFaceConfig, Dtype};
use common::SimAdaFace;
use common::*;
use half::{bf16, f16};

/// mma instructions of one step: every (class tile, row tile) pair meets
/// ceil(D / 32) depth slices. Per slice: the logit product is 8 warps x 2
/// k-steps x 2 fragments = 32 (once in the forward, once more in the
/// backward's recompute); the backward's gW is 8 warps x 2 k-steps x 2
/// fragments x 2 (hi, lo) = 64 and its gX 8 warps x 4 k-steps x 2 = 64
/// (bf16, and f16 with its per-tile power-of-two scale).
fn expected_mma(b: usize, d: usize, c: usize, backward: bool) -> u64 {
    let slices = (c.div_ceil(64) * b.div_ceil(32) * d.div_ceil(32)) as u64;
    slices * if backward { 32 + 32 + 64 + 64 } else { 32 }
}

fn step<E: KernelElement>(
    cfg: &AdaFaceConfig,
    inp: &Inputs,
    limits: PlanLimits,
) -> (StepErrors, u64, u64) {
    let x = round::<E>(&inp.x);
    let w = round::<E>(&inp.w);
    let mut sim = SimAdaFace::new(*cfg).with_limits(limits);
    let before = mma_count();
    let fwd = sim
        .forward(inp.shape, &x, &w, &inp.labels, false)
        .expect("forward")
        .summary()
        .expect("forward summary");
    let after_forward = mma_count();
    let step = sim_step::<E, i64>(&mut sim, inp).expect("step");
    let after_step = mma_count();
    let r = reference_step::<E>(cfg, &cfg.initial_state(), inp);
    assert!(
        rel(fwd.loss, r.loss) < 1e-6,
        "forward-only loss {} vs {}",
        fwd.loss,
        r.loss
    );
    (
        step.errors(&r),
        after_forward - before,
        after_step - after_forward,
    )
}

/// The checks of one dtype: the f32 accuracy on every shape and split
/// count, and the exact mma count (none for f32).
fn check_dtype(dtype: Dtype) {
    let _counting = counter_lock();
    let cfg = AdaFaceConfig::default();
    // (B, D, C): odd B, several row tiles; D = 7, 40, 100 leave K tails of
    // 25, 24 and 28 zero columns in the last 32-deep slice (none a multiple
    // of 16); C = 1, 130, 200 leave partial class tiles.
    let shapes = [
        (33usize, 40usize, 130usize),
        (7, 7, 200),
        (65, 100, 1),
        (1, 16, 70),
    ];
    for (n, &(b, d, c)) in shapes.iter().enumerate() {
        let inp = random_inputs(4000 + n as u64, b, d, c);
        for splits in [1usize, 4] {
            let limits = PlanLimits {
                target_blocks: splits * b.div_ceil(32),
                dx_budget_bytes: splits * b * d * 4,
                max_backward_splits: splits,
                // This test is about the tiled family's mma (the flash
                // family has tests/sim_flash.rs).
                flash: false,
                ..PlanLimits::default()
            };
            let (e, fwd, bwd) = match dtype {
                Dtype::BF16 => step::<bf16>(&cfg, &inp, limits),
                Dtype::F16 => step::<f16>(&cfg, &inp, limits),
                _ => step::<f32>(&cfg, &inp, limits),
            };
            let what = format!("B={b} D={d} C={c} splits={splits} {dtype}");
            println!("{what}: {e:?} mma forward {fwd} step {bwd}");
            e.assert_f32_accuracy(&what);
            let (want_fwd, want_step) = if dtype == Dtype::F32 {
                (0, 0)
            } else {
                (expected_mma(b, d, c, false), expected_mma(b, d, c, true))
            };
            assert_eq!(fwd, want_fwd, "{what}: mma count of the forward");
            assert_eq!(bwd, want_step, "{what}: mma count of the training step");
        }
    }
}

#[test]
fn bf16_takes_the_mma_path_and_matches_the_reference() {
    check_dtype(Dtype::BF16);
}

#[test]
fn f16_takes_the_mma_path_and_matches_the_reference() {
    check_dtype(Dtype::F16);
}

#[test]
fn f32_takes_no_mma_and_matches_the_reference() {
    check_dtype(Dtype::F32);
}
