//! The flash kernels (kernels/flash/: bf16, 64 x 64 tensor-core
//! tiles, dX accumulated in the forward) on the simulator, against the f64
//! reference on the same bf16-rounded inputs: awkward shapes (B odd and
//! below, at and above the 64-row tile; C not a multiple of 64; D from 32 to
//! the 512 maximum), 1 and 3 splits, both label types; the exact mma count
//! of the 64 x 64 tiling (so neither the tiled family nor a SIMT fallback
//! can pass for it); bit-identical repeats; device-detected errors that
//! leave the gradients and the EMA state untouched.
//!
//! The same for their Hopper twins (the `_wg` entries: asynchronous `wgmma`
//! from 128-byte-swizzled shared memory, `D % 128 == 0`): the exact `wgmma`
//! count and no `mma.sync` at all. The simulator runs each `wgmma` when the
//! issuing thread waits for it, reading shared memory then, so a kernel
//! that refills an operand tile or reads the accumulators before the wait
//! gets wrong numbers here.
//!
//! The instruction counters are process-wide: every test here holds the
//! harness's `counter_lock` while it launches kernels, so that no other
//! simulated launch runs while one counts, and each check still reports on
//! its own.

mod common;

use adaface::launch::{KernelElement, KernelLabel, Pass, PlanLimits, StepPlan, Variant};

use adaface::{AdaFaceConfig, Dtype, Error, Tensor};
use common::SimAdaFace;
use common::*;
use half::{bf16, f16};

/// mma instructions per (row tile, class tile) pair of 64 x 64, 8 warps:
/// the logit product is 4 fragments x D/16 k-steps per warp = 2D per pair
/// (forward, and again in flash_dw); each gradient product (O in the
/// forward, dW in flash_dw) is 4 k-steps x D/16 fragments x 2 (hi, lo) per
/// warp = 4D per pair.
/// With `split_gradients` off the gradient products take 2D per pair.
fn expected_mma(b: usize, d: usize, c: usize, training: bool, split: bool) -> u64 {
    let pairs = (b.div_ceil(64) * c.div_ceil(64)) as u64;
    let d = d as u64;
    let grad = if split { 4 * d } else { 2 * d };
    pairs
        * if training {
            2 * d + grad + 2 * d + grad
        } else {
            2 * d
        }
}

/// `wgmma` instructions per (row tile, class tile) pair of 64 x 64: the
/// logit product is D/16 `m64n32k16` per warpgroup, two warpgroups: D/8
/// (forward, and again in flash_dw). Each gradient product is 4 k-steps x
/// one `m64n(D/2)k16` per warpgroup x 2 (hi, lo): 16 per pair, or 8
/// single-rounded, whatever the depth.
fn expected_wgmma(b: usize, d: usize, c: usize, training: bool, split: bool) -> u64 {
    let pairs = (b.div_ceil(64) * c.div_ceil(64)) as u64;
    let d = d as u64;
    let grad = if split { 16 } else { 8 };
    pairs * if training { 2 * (d / 8 + grad) } else { d / 8 }
}

/// The exact mode (hi + lo gradient products) with `splits` forward
/// splits; the single-rounded runs clear `split_gradients`.
fn limits(splits: usize, b: usize) -> PlanLimits {
    PlanLimits {
        flash_blocks: splits * b.div_ceil(64),
        ..exact_limits()
    }
}

fn wgmma_limits(splits: usize, b: usize, split: bool) -> PlanLimits {
    PlanLimits {
        split_gradients: split,
        wgmma: true,
        ..limits(splits, b)
    }
}

struct Run {
    loss_forward: f64,
    errors: StepErrors,
    dx: Vec<f32>,
    dw: Vec<f32>,
    mma_forward: u64,
    mma_step: u64,
    wgmma_forward: u64,
    wgmma_step: u64,
}

