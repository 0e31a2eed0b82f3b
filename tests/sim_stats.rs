//! The stats kernel spread over many blocks (one warp per row, the last
//! block to finish computes the statistics): batches that span many blocks
//! and more rows than the grid holds, 16-byte and scalar loads, against the
//! f64 reference, and errors placed in rows of different blocks against the
//! host checks.

mod common;

use adaface::launch::{stats_blocks, KernelElement, PlanLimits, MAX_STATS_BLOCKS};
use adaface::shape::validate_inputs;
use adaface::{AdaFaceConfig, Error, Shape, Tensor};
use common::*;
use half::{bf16, f16};

/// One simulated training step against the reference, twice: the second
/// run must repeat the first bit for bit.
fn check<E: KernelElement>(cfg: &AdaFaceConfig, inp: &Inputs, what: &str) {
    let x = round::<E>(&inp.x);
    let w = round::<E>(&inp.w);
    let run = || {
        let mut sim = SimAdaFace::new(*cfg).with_limits(PlanLimits::default());
        let mut dx = vec![0.0f32; x.len()];
        let mut dw = vec![0.0f32; w.len()];
        let summary = sim
            .forward_backward(inp.shape, &x, &w, &inp.labels, &mut dx, &mut dw)
            .unwrap()
            .summary()
            .unwrap();
        (summary, dx, dw)
    };
    let (summary, dx, dw) = run();
    let r = reference_step::<E>(cfg, &cfg.initial_state(), inp);
    StepErrors::new(summary.loss, &dx, &dw, summary.state_after, &r).assert_f32_accuracy(what);
    let (again, dx2, dw2) = run();
    assert_eq!(summary.loss.to_bits(), again.loss.to_bits(), "{what}: loss");
    assert_eq!(summary.state_after, again.state_after, "{what}: state");
    assert!(
        dx == dx2 && dw == dw2,
        "{what}: gradients differ between runs"
    );
}

#[test]
fn the_grid_covers_every_row_once() {
    assert_eq!(stats_blocks(1), 1);
    assert_eq!(stats_blocks(8), 1);
    assert_eq!(stats_blocks(9), 2);
    assert_eq!(stats_blocks(512), 64);
    assert_eq!(stats_blocks(usize::MAX / 2), MAX_STATS_BLOCKS);
}

#[test]
fn batches_over_many_blocks_match_the_reference() {
    let cfg = AdaFaceConfig::builder().t_alpha(0.5).build().unwrap();
    // D = 16: 16-byte loads for every dtype; D = 13: scalar loads.
    for (seed, b, d, c) in [(1u64, 301usize, 16usize, 7usize), (2, 129, 13, 5)] {
        let inp = random_inputs(seed, b, d, c);
        check::<f32>(&cfg, &inp, &format!("f32 B={b} D={d}"));
        check::<bf16>(&cfg, &inp, &format!("bf16 B={b} D={d}"));
        check::<f16>(&cfg, &inp, &format!("f16 B={b} D={d}"));
    }
}

#[test]
fn more_rows_than_the_grid_holds_are_grid_strided() {
    // 8 rows a block, 1024 blocks: rows past 8192 are each warp's second.
    let b = 8 * MAX_STATS_BLOCKS + 37;
    let cfg = AdaFaceConfig::builder().t_alpha(1.0).build().unwrap();
    let inp = random_inputs(3, b, 8, 3);
    check::<bf16>(&cfg, &inp, &format!("bf16 B={b} D=8"));
}

/// The device error of a step on `x`, `labels`, which must equal the host
/// check's; nothing is written.
fn device_error(shape: Shape, x: &[f32], w: &[f32], labels: &[i64]) -> Error {
    let host = validate_inputs(&shape, x, w, labels).expect_err("host check must fail too");
    let mut sim = SimAdaFace::new(AdaFaceConfig::default());
    let state = sim.state().unwrap();
    let mut dx = vec![7.5f32; x.len()];
    let mut dw = vec![-3.25f32; w.len()];
    let err = sim
        .forward_backward(shape, x, w, labels, &mut dx, &mut dw)
        .unwrap()
        .summary()
        .expect_err("device must detect it");
    assert_eq!(err, host, "device error differs from the host check's");
    assert!(dx.iter().all(|&v| v == 7.5) && dw.iter().all(|&v| v == -3.25));
    assert_eq!(sim.state().unwrap(), state, "state moved");
    err
}

#[test]
fn errors_in_rows_of_different_blocks_match_the_host_checks() {
    for d in [16usize, 13] {
        let inp = random_inputs(11, 301, d, 40);
        let shape = inp.shape;
        let x = round::<f32>(&inp.x);
        let w = round::<f32>(&inp.w);
        let labels = inp.labels.clone();

        // Non-finite values in two rows of different blocks: the first index.
        let mut xb = x.clone();
        xb[250 * d + 3] = f32::NAN;
        xb[120 * d + d - 1] = f32::INFINITY;
        assert_eq!(
            device_error(shape, &xb, &w, &labels),
            Error::NonFinite {
                tensor: Tensor::Features,
                index: 120 * d + d - 1
            }
        );
        // A zero row in an earlier block still ranks below a non-finite value.
        let mut xz = xb.clone();
        xz[10 * d..11 * d].fill(0.0);
        assert_eq!(
            device_error(shape, &xz, &w, &labels),
            Error::NonFinite {
                tensor: Tensor::Features,
                index: 120 * d + d - 1
            }
        );
        // A label error in the last block outranks both.
        let mut l = labels.clone();
        l[299] = 40;
        assert_eq!(
            device_error(shape, &xz, &w, &l),
            Error::LabelOutOfRange {
                row: 299,
                label: 40,
                classes: 40
            }
        );
        // Zero and overflowing rows alone: the first row.
        let mut xo = x.clone();
        xo[200 * d..201 * d].fill(1e20);
        xo[57 * d..58 * d].fill(0.0);
        assert_eq!(
            device_error(shape, &xo, &w, &labels),
            Error::ZeroNorm {
                tensor: Tensor::Features,
                row: 57
            }
        );
        xo[57 * d..58 * d].copy_from_slice(&x[57 * d..58 * d]);
        assert_eq!(
            device_error(shape, &xo, &w, &labels),
            Error::NormOverflow {
                tensor: Tensor::Features,
                row: 200
            }
        );
    }
}
