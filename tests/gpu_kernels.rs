//! The kernels on a real GPU against the f64 CPU reference: golden files,
//! awkward shapes, every dtype, errors, determinism, C = 1M, and a weight of
//! more than 2^31 elements. Every test is `#[ignore]`d (a plain `cargo test`
//! lists them as ignored); run them on a GPU machine with `--include-ignored`
//! (scripts/gpu_check.sh does), where a missing GPU is a failure.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use adaface::cuda::{default_stream, CudaAdaFace};
use adaface::eval::{run_case, Device};
use adaface::golden::parse_case;
use adaface::launch::{KernelElement, KernelLabel, Pass, PlanLimits, StepPlan};
use adaface::shape::validate_inputs;
use adaface::{AdaFaceConfig, Dtype, Error, MarginPolicy, Shape, Tensor};
use common::*;
use cudarc::driver::{CudaStream, DeviceRepr};
use half::{bf16, f16};
use rayon::prelude::*;

fn gpu(test: &str) -> Option<Arc<CudaStream>> {
    match default_stream(0) {
        Ok(s) => Some(s),
        Err(e) => {
            // Run explicitly (it is #[ignore]d): no GPU here is a failure,
            // never a silent pass.
            panic!("{test}: no GPU visible ({e})")
        }
    }
}

fn gpu_step<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr + TryFrom<i64>>(
    stream: &Arc<CudaStream>,
    loss: &mut CudaAdaFace,
    inp: &Inputs,
) -> Result<StepOut, Error> {
    let up = |e| Error::Backend {
        message: format!("{e}"),
    };
    let x = stream.clone_htod(&round::<E>(&inp.x)).map_err(up)?;
    let w = stream.clone_htod(&round::<E>(&inp.w)).map_err(up)?;
    let labels = stream
        .clone_htod(&labels_as::<L>(&inp.labels))
        .map_err(up)?;
    let mut dx = stream.alloc_zeros::<f32>(x.len()).map_err(up)?;
    let mut dw = stream.alloc_zeros::<f32>(w.len()).map_err(up)?;
    let summary = loss
        .forward_backward(inp.shape, &x, &w, &labels, &mut dx, &mut dw)?
        .summary()?;
    Ok(StepOut {
        loss: summary.loss,
        dx: stream.clone_dtoh(&dx).map_err(up)?,
        dw: stream.clone_dtoh(&dw).map_err(up)?,
        state: summary.state_after,
    })
}

/// One step in the exact mode (hi + lo flash gradient products), its errors
/// against the f64 reference: within the f32 bounds.
fn compare<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr + TryFrom<i64>>(
    stream: &Arc<CudaStream>,
    cfg: &AdaFaceConfig,
    inp: &Inputs,
) -> StepErrors {
    compare_in::<E, L>(stream, cfg, inp, true)
}

