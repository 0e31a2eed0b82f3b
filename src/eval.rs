//! Drives a backend through a case file's steps: the engine of the
//! `adaface_eval` example and of the golden tests.

use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::golden::{Case, EvalStep};
use crate::real::Real;
use crate::reference;
use crate::state::EmaState;

/// A backend the eval tool can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The CPU reference ([`crate::reference`]), `f32` or `f64`.
    Reference,
    /// The fast CPU backend ([`crate::cpu`]): `f32`, `bf16` or `f16`
    /// inputs, `f32` results; the case's `f64` inputs are rounded to the dtype.
    Cpu,
    /// The kernels on the CPU simulator (`adaface::sim`, feature `sim`), `f32`, `bf16` or `f16` inputs.
    Sim,
    /// The kernels on GPU 0 ([`crate::cuda`]), `f32`, `bf16` or `f16` inputs.
    Cuda,
}

impl Device {
    /// Parses the `--device` flag.
    pub fn parse(name: &str) -> Option<Device> {
        match name {
            "reference" => Some(Device::Reference),
            "cpu" => Some(Device::Cpu),
            "sim" => Some(Device::Sim),
            "cuda" => Some(Device::Cuda),
            _ => None,
        }
    }

    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Device::Reference => "reference",
            Device::Cpu => "cpu",
            Device::Sim => "sim",
            Device::Cuda => "cuda",
        }
    }

    /// The dtype used when none is asked for.
    pub fn default_dtype(self) -> Dtype {
        match self {
            Device::Reference => Dtype::F64,
            Device::Cpu | Device::Sim | Device::Cuda => Dtype::F32,
        }
    }
}

/// Runs every step of `case` in order on `device`, starting from the
/// config's initial EMA state and carrying it from step to step.
pub fn run_case(case: &Case, device: Device, dtype: Dtype) -> Result<Vec<EvalStep>> {
    match (device, dtype) {
        (Device::Reference, Dtype::F64) => run_reference::<f64>(case),
        (Device::Reference, Dtype::F32) => run_reference::<f32>(case),
        (Device::Reference, other) => Err(Error::DeviceUnavailable {
            reason: format!("the reference computes in f32 or f64, not {other}"),
        }),
        (Device::Cpu, Dtype::F32) => run_cpu::<f32>(case),
        (Device::Cpu, Dtype::BF16) => run_cpu::<half::bf16>(case),
        (Device::Cpu, Dtype::F16) => run_cpu::<half::f16>(case),
        (Device::Cpu, other) => Err(Error::DeviceUnavailable {
            reason: format!("the fast CPU backend reads f32, bf16 or f16, not {other}"),
        }),
        #[cfg(feature = "sim")]
        (Device::Sim, Dtype::F32) => crate::sim::eval_case::<f32>(case),
        #[cfg(feature = "sim")]
        (Device::Sim, Dtype::BF16) => crate::sim::eval_case::<half::bf16>(case),
        #[cfg(feature = "sim")]
        (Device::Sim, Dtype::F16) => crate::sim::eval_case::<half::f16>(case),
        #[cfg(not(feature = "sim"))]
        (Device::Sim, Dtype::F32 | Dtype::BF16 | Dtype::F16) => Err(Error::DeviceUnavailable {
            reason: "built without the `sim` feature".into(),
        }),
        #[cfg(feature = "cuda")]
        (Device::Cuda, Dtype::F32) => crate::cuda::eval_case::<f32>(case),
        #[cfg(feature = "cuda")]
        (Device::Cuda, Dtype::BF16) => crate::cuda::eval_case::<half::bf16>(case),
        #[cfg(feature = "cuda")]
        (Device::Cuda, Dtype::F16) => crate::cuda::eval_case::<half::f16>(case),
        #[cfg(not(feature = "cuda"))]
        (Device::Cuda, Dtype::F32 | Dtype::BF16 | Dtype::F16) => Err(Error::DeviceUnavailable {
            reason: "built without the `cuda` feature".into(),
        }),
        (Device::Sim | Device::Cuda, other) => Err(Error::DeviceUnavailable {
            reason: format!("the kernels take f32, bf16 or f16 inputs, not {other}"),
        }),
    }
}

fn run_reference<T: Real>(case: &Case) -> Result<Vec<EvalStep>> {
    let weight: Vec<T> = cast(&case.weight);
    let mut state: EmaState = case.config.initial_state();
    let mut out = Vec::with_capacity(case.steps.len());
    for step in &case.steps {
        let features: Vec<T> = cast(&step.features);
        let fwd = reference::forward(
            &case.config,
            &state,
            case.shape,
            &features,
            &weight,
            &step.labels,
        )?;
        let s = reference::forward_backward(
            &case.config,
            &state,
            case.shape,
            &features,
            &weight,
            &step.labels,
        )?;
        state = s.state_after();
        out.push(EvalStep {
            loss: s.loss.to_f64(),
            norms: widen(&s.diagnostics.norms),
            margin_scaler: widen(&s.diagnostics.margin_scaler),
            grad_features: widen(&s.grad_features),
            grad_weight: widen(&s.grad_weight),
            state_after: state,
            logits: Some(widen(&fwd.logits)),
        });
    }
    Ok(out)
}

/// Runs the case on the fast CPU backend, carrying its EMA state from step
/// to step inside the loss object.
fn run_cpu<E: crate::cpu::CpuElement>(case: &Case) -> Result<Vec<EvalStep>> {
    let weight: Vec<E> = case.weight.iter().map(|&v| E::from_f64(v)).collect();
    let mut loss = crate::cpu::CpuAdaFace::new(case.config);
    let mut out = Vec::with_capacity(case.steps.len());
    for step in &case.steps {
        let features: Vec<E> = step.features.iter().map(|&v| E::from_f64(v)).collect();
        let s = loss.forward_backward_alloc(case.shape, &features, &weight, &step.labels)?;
        out.push(EvalStep {
            loss: s.loss as f64,
            norms: widen(&s.diagnostics.norms),
            margin_scaler: widen(&s.diagnostics.margin_scaler),
            grad_features: widen(&s.grad_features),
            grad_weight: widen(&s.grad_weight),
            state_after: loss.state(),
            logits: None,
        });
    }
    Ok(out)
}

/// Rounds `f64` values to `T`.
pub fn cast<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// Widens `T` values to `f64`.
pub fn widen<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64()).collect()
}
