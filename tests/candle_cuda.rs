//! The candle op on CUDA tensors (feature `candle-cuda`) against the same
//! op on CPU tensors: losses, both gradients, SGD parameters and the EMA
//! state over a few steps, inputs that are not contiguous or start at an
//! offset, half precision, and the deferred report of inputs the kernels
//! reject. `#[ignore]`d: run with `--include-ignored` on a GPU machine, where
//! no CUDA device is a failure.
//!
//! The build links the CUDA libraries (candle's `dynamic-linking`), so the
//! test binary itself only starts where the CUDA driver is installed.
#![cfg(feature = "candle-cuda")]

use adaface::candle_op::AdaFaceCandle;
use adaface::{AdaFaceConfig, Error, MarginPolicy};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, SGD};

mod common;
use common::Rng;

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            // Run explicitly (#[ignore]d): no device is a failure.
            panic!("no CUDA device for candle ({e})")
        }
    }
}

/// Inputs (B x P) -> projection (P x D) -> AdaFace against W (C x D), the
/// same SGD steps on both devices. W is held transposed (D x C) and used
/// as `W^T`, so the op gets a non-contiguous tensor; the features are a
/// row range of a taller product, so they start at an offset.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn sgd_steps_on_cuda_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (b, p, d, c) = (37, 12, 19, 53);
    let cfg = AdaFaceConfig::builder()
        .margin(MarginPolicy::AdaFace { m: 0.4, h: 0.333 })
        .t_alpha(0.3)
        .build()
        .unwrap();
    let mut rng = Rng::new(11);
    let inputs = rng.normals_f32((b + 3) * p, 1.0);
    let proj0 = rng.normals_f32(p * d, 1.5);
    let weight_t0 = rng.normals_f32(d * c, 1.0);
    let labels: Vec<u32> = (0..b).map(|_| (rng.next_u64() % c as u64) as u32).collect();

    let run = |dev: &Device| {
        let x = Tensor::from_slice(&inputs, (b + 3, p), dev).unwrap();
        let proj = Var::from_slice(&proj0, (p, d), dev).unwrap();
        let weight_t = Var::from_slice(&weight_t0, (d, c), dev).unwrap();
        let y = Tensor::from_slice(&labels, b, dev).unwrap();
        let mut head = AdaFaceCandle::new(cfg);
        let mut sgd = SGD::new(vec![proj.clone(), weight_t.clone()], 0.25).unwrap();
        let mut losses = vec![];
        for _ in 0..4 {
            let features = x.matmul(proj.as_tensor()).unwrap().narrow(0, 3, b).unwrap();
            let weight = weight_t.as_tensor().t().unwrap();
            assert!(!weight.is_contiguous());
            let loss = head.forward(&features, &weight, &y).unwrap();
            losses.push(loss.clone());
            sgd.backward_step(&loss).unwrap();
        }
        let losses = Tensor::stack(&losses, 0).unwrap();
        (head, losses, proj, weight_t)
    };
    let (cpu_head, cpu_losses, cpu_proj, cpu_w) = run(&Device::Cpu);
    let (gpu_head, gpu_losses, gpu_proj, gpu_w) = run(&gpu);
    assert!(gpu_losses.device().is_cuda() && gpu_proj.device().is_cuda());

    assert!(rel_err(&gpu_losses, &cpu_losses) < 1e-5, "losses");
    assert!(rel_err(&gpu_proj, &cpu_proj) < 1e-4, "projection");
    assert!(rel_err(&gpu_w, &cpu_w) < 1e-4, "weight");
    assert!(
        rel_err(
            &cpu_proj,
            &Tensor::new(proj0.as_slice(), &Device::Cpu).unwrap()
        ) > 1e-3
    );
    let (sc, sg) = (cpu_head.state().unwrap(), gpu_head.state().unwrap());
    assert!((sc.batch_mean - sg.batch_mean).abs() < 1e-5 * sc.batch_mean.abs());
    assert!((sc.batch_std - sg.batch_std).abs() < 1e-4 * sc.batch_std.abs());
    let report = gpu_head.check_last_step().unwrap().unwrap();
    assert_eq!(report.norms.len(), b);
    assert_eq!(report.summary.state_after, sg);
    assert!(cpu_head.check_last_step().unwrap().is_none());
}