fn run<E: KernelElement, L: KernelLabel + TryFrom<i64>>(
    cfg: &AdaFaceConfig,
    inp: &Inputs,
    limits: PlanLimits,
) -> Run {
    let x = round::<E>(&inp.x);
    let w = round::<E>(&inp.w);
    let labels: Vec<L> = labels_as(&inp.labels);
    let mut sim = SimAdaFace::new(*cfg).with_limits(limits);
    let (before, wg_before) = (mma_count(), wgmma_count());
    let loss_forward = sim
        .forward(inp.shape, &x, &w, &labels, false)
        .expect("forward")
        .loss()
        .expect("forward loss");
    let (after_forward, wg_forward) = (mma_count(), wgmma_count());
    let step = sim_step::<E, L>(&mut sim, inp).expect("step");
    let (after_step, wg_step) = (mma_count(), wgmma_count());
    let r = reference_step::<E>(cfg, &cfg.initial_state(), inp);
    Run {
        loss_forward: rel(loss_forward, r.loss),
        errors: step.errors(&r),
        dx: step.dx,
        dw: step.dw,
        mma_forward: after_forward - before,
        mma_step: after_step - after_forward,
        wgmma_forward: wg_forward - wg_before,
        wgmma_step: wg_step - wg_forward,
    }
}

/// Single-rounded gradient products: the loss is unchanged, dX and dW
/// carry bf16's 2^-9 relative rounding of A.
fn assert_single_accuracy(r: &Run, what: &str) {
    assert!(r.errors.loss < 1e-6, "{what}: loss {:e}", r.errors.loss);
    assert!(
        r.errors.dx < 4e-3 && r.errors.dw < 4e-3,
        "{what}: {:?}",
        r.errors
    );
}

fn assert_bit_identical(a: &Run, b: &Run) {
    assert!(a
        .dx
        .iter()
        .zip(&b.dx)
        .all(|(p, q)| p.to_bits() == q.to_bits()));
    assert!(a
        .dw
        .iter()
        .zip(&b.dw)
        .all(|(p, q)| p.to_bits() == q.to_bits()));
}

/// The checks of one counted run: the forward-only loss, the accuracy of
/// hi + lo (`split`) or single-rounded gradient products, the exact count
/// of the instruction the kernels must take (`wgmma` or `mma.sync`, as
/// `want` = (forward, step)) and none of the other.
fn assert_counted(r: &Run, what: &str, split: bool, wgmma: bool, want: (u64, u64)) {
    let (taken, other, name) = if wgmma {
        (
            (r.wgmma_forward, r.wgmma_step),
            r.mma_forward + r.mma_step,
            "wgmma",
        )
    } else {
        (
            (r.mma_forward, r.mma_step),
            r.wgmma_forward + r.wgmma_step,
            "mma",
        )
    };
    println!(
        "{what}: {:?} forward-only loss {:e}, {name} {} / {}",
        r.errors, r.loss_forward, taken.0, taken.1
    );
    assert!(
        r.loss_forward < 1e-6,
        "{what}: forward loss {:e}",
        r.loss_forward
    );
    if split {
        r.errors.assert_f32_accuracy(what);
    } else {
        assert_single_accuracy(r, what);
    }
    assert_eq!(taken.0, want.0, "{what}: forward {name}");
    assert_eq!(taken.1, want.1, "{what}: step {name}");
    assert_eq!(other, 0, "{what}: the other instruction set executed");
}

const SHAPES: [(usize, usize, usize); 5] = [
    (33, 32, 130),
    (65, 96, 200),
    (1, 64, 70),
    (130, 160, 77),
    (7, 512, 65),
];

#[test]
fn flash_kernels_match_the_reference_with_the_exact_mma_count() {
    let _counting = counter_lock();
    let cfg = AdaFaceConfig::default();
    for (n, &(b, d, c)) in SHAPES.iter().enumerate() {
        let inp = random_inputs(7000 + n as u64, b, d, c);
        for splits in [1usize, 3] {
            let lim = limits(splits, b);
            let plan = StepPlan::new(inp.shape, Pass::ForwardBackward, Dtype::BF16, lim).unwrap();
            assert_eq!(plan.variant, Variant::Flash);
            assert_eq!(plan.forward_splits, splits.min(c.div_ceil(64)));
            let what = format!("B={b} D={d} C={c} splits={splits}");
            let r = if n % 2 == 0 {
                run::<bf16, i64>(&cfg, &inp, lim)
            } else {
                run::<bf16, i32>(&cfg, &inp, lim)
            };
            let want = (
                expected_mma(b, d, c, false, true),
                expected_mma(b, d, c, true, true),
            );
            assert_counted(&r, &what, true, false, want);
        }
    }
}

