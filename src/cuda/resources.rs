//! The load-time guard the simulator cannot give: the driver JIT-compiles
//! our PTX for the device, and a spill or a register count above the plan
//! there would go unnoticed until a profile. Each kernel is checked once,
//! when a launch first needs it, against the plan that launch was made for.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule};

use super::backend;
use crate::error::{Error, Result};

/// Local memory per thread the kernels are planned with: the largest stack
/// frame ptxas 13.0 reports for any kernel (sm_80 and sm_90a,
/// `scripts/check_kernels.sh`, which fails on any spill). More local memory
/// than this after the driver's JIT means registers were spilled.
pub(crate) const PLANNED_LOCAL_BYTES: u32 = 32;

/// What the driver reports of a loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LoadedResources {
    /// Registers per thread.
    pub registers: u32,
    /// Local memory per thread, bytes.
    pub local_bytes: u32,
    /// The most threads per block its register use allows.
    pub max_threads: u32,
}

/// Refuses a kernel that spills or cannot run `block_threads` threads per
/// block (its registers times the block would not fit the register file).
pub(crate) fn check(kernel: &str, r: LoadedResources, block_threads: u32) -> Result<()> {
    if r.local_bytes <= PLANNED_LOCAL_BYTES && r.max_threads >= block_threads {
        return Ok(());
    }
    Err(Error::KernelResources {
        kernel: kernel.to_string(),
        registers: r.registers,
        local_bytes: r.local_bytes,
        max_threads: r.max_threads,
        requirement: format!(
            "at most {PLANNED_LOCAL_BYTES} bytes of local memory and at least \
             {block_threads} threads per block"
        ),
    })
}

/// Loads `name` from `module` and checks it for a block of `block_threads`.
pub(crate) fn checked_function(
    module: &Arc<CudaModule>,
    name: &str,
    block_threads: u32,
) -> Result<CudaFunction> {
    let f = module.load_function(name).map_err(backend("load kernel"))?;
    let attr = |v: std::result::Result<i32, _>| v.map(|v| v.max(0) as u32);
    let r = LoadedResources {
        registers: attr(f.num_regs()).map_err(backend("kernel registers"))?,
        local_bytes: attr(f.local_size_bytes()).map_err(backend("kernel local memory"))?,
        max_threads: attr(f.max_threads_per_block()).map_err(backend("kernel threads"))?,
    };
    check(name, r, block_threads)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLANNED: LoadedResources = LoadedResources {
        registers: 230,
        local_bytes: 32,
        max_threads: 256,
    };

    #[test]
    fn a_kernel_as_planned_passes() {
        assert!(check("adaface_flash_dw_bf16_i32", PLANNED, 256).is_ok());
        let lean = LoadedResources {
            local_bytes: 0,
            ..PLANNED
        };
        assert!(check("adaface_stats_f32_i32", lean, 128).is_ok());
    }

    #[test]
    fn a_spilling_kernel_is_refused_with_its_numbers() {
        let spilled = LoadedResources {
            local_bytes: PLANNED_LOCAL_BYTES + 8,
            ..PLANNED
        };
        match check("adaface_flash_dw_bf16_i32", spilled, 256) {
            Err(Error::KernelResources {
                kernel,
                local_bytes,
                registers,
                ..
            }) => {
                assert_eq!(kernel, "adaface_flash_dw_bf16_i32");
                assert_eq!(local_bytes, 40);
                assert_eq!(registers, 230);
            }
            other => panic!("expected KernelResources, got {other:?}"),
        }
    }

    #[test]
    fn a_kernel_too_register_hungry_for_the_block_is_refused() {
        let hungry = LoadedResources {
            max_threads: 128,
            ..PLANNED
        };
        let e = check("adaface_flash_forward_bf16_i32", hungry, 256).unwrap_err();
        assert!(matches!(
            e,
            Error::KernelResources {
                max_threads: 128,
                ..
            }
        ));
        assert!(e.to_string().contains("at least 256 threads per block"));
    }
}
