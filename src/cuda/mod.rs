//! The CUDA backend: the kernels in `kernels/`, compiled at run time by
//! NVRTC and launched through cudarc on a caller's stream.
//!
//! Nothing here touches cudarc before [`probe`] has checked that libcuda
//! and libnvrtc can be loaded, so a machine without a GPU gets
//! [`Error::DeviceUnavailable`](crate::Error::DeviceUnavailable), never a panic.

mod compile;
mod loss;

pub use compile::{compile_ptx, kernel_source};
pub use loss::{CudaAdaFace, CudaStep};

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use crate::error::{Error, Result};

/// Checks that the CUDA driver library and NVRTC can be loaded.
pub fn probe() -> Result<()> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::DeviceUnavailable {
            reason: "libcuda (the CUDA driver) cannot be loaded".into(),
        });
    }
    probe_nvrtc()
}

/// Checks that NVRTC can be loaded (enough to compile, no GPU needed).
pub fn probe_nvrtc() -> Result<()> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::DeviceUnavailable {
            reason: "libnvrtc cannot be loaded (set LD_LIBRARY_PATH to CUDA's lib directory)".into(),
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