/// Gradient products from a once-rounded bf16 softmax gradient: the loss
/// is unchanged, dX and dW carry bf16's 2^-9 relative rounding of A.
#[test]
fn single_rounded_gradient_products_take_half_the_mma() {
    let _counting = counter_lock();
    let cfg = AdaFaceConfig::default();
    for (n, &(b, d, c)) in SHAPES.iter().enumerate().skip(1) {
        let inp = random_inputs(7000 + n as u64, b, d, c);
        let lim = PlanLimits {
            split_gradients: false,
            ..limits(3, b)
        };
        let r = run::<bf16, i64>(&cfg, &inp, lim);
        let what = format!("single B={b} D={d} C={c}");
        println!("{what}: {:?}, mma {}", r.errors, r.mma_step);
        assert_single_accuracy(&r, &what);
        assert_eq!(
            r.mma_step,
            expected_mma(b, d, c, true, false),
            "{what}: step mma"
        );
    }
}

/// Same inputs, same bits (fixed reduction orders everywhere).
#[test]
fn same_inputs_same_bits() {
    let _counting = counter_lock();
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(7100, 65, 96, 200);
    let a = run::<bf16, i64>(&cfg, &inp, limits(3, 65));
    let b = run::<bf16, i64>(&cfg, &inp, limits(3, 65));
    assert_bit_identical(&a, &b);
}

/// Errors launch kernels too: a typed error that writes nothing, on the
/// mma.sync kernels and on their wgmma twins.
#[test]
fn errors_write_nothing_on_mma_sync() {
    let _counting = counter_lock();
    errors_write_nothing(limits(3, 33), 64);
}

#[test]
fn errors_write_nothing_on_wgmma() {
    let _counting = counter_lock();
    errors_write_nothing(wgmma_limits(3, 33, true), 128);
}

/// f16 takes the same kernels (mma.sync) with P and A scaled by powers of
/// two per tile before the split. One class row of W is shrunk 30 000-fold,
/// so its `dlogit / ||w||` (about 1e5 and more) overflows f16 without the
/// scale.
#[test]
fn f16_kernels_match_the_reference_with_the_exact_count() {
    let _counting = counter_lock();
    let cfg = &AdaFaceConfig::default();
    let shapes = [
        (33usize, 32usize, 130usize),
        (65, 96, 200),
        (130, 160, 77),
        (7, 512, 65),
    ];
    for (n, &(b, d, c)) in shapes.iter().enumerate() {
        let mut inp = random_inputs(9300 + n as u64, b, d, c);
        let small = 5 * d;
        inp.w[small..small + d].iter_mut().for_each(|v| *v *= 3e-5);
        for split in [true, false] {
            let lim = PlanLimits {
                split_gradients: split,
                ..limits(3, b)
            };
            let plan = StepPlan::new(inp.shape, Pass::ForwardBackward, Dtype::F16, lim).unwrap();
            assert!(plan.variant == Variant::Flash && !plan.wgmma);
            let what = format!("f16 B={b} D={d} C={c} split={split}");
            let r = if n % 2 == 0 {
                run::<f16, i64>(cfg, &inp, lim)
            } else {
                run::<f16, i32>(cfg, &inp, lim)
            };
            let want = (
                expected_mma(b, d, c, false, split),
                expected_mma(b, d, c, true, split),
            );
            assert_counted(&r, &what, split, false, want);
        }
    }
}

#[test]
fn wgmma_kernels_match_the_reference_with_the_exact_count() {
    let _counting = counter_lock();
    let cfg = &AdaFaceConfig::default();
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
            let lim = wgmma_limits(splits, b, split);
            let plan = StepPlan::new(inp.shape, Pass::ForwardBackward, Dtype::BF16, lim).unwrap();
            assert!(plan.variant == Variant::Flash && plan.wgmma);
            assert_eq!(plan.forward_splits, splits.min(c.div_ceil(64)));
            let what = format!("wgmma B={b} D={d} C={c} splits={splits} split={split}");
            let r = if n % 2 == 0 {
                run::<bf16, i64>(cfg, &inp, lim)
            } else {
                run::<bf16, i32>(cfg, &inp, lim)
            };
            let want = (
                expected_wgmma(b, d, c, false, split),
                expected_wgmma(b, d, c, true, split),
            );
            assert_counted(&r, &what, split, true, want);
        }
    }
}