/// One step with the default plan (`exact`: false, single-rounded flash
/// gradient products) or in the exact mode, its errors against the f64
/// reference.
fn compare_in<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr + TryFrom<i64>>(
    stream: &Arc<CudaStream>,
    cfg: &AdaFaceConfig,
    inp: &Inputs,
    exact: bool,
) -> StepErrors {
    let loss = CudaAdaFace::new(stream.clone(), *cfg).expect("loss object");
    let limits = PlanLimits {
        split_gradients: exact,
        ..loss.limits()
    };
    let mut loss = loss.with_limits(limits);
    let s = gpu_step::<E, L>(stream, &mut loss, inp).expect("gpu step");
    assert_eq!(loss.state().unwrap(), s.state);
    s.errors(&reference_step::<E>(cfg, &cfg.initial_state(), inp))
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_golden_files_match_the_reference() {
    let Some(_stream) = gpu("gpu_golden_files_match_the_reference") else {
        return;
    };
    for path in golden_files() {
        let case = parse_case(&read_golden(&path)).unwrap();
        let reference = run_case(&case, Device::Reference, Dtype::F64).unwrap();
        let gpu = run_case(&case, Device::Cuda, Dtype::F32).unwrap();
        assert_eval_steps_close(&path.display().to_string(), &gpu, &reference);
        for (k, (g, r)) in gpu.iter().zip(&reference).enumerate() {
            let what = format!("{} step {k}", path.display());
            assert!(
                rel(g.state_after.batch_mean, r.state_after.batch_mean) < 1e-6,
                "{what}: EMA"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_awkward_shapes_every_dtype_and_label_type() {
    let Some(stream) = gpu("gpu_awkward_shapes_every_dtype_and_label_type") else {
        return;
    };
    let cfg = AdaFaceConfig::default();
    let mut n = 0u64;
    for b in [1usize, 7, 33, 129, 512] {
        for d in [16usize, 64, 96, 512] {
            for c in [50usize, 300, 1000] {
                let inp = random_inputs(5000 + n, b, d, c);
                let e = match n % 6 {
                    0 => compare::<f32, i64>(&stream, &cfg, &inp),
                    1 => compare::<bf16, i32>(&stream, &cfg, &inp),
                    2 => compare::<f16, i64>(&stream, &cfg, &inp),
                    3 => compare::<f32, i32>(&stream, &cfg, &inp),
                    4 => compare::<bf16, i64>(&stream, &cfg, &inp),
                    _ => compare::<f16, i32>(&stream, &cfg, &inp),
                };
                let what = format!("B={b} D={d} C={c} variant {}", n % 6);
                println!("{what}: {e:?}");
                e.assert_f32_accuracy(&what);
                // The default plan: single-rounded flash gradient products.
                let (e, dtype) = match n % 3 {
                    0 => (
                        compare_in::<f32, i64>(&stream, &cfg, &inp, false),
                        Dtype::F32,
                    ),
                    1 => (
                        compare_in::<bf16, i32>(&stream, &cfg, &inp, false),
                        Dtype::BF16,
                    ),
                    _ => (
                        compare_in::<f16, i64>(&stream, &cfg, &inp, false),
                        Dtype::F16,
                    ),
                };
                println!("{what} default plan: {e:?}");
                e.assert_within(Bounds::flash_single(dtype), &what);
                n += 1;
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_margin_family_matches_the_reference() {
    let Some(stream) = gpu("gpu_margin_family_matches_the_reference") else {
        return;
    };
    // The same checks as tests/sim_margin_family.rs, on the hardware:
    // rows leaning towards their class, norms across MagFace's bounds.
    let bounds = Bounds {
        loss: 1e-5,
        ..Bounds::F32
    };
    for (k, policy) in [
        MarginPolicy::sphere_face(),
        MarginPolicy::curricular_face(),
        MarginPolicy::mag_face(),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = AdaFaceConfig::builder()
            .margin(policy)
            .s(32.0)
            .t_alpha(0.3)
            .build()
            .unwrap();
        for (n, &(b, d, c)) in [(7, 64, 77), (33, 40, 129), (130, 512, 1000)]
            .iter()
            .enumerate()
        {
            let shape = Shape::new(b, d, c);
            let inp = Inputs::leaning(
                70 + 3 * k as u64 + n as u64,
                shape,
                RowNorms::Between(5.0, 120.0),
            );
            for e in [
                compare::<f32, i64>(&stream, &cfg, &inp),
                compare::<bf16, i32>(&stream, &cfg, &inp),
                compare::<f16, i64>(&stream, &cfg, &inp),
            ] {
                let what = format!("{policy:?} B={b} D={d} C={c}");
                println!("{what}: {e:?}");
                e.assert_within(bounds, &what);
            }
        }
    }
}

/// Features, weight, labels, and the error they must give.
type ErrorCase = (Vec<f32>, Vec<f32>, Vec<i64>, Error);

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_errors_leave_outputs_and_state_untouched() {
    let Some(stream) = gpu("gpu_errors_leave_outputs_and_state_untouched") else {
        return;
    };
    let inp = random_inputs(9, 33, 40, 130);
    let shape = inp.shape;
    let x = round::<f32>(&inp.x);
    let w = round::<f32>(&inp.w);
    let mut cases: Vec<ErrorCase> = Vec::new();
    let mut l = inp.labels.clone();
    l[17] = 130;
    cases.push((
        x.clone(),
        w.clone(),
        l,
        Error::LabelOutOfRange {
            row: 17,
            label: 130,
            classes: 130,
        },
    ));
    let mut xb = x.clone();
    xb[363] = f32::NAN;
    cases.push((
        xb,
        w.clone(),
        inp.labels.clone(),
        Error::NonFinite {
            tensor: Tensor::Features,
            index: 363,
        },
    ));
    let mut wb = w.clone();
    wb[4039] = f32::INFINITY;
    cases.push((
        x.clone(),
        wb,
        inp.labels.clone(),
        Error::NonFinite {
            tensor: Tensor::Weight,
            index: 4039,
        },
    ));
    let mut xz = x.clone();
    xz[480..520].fill(0.0);
    cases.push((
        xz,
        w.clone(),
        inp.labels.clone(),
        Error::ZeroNorm {
            tensor: Tensor::Features,
            row: 12,
        },
    ));
    let mut wz = w.clone();
    wz[40 * 77..40 * 78].fill(0.0);
    cases.push((
        x.clone(),
        wz,
        inp.labels.clone(),
        Error::ZeroNorm {
            tensor: Tensor::Weight,
            row: 77,
        },
    ));
    for (x, w, labels, expected) in cases {
        assert_eq!(
            validate_inputs(&shape, &x, &w, &labels).unwrap_err(),
            expected
        );
        let mut loss = CudaAdaFace::new(stream.clone(), AdaFaceConfig::default()).unwrap();
        let state = loss.state().unwrap();
        let (xd, wd, ld) = (
            stream.clone_htod(&x).unwrap(),
            stream.clone_htod(&w).unwrap(),
            stream.clone_htod(&labels).unwrap(),
        );
        let mut dx = stream.clone_htod(&vec![7.5f32; x.len()]).unwrap();
        let mut dw = stream.clone_htod(&vec![-3.25f32; w.len()]).unwrap();
        let step = loss
            .forward_backward(shape, &xd, &wd, &ld, &mut dx, &mut dw)
            .unwrap();
        assert_eq!(step.summary().unwrap_err(), expected);
        assert!(
            stream.clone_dtoh(&dx).unwrap().iter().all(|&v| v == 7.5),
            "{expected}: dX written"
        );
        assert!(
            stream.clone_dtoh(&dw).unwrap().iter().all(|&v| v == -3.25),
            "{expected}: dW written"
        );
        assert_eq!(loss.state().unwrap(), state, "{expected}: state moved");
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_same_inputs_same_bits() {
    let Some(stream) = gpu("gpu_same_inputs_same_bits") else {
        return;
    };
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(11, 129, 512, 5000);
    let run = || {
        let mut loss = CudaAdaFace::new(stream.clone(), cfg).unwrap();
        gpu_step::<bf16, i64>(&stream, &mut loss, &inp)
            .unwrap()
            .bits()
    };
    assert!(run() == run(), "two runs differ");
}

/// f16 on the flash kernels with a weight row shrunk 30 000-fold: its
/// `dlogit / ||w||` exceeds f16's range, so this needs the per-tile
/// power-of-two scales of P and A (the simulator's test gives NaN without).
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_f16_flash_with_a_tiny_weight_row() {
    let Some(stream) = gpu("gpu_f16_flash_with_a_tiny_weight_row") else {
        return;
    };
    let cfg = AdaFaceConfig::default();
    for (n, &(b, d, c)) in [(33usize, 32usize, 130usize), (130, 512, 1000)]
        .iter()
        .enumerate()
    {
        let mut inp = random_inputs(9700 + n as u64, b, d, c);
        inp.w[5 * d..6 * d].iter_mut().for_each(|v| *v *= 3e-5);
        let loss = CudaAdaFace::new(stream.clone(), cfg).expect("loss object");
        let plan = loss.plan::<f16>(inp.shape, Pass::ForwardBackward).unwrap();
        if plan.variant != adaface::launch::Variant::Flash {
            println!("SKIPPED B={b} D={d} C={c}: no flash kernels on this device");
            continue;
        }
        let e = compare::<f16, i64>(&stream, &cfg, &inp);
        println!("f16 flash, tiny weight row, B={b} D={d} C={c}: {e:?}");
        e.assert_f32_accuracy(&format!("f16 flash B={b} D={d} C={c}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_one_million_classes_bf16() {
    let Some(stream) = gpu("gpu_one_million_classes_bf16") else {
        return;
    };
    let cfg = AdaFaceConfig::default();
    let inp = random_inputs(21, 16, 64, 1_000_000);
    let e = compare::<bf16, i64>(&stream, &cfg, &inp);
    println!("B=16 D=64 C=1M bf16: {e:?}");
    e.assert_f32_accuracy("C = 1M bf16");
    let plan = StepPlan::new(
        Shape::new(512, 512, 1_000_000),
        Pass::ForwardBackward,
        Dtype::BF16,
        PlanLimits::default(),
    )
    .unwrap();
    println!(
        "workspace at B=D=512, C=1M: {} MB",
        plan.workspace_bytes() as f64 / 1e6
    );
    assert!(
        plan.workspace_bytes() < 64_000_000,
        "workspace must stay under 64 MB, far below B x C"
    );
}

#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_training_shape_b512_d512_c1m_bf16_runs_deterministically() {
    let Some(stream) = gpu("gpu_training_shape_b512_d512_c1m_bf16_runs_deterministically") else {
        return;
    };
    let cfg = AdaFaceConfig::default();
    let (b, d, c) = (512usize, 512usize, 1_000_000usize);
    let shape = Shape::new(b, d, c);
    let x = stream.clone_htod(&par_values::<bf16>(31, b * d)).unwrap();
    let w = stream.clone_htod(&par_values::<bf16>(32, c * d)).unwrap();
    let mut rng = Rng::new(33);
    let labels = stream
        .clone_htod(&(0..b).map(|_| rng.below(c) as i64).collect::<Vec<_>>())
        .unwrap();
    let run = || {
        let mut loss = CudaAdaFace::new(stream.clone(), cfg).unwrap();
        let mut dx = stream.alloc_zeros::<f32>(b * d).unwrap();
        let mut dw = stream.alloc_zeros::<f32>(c * d).unwrap();
        let t = std::time::Instant::now();
        let step = loss
            .forward_backward(shape, &x, &w, &labels, &mut dx, &mut dw)
            .unwrap();
        let summary = step.summary().unwrap();
        let s = StepOut {
            loss: summary.loss,
            dx: stream.clone_dtoh(&dx).unwrap(),
            dw: stream.clone_dtoh(&dw).unwrap(),
            state: summary.state_after,
        };
        println!(
            "B=512 D=512 C=1M bf16: step + copies {:?}, loss {}, state {:?}",
            t.elapsed(),
            s.loss,
            s.state
        );
        assert!(s.loss.is_finite());
        let h =
            s.dw.iter()
                .fold(0u64, |h, v| h.rotate_left(5) ^ v.to_bits() as u64);
        (
            s.loss.to_bits(),
            s.dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            h,
        )
    };
    assert!(run() == run(), "two runs differ");
}

/// A weight of more than 2^31 elements: the last classes' dW rows checked
/// against an f64 computation on the host (64-bit index arithmetic).
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_weight_beyond_2_pow_31_elements() {
    let Some(stream) = gpu("gpu_weight_beyond_2_pow_31_elements") else {
        return;
    };
    let (b, d, c) = (4usize, 512usize, 4_200_000usize);
    assert!(c * d > 1usize << 31);
    let cfg = AdaFaceConfig::builder().t_alpha(1.0).build().unwrap();
    let x: Vec<bf16> = par_values(41, b * d);
    let w: Vec<bf16> = par_values(42, c * d);
    let labels: Vec<i64> = vec![c as i64 - 1, 0, c as i64 - 2, 12345];
    let shape = Shape::new(b, d, c);
    let (xd, wd, ld) = (
        stream.clone_htod(&x).unwrap(),
        stream.clone_htod(&w).unwrap(),
        stream.clone_htod(&labels).unwrap(),
    );
    let mut dx = stream.alloc_zeros::<f32>(b * d).unwrap();
    let mut dw = stream.alloc_zeros::<f32>(c * d).unwrap();
    let mut loss = CudaAdaFace::new(stream.clone(), cfg).unwrap();
    let summary = loss
        .forward_backward(shape, &xd, &wd, &ld, &mut dx, &mut dw)
        .unwrap()
        .summary()
        .unwrap();
    let tail = 8usize;
    let dw_tail = stream.clone_dtoh(&dw.slice((c - tail) * d..)).unwrap();

    // Host f64: logits of every class, then the tail's dW rows.
    let xf: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let norms: Vec<f64> = xf
        .chunks(d)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let state = cfg.initial_state();
    let k = adaface::math::MarginConsts::<f64>::new(&cfg);
    let clipped: Vec<f64> = norms
        .iter()
        .map(|&n| n.clamp(k.clip_min, k.clip_max))
        .collect();
    let st = state.update(&clipped, cfg.t_alpha()).state_after;
    let logit = |i: usize, j: usize| -> (f64, f64, f64) {
        let wr = &w[j * d..(j + 1) * d];
        let (mut dot, mut rr) = (0.0, 0.0);
        for (a, bv) in xf[i * d..(i + 1) * d].iter().zip(wr) {
            dot += a * bv.to_f64();
            rr += bv.to_f64() * bv.to_f64();
        }
        let dotn = dot / (norms[i] * rr.sqrt());
        let (cos, pass) = adaface::math::clamp_cosine(dotn, k.eps);
        let gate = if pass { 1.0 } else { 0.0 };
        if j as i64 == labels[i] {
            let z = adaface::math::margin_scaler(clipped[i], &st, &k);
            let (a, bb) = cfg.margin().row_offsets(z);
            let (l, dl) = adaface::math::target_logit(cos, a, bb, &k);
            (l, dl * gate, rr.sqrt())
        } else {
            (k.s * cos, k.s * gate, rr.sqrt())
        }
    };
    let lse: Vec<f64> = (0..b)
        .map(|i| {
            let ls: Vec<f64> = (0..c).into_par_iter().map(|j| logit(i, j).0).collect();
            let m = ls.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + ls.iter().map(|l| (l - m).exp()).sum::<f64>().ln()
        })
        .collect();
    let host_loss: f64 = (0..b)
        .map(|i| lse[i] - logit(i, labels[i] as usize).0)
        .sum::<f64>()
        / b as f64;
    assert!(
        rel(summary.loss, host_loss) < 1e-5,
        "loss {} vs {host_loss}",
        summary.loss
    );
    let mut expected = vec![0.0f64; tail * d];
    for t in 0..tail {
        let j = c - tail + t;
        let mut g = vec![0.0f64; d];
        let mut r = 0.0;
        for i in 0..b {
            let (l, dl, rn) = logit(i, j);
            r = rn;
            let onehot = if j as i64 == labels[i] { 1.0 } else { 0.0 };
            let a = ((l - lse[i]).exp() - onehot) / b as f64 * dl;
            for (gk, xk) in g.iter_mut().zip(&xf[i * d..(i + 1) * d]) {
                *gk += a * xk / norms[i];
            }
        }
        let wr: Vec<f64> = w[j * d..(j + 1) * d]
            .iter()
            .map(|v| v.to_f64() / r)
            .collect();
        let along: f64 = wr.iter().zip(&g).map(|(a, bv)| a * bv).sum();
        for kk in 0..d {
            expected[t * d + kk] = (g[kk] - wr[kk] * along) / r;
        }
    }
    let err = rel_norm(&widen32(&dw_tail), &expected);
    println!(
        "C*D = {} elements: loss rel err {:e}, tail dW rel err {err:e}",
        c * d,
        rel(summary.loss, host_loss)
    );
    assert!(err < 1e-4, "tail dW rel err {err:e}");
}

/// The wgmma (sm_90a) flash kernels against the reference and against the
/// mma.sync ones on the same inputs: every depth they take, awkward B and C,
/// and the B = D = 512, C = 1M training shape, where dX and dW of the two
/// instruction sets must agree to the hi + lo products' precision. Skipped
/// on devices other than compute capability 9.0.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn gpu_wgmma_kernels_match_the_reference_and_mma_sync() {
    let Some(stream) = gpu("gpu_wgmma_kernels_match_the_reference_and_mma_sync") else {
        return;
    };
    let cfg = AdaFaceConfig::default();
    let with = |wgmma: bool| {
        let loss = CudaAdaFace::new(stream.clone(), cfg).expect("loss object");
        let limits = PlanLimits {
            wgmma,
            split_gradients: true,
            ..loss.limits()
        };
        loss.with_limits(limits)
    };
    if !with(true).limits().wgmma {
        println!("SKIPPED gpu_wgmma_kernels_match_the_reference_and_mma_sync: not compute capability 9.0");
        return;
    }
    let mut n = 0u64;
    for b in [1usize, 33, 130, 512] {
        for d in [128usize, 256, 384, 512] {
            for c in [77usize, 1000] {
                let inp = random_inputs(9500 + n, b, d, c);
                let mut wg = with(true);
                let plan = wg.plan::<bf16>(inp.shape, Pass::ForwardBackward).unwrap();
                assert!(plan.wgmma, "B={b} D={d} C={c}: plan without wgmma");
                let s = if n % 2 == 0 {
                    gpu_step::<bf16, i64>(&stream, &mut wg, &inp).expect("wgmma step")
                } else {
                    gpu_step::<bf16, i32>(&stream, &mut wg, &inp).expect("wgmma step")
                };
                let r = reference_step::<bf16>(&cfg, &cfg.initial_state(), &inp);
                let e = s.errors(&r);
                let what = format!("wgmma B={b} D={d} C={c}");
                println!("{what}: {e:?}");
                e.assert_f32_accuracy(&what);
                n += 1;
            }
        }
    }

    let inp = random_inputs(9600, 512, 512, 20_000);
    let a = gpu_step::<bf16, i64>(&stream, &mut with(true), &inp).unwrap();
    let again = gpu_step::<bf16, i64>(&stream, &mut with(true), &inp).unwrap();
    let m = gpu_step::<bf16, i64>(&stream, &mut with(false), &inp).unwrap();
    let (dx, dw) = (
        rel_norm(&widen32(&a.dx), &widen32(&m.dx)),
        rel_norm(&widen32(&a.dw), &widen32(&m.dw)),
    );
    println!(
        "B=512 D=512 C=20k wgmma vs mma.sync: loss {:e} dX {dx:e} dW {dw:e}",
        rel(a.loss, m.loss)
    );
    assert!(rel(a.loss, m.loss) < 1e-6 && dx < 1e-5 && dw < 1e-5);
    assert!(
        a.dx.iter()
            .zip(&again.dx)
            .all(|(p, q)| p.to_bits() == q.to_bits())
            && a.dw
                .iter()
                .zip(&again.dw)
                .all(|(p, q)| p.to_bits() == q.to_bits()),
        "two wgmma runs differ"
    );
}
