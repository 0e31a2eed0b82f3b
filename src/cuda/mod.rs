//! The CUDA backend: the kernels in `kernels/`, compiled at run time by
//! NVRTC and launched through cudarc on a caller's stream.
//!
//! Nothing here touches cudarc before [`probe`] has checked that libcuda
//! and libnvrtc can be loaded, so a machine without a GPU gets
//! [`crate::Error::DeviceUnavailable`], never a panic.

pub mod bench;
mod compile;
mod loss;
mod resources;
mod shard;

pub(crate) use compile::module_for;
pub use compile::{compile_ptx, kernel_source};
pub use loss::{CudaAdaFace, CudaStep};
pub(crate) use resources::checked_function;
pub use shard::{CudaShardPending, DeviceCommunicator, HostStaged, ShardedCudaAdaFace};

use std::sync::Arc;

/// Whether the CUDA library behind cudarc module `$lib` is there. With the
/// feature `cuda` alone cudarc loads the libraries at run time, so this tries
/// to load it. With `candle-cuda` candle's CUDA backend has them linked into
/// the binary (cudarc `dynamic-linking`): a running program has them.
macro_rules! library_present {
    ($lib:ident) => {{
        #[cfg(not(feature = "candle-cuda"))]
        // SAFETY: only tries to dlopen the library.
        let present = unsafe { cudarc::$lib::sys::is_culib_present() };
        #[cfg(feature = "candle-cuda")]
        let present = true;
        present
    }};
}
pub(crate) use library_present;

use cudarc::driver::{CudaContext, CudaStream};

use crate::error::{Error, Result};

/// Checks that the CUDA driver library and NVRTC can be loaded.
pub fn probe() -> Result<()> {
    if !library_present!(driver) {
        return Err(Error::DeviceUnavailable {
            reason: "libcuda (the CUDA driver) cannot be loaded".into(),
        });
    }
    probe_nvrtc()
}

/// Checks that NVRTC can be loaded (enough to compile, no GPU needed).
pub fn probe_nvrtc() -> Result<()> {
    if !library_present!(nvrtc) {
        return Err(Error::DeviceUnavailable {
            reason: "libnvrtc cannot be loaded (set LD_LIBRARY_PATH to CUDA's lib directory)"
                .into(),
        });
    }
    Ok(())
}

/// The default stream of GPU `ordinal`, after [`probe`] and a device count check.
pub fn default_stream(ordinal: usize) -> Result<Arc<CudaStream>> {
    probe()?;
    let count = CudaContext::device_count().map_err(|e| Error::DeviceUnavailable {
        reason: format!("CUDA driver: {e}"),
    })?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::DeviceUnavailable {
            reason: format!("no CUDA device {ordinal} ({count} visible)"),
        });
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| Error::DeviceUnavailable {
        reason: format!("CUDA context: {e}"),
    })?;
    Ok(ctx.default_stream())
}

pub(crate) fn backend<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Backend {
        message: format!("{what}: {e}"),
    }
}

/// Runs every step of a case file on GPU 0 with inputs rounded to `E` (the
/// eval tool's `--device cuda`), carrying the EMA state on the device.
pub fn eval_case<E: crate::launch::KernelElement + cudarc::driver::DeviceRepr>(
    case: &crate::golden::Case,
) -> Result<Vec<crate::golden::EvalStep>> {
    let shape = case.shape;
    // Sizes against the data before anything is allocated from them.
    shape.check_nonempty()?;
    shape.check_len(crate::Tensor::Weight, case.weight.len())?;
    for step in &case.steps {
        shape.check_len(crate::Tensor::Features, step.features.len())?;
        shape.check_len(crate::Tensor::Labels, step.labels.len())?;
    }
    let stream = default_stream(0)?;
    let weight: Vec<E> = case.weight.iter().map(|&v| E::from_f64(v)).collect();
    let w = stream.clone_htod(&weight).map_err(backend("upload"))?;
    let mut loss = CudaAdaFace::new(stream.clone(), case.config)?;
    let mut out = Vec::with_capacity(case.steps.len());
    for step in &case.steps {
        let features: Vec<E> = step.features.iter().map(|&v| E::from_f64(v)).collect();
        let x = stream.clone_htod(&features).map_err(backend("upload"))?;
        let labels = stream.clone_htod(&step.labels).map_err(backend("upload"))?;
        let mut dx = stream
            .alloc_zeros::<f32>(shape.features_len()?)
            .map_err(backend("alloc"))?;
        let mut dw = stream
            .alloc_zeros::<f32>(shape.weight_len()?)
            .map_err(backend("alloc"))?;
        let summary = loss
            .forward_backward(shape, &x, &w, &labels, &mut dx, &mut dw)?
            .summary()?;
        let (norms, z) = loss.row_diagnostics()?;
        let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        out.push(crate::golden::EvalStep {
            loss: summary.loss,
            norms: widen(norms),
            margin_scaler: widen(z),
            grad_features: widen(stream.clone_dtoh(&dx).map_err(backend("download"))?),
            grad_weight: widen(stream.clone_dtoh(&dw).map_err(backend("download"))?),
            state_after: summary.state_after,
            logits: None,
        });
    }
    Ok(out)
}