/// The same step on mma.sync and on wgmma: both near the reference (the
/// products' summation orders differ, so not bit-identical).
#[test]
fn wgmma_and_mma_sync_agree() {
    let _counting = counter_lock();
    let cfg = &AdaFaceConfig::default();
    let inp = random_inputs(9100, 65, 256, 200);
    let wg = run::<bf16, i64>(cfg, &inp, wgmma_limits(3, 65, true));
    let sm80 = run::<bf16, i64>(cfg, &inp, limits(3, 65));
    assert!(sm80.mma_step > 0 && sm80.wgmma_step == 0);
    let diff = rel_norm(&widen32(&wg.dw), &widen32(&sm80.dw));
    assert!(diff < 1e-5, "dW wgmma vs mma.sync: {diff:e}");
    assert_bit_identical(&wg, &run::<bf16, i64>(cfg, &inp, wgmma_limits(3, 65, true)));
}

/// cp.async moves 16 bytes at a time (the simulator, like the hardware,
/// rejects a misaligned copy): features starting 2 bytes into an allocation
/// go through the tiled kernels, with the same results.
#[test]
fn misaligned_inputs_take_the_tiled_family() {
    let _counting = counter_lock();
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(7300, 33, 64, 150);
    let mut x_buf = vec![bf16::ZERO];
    x_buf.extend(round::<bf16>(&inp.x));
    let x = &x_buf[1..];
    assert_ne!(x.as_ptr() as usize % 16, 0);
    let w = round::<bf16>(&inp.w);
    let mut sim = SimAdaFace::new(cfg);
    let mut dx = vec![0.0f32; x.len()];
    let mut dw = vec![0.0f32; w.len()];
    let s = sim
        .forward_backward(inp.shape, x, &w, &inp.labels, &mut dx, &mut dw)
        .expect("step")
        .summary()
        .expect("summary");
    let r = reference_step::<bf16>(&cfg, &cfg.initial_state(), &inp);
    StepErrors::new(s.loss, &dx, &dw, s.state_after, &r).assert_f32_accuracy("misaligned x");
}

/// The flash kernels store dW in 8-byte pairs where the caller's buffer
/// allows it: a dW slice at an odd f32 offset takes the 4-byte stores and
/// gets the same bits.
#[test]
fn a_dw_buffer_at_an_odd_offset_gets_the_same_bits() {
    let _counting = counter_lock();
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(7400, 33, 64, 150);
    let (x, w) = (round::<bf16>(&inp.x), round::<bf16>(&inp.w));
    let step = |dw: &mut [f32]| {
        let mut sim = SimAdaFace::new(cfg);
        let mut dx = vec![0.0f32; x.len()];
        let before = mma_count();
        sim.forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, dw)
            .expect("step")
            .summary()
            .expect("summary");
        assert!(mma_count() > before, "the flash family ran");
        dx
    };
    let mut aligned = vec![0.0f32; w.len()];
    let dx_a = step(&mut aligned);
    let mut buf = vec![0.0f32; w.len() + 1];
    let odd = &mut buf[1..];
    assert_eq!(odd.as_ptr() as usize % 8, 4, "an odd f32 offset");
    let dx_o = step(odd);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&aligned), bits(&buf[1..]));
    assert_eq!(bits(&dx_a), bits(&dx_o));
    let r = reference_step::<bf16>(&cfg, &cfg.initial_state(), &inp);
    assert!(rel_norm(&widen32(&buf[1..]), &r.grad_weight) < 4e-3);
}

/// A NaN and a zero row in W (depth `d`): the typed error, and neither the
/// gradients nor the EMA state written.
fn errors_write_nothing(lim: PlanLimits, d: usize) {
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(7200, 33, d, 150);
    let mut w = round::<bf16>(&inp.w);
    let x = round::<bf16>(&inp.x);
    let cases: [(usize, f32, Error); 2] = [
        (
            70 * d + 5,
            f32::NAN,
            Error::NonFinite {
                tensor: Tensor::Weight,
                index: 70 * d + 5,
            },
        ),
        (
            129 * d,
            0.0,
            Error::ZeroNorm {
                tensor: Tensor::Weight,
                row: 129,
            },
        ),
    ];
    for (index, value, want) in cases {
        let saved = w.clone();
        if value == 0.0 {
            w[index..index + d].fill(bf16::ZERO);
        } else {
            w[index] = bf16::from_f32(value);
        }
        let mut sim = SimAdaFace::new(cfg).with_limits(lim);
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
        w = saved;
    }
}
