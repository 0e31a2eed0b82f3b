//! NVRTC compilation of the flattened kernel source, cached per context
//! and architecture.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::{backend, probe_nvrtc};
use crate::error::Result;

/// The kernels of `kernels/**/*.cu` (outside `kernels/sim/`) with their
/// includes inlined (build.rs).
pub fn kernel_source() -> &'static str {
    include_str!(concat!(env!("OUT_DIR"), "/adaface_kernels.cu"))
}

/// Compiles every kernel for `arch` (e.g. `sm_90a`) to PTX. Needs libnvrtc
/// only, no GPU: the compile checks use it.
pub fn compile_ptx(arch: &str) -> Result<String> {
    probe_nvrtc()?;
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-lineinfo".into(),
        ],
        name: Some("adaface_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(kernel_source(), opts).map_err(backend("NVRTC"))?;
    Ok(ptx.to_src())
}

type ModuleCache = Mutex<HashMap<(usize, String), Arc<CudaModule>>>;

/// The kernel module for `ctx`, compiled on first use for the device's
/// architecture and kept for the life of the process.
pub(crate) fn module_for(ctx: &Arc<CudaContext>) -> Result<Arc<CudaModule>> {
    static CACHE: OnceLock<ModuleCache> = OnceLock::new();
    let (major, minor) = ctx
        .compute_capability()
        .map_err(backend("compute capability"))?;
    // Compute capability 9.0 gets the architecture-specific target, where
    // the wgmma kernels are compiled (elsewhere they trap and are never
    // launched).
    let feature = if (major, minor) == (9, 0) { "a" } else { "" };
    let arch = format!("sm_{major}{minor}{feature}");
    let key = (ctx.cu_ctx() as usize, arch.clone());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(m) = cache.lock().map_err(backend("module cache"))?.get(&key) {
        return Ok(m.clone());
    }
    let ptx = compile_ptx(&arch)?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(backend("load module"))?;
    cache
        .lock()
        .map_err(backend("module cache"))?
        .insert(key, module.clone());
    Ok(module)
}