/// bf16 inputs and i64 labels go to the kernels as they are; the gradients
/// come back in bf16. Compared with the CPU op on the same rounded values.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn bf16_inputs_and_i64_labels() {
    let Some(gpu) = gpu() else { return };
    let (b, d, c) = (29, 40, 67);
    let mut rng = Rng::new(12);
    let x0 = rng.normals_f32(b * d, 2.0);
    let w0 = rng.normals_f32(c * d, 1.0);
    let y0: Vec<i64> = (0..b).map(|_| (rng.next_u64() % c as u64) as i64).collect();
    let grads = |dev: &Device| {
        let x = Var::from_tensor(
            &Tensor::from_slice(&x0, (b, d), dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let w = Var::from_tensor(
            &Tensor::from_slice(&w0, (c, d), dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let y = Tensor::from_slice(&y0, b, dev).unwrap();
        let mut head = AdaFaceCandle::new(AdaFaceConfig::default());
        let loss = head.forward(&x, &w, &y).unwrap();
        let g = loss.backward().unwrap();
        let (gx, gw) = (g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone());
        assert_eq!((gx.dtype(), gw.dtype()), (DType::BF16, DType::BF16));
        (loss, gx, gw)
    };
    let (lc, gxc, gwc) = grads(&Device::Cpu);
    let (lg, gxg, gwg) = grads(&gpu);
    assert!(rel_err(&lg, &lc) < 1e-4);
    // Both round their f32 gradients to bf16 (8 bits): a few ulps apart.
    assert!(rel_err(&gxg, &gxc) < 2e-2, "dX");
    assert!(rel_err(&gwg, &gwc) < 2e-2, "dW");
}

/// Shape and dtype errors are typed at once; what only the data shows
/// (a label out of range) leaves the step's loss NaN, its gradients zero
/// and the EMA state as it was, and `check_last_step` names it. The head
/// then moves to the CPU with its state.
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu_check.sh runs it with --include-ignored"]
fn rejected_inputs_and_moving_between_devices() {
    let Some(gpu) = gpu() else { return };
    let (b, d, c) = (9, 8, 5);
    let mut rng = Rng::new(13);
    let x0 = rng.normals_f32(b * d, 1.0);
    let w0 = rng.normals_f32(c * d, 1.0);
    let x = Var::from_slice(&x0, (b, d), &gpu).unwrap();
    let w = Var::from_slice(&w0, (c, d), &gpu).unwrap();
    let good = Tensor::new(&[0u32, 1, 2, 3, 4, 0, 1, 2, 3], &gpu).unwrap();
    let bad = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 1, 2, 3], &gpu).unwrap();
    let mut head = AdaFaceCandle::new(AdaFaceConfig::default());
    let mut host = AdaFaceCandle::new(AdaFaceConfig::default());
    let start = head.state().unwrap();

    let w3 = Tensor::from_slice(&w0[..c * 7], (c, 7), &gpu).unwrap();
    assert!(matches!(
        head.forward(&x, &w3, &good),
        Err(Error::ShapeMismatch { .. })
    ));
    let short = Tensor::new(&[0u32, 1], &gpu).unwrap();
    assert!(matches!(
        head.forward(&x, &w, &short),
        Err(Error::ShapeMismatch { .. })
    ));
    let yf = good.to_dtype(DType::F32).unwrap();
    assert!(matches!(
        head.forward(&x, &w, &yf),
        Err(Error::DtypeMismatch { .. })
    ));
    let cpu_w = Tensor::from_slice(&w0, (c, d), &Device::Cpu).unwrap();
    assert!(matches!(
        head.forward(&x, &cpu_w, &good),
        Err(Error::DeviceUnavailable { .. })
    ));

    let loss = head.forward(&x, &w, &bad).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_nan());
    let g = loss.backward().unwrap();
    assert!(flat(g.get(&w).unwrap()).iter().all(|&v| v == 0.0));
    assert!(matches!(
        head.check_last_step(),
        Err(Error::LabelOutOfRange {
            row: 5,
            label: 5,
            classes: 5
        })
    ));
    assert_eq!(head.state().unwrap(), start);

    // One good step on the GPU, then one on the CPU: the same as two CPU
    // steps, so the state followed the head.
    head.forward(&x, &w, &good).unwrap();
    let (xc, yc) = (
        x.as_tensor().to_device(&Device::Cpu).unwrap(),
        good.to_device(&Device::Cpu).unwrap(),
    );
    host.forward(&xc, &cpu_w, &yc).unwrap();
    let l1 = head.forward(&xc, &cpu_w, &yc).unwrap();
    let l2 = host.forward(&xc, &cpu_w, &yc).unwrap();
    assert!(head.check_last_step().unwrap().is_none());
    assert!(head.last_diagnostics().is_some());
    assert!(rel_err(&l1, &l2) < 1e-5);
    let (s1, s2) = (head.state().unwrap(), host.state().unwrap());
    assert!((s1.batch_mean - s2.batch_mean).abs() < 1e-6 * s2.batch_mean.abs());
}
