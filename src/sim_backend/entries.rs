//! The `_sim` entry points of every kernel instantiation, picked by the
//! element and label types.

use crate::error::{Error, Result};
use crate::kernel_params::{
    AdafaceCombineParams, AdafaceDxParams, AdafaceShardParams, AdafaceStatsParams,
    AdafaceTileParams,
};
use crate::launch::{KernelElement, KernelLabel};
use crate::sim::SimEntry;

macro_rules! declare {
    ($params:ty => $($name:ident),* $(,)?) => {
        extern "C" {
            $(fn $name(launch: *const crate::sim::SimLaunch, params: *const $params) -> std::ffi::c_int;)*
        }
    };
}

declare!(AdafaceStatsParams =>
    adaface_stats_f32_i32_sim, adaface_stats_f32_i64_sim,
    adaface_stats_bf16_i32_sim, adaface_stats_bf16_i64_sim,
    adaface_stats_f16_i32_sim, adaface_stats_f16_i64_sim);
declare!(AdafaceTileParams =>
    adaface_forward_f32_i32_sim, adaface_forward_f32_i64_sim,
    adaface_forward_bf16_i32_sim, adaface_forward_bf16_i64_sim,
    adaface_forward_f16_i32_sim, adaface_forward_f16_i64_sim,
    adaface_backward_f32_i32_sim, adaface_backward_f32_i64_sim,
    adaface_backward_bf16_i32_sim, adaface_backward_bf16_i64_sim,
    adaface_backward_f16_i32_sim, adaface_backward_f16_i64_sim);
declare!(AdafaceTileParams =>
    adaface_flash_forward_bf16_i32_sim, adaface_flash_forward_bf16_i64_sim,
    adaface_flash_forward_dx_bf16_i32_sim, adaface_flash_forward_dx_bf16_i64_sim,
    adaface_flash_dw_bf16_i32_sim, adaface_flash_dw_bf16_i64_sim,
    adaface_flash_dx_finish_bf16_i32_sim, adaface_flash_dx_finish_bf16_i64_sim,
    adaface_flash_forward_dx_single_bf16_i32_sim, adaface_flash_forward_dx_single_bf16_i64_sim,
    adaface_flash_dw_single_bf16_i32_sim, adaface_flash_dw_single_bf16_i64_sim,
    adaface_flash_wg_forward_bf16_i32_sim, adaface_flash_wg_forward_bf16_i64_sim,
    adaface_flash_wg_forward_dx_bf16_i32_sim, adaface_flash_wg_forward_dx_bf16_i64_sim,
    adaface_flash_wg_dw_bf16_i32_sim, adaface_flash_wg_dw_bf16_i64_sim,
    adaface_flash_wg_forward_dx_single_bf16_i32_sim, adaface_flash_wg_forward_dx_single_bf16_i64_sim,
    adaface_flash_wg_dw_single_bf16_i32_sim, adaface_flash_wg_dw_single_bf16_i64_sim,
    adaface_flash_forward_f16_i32_sim, adaface_flash_forward_f16_i64_sim,
    adaface_flash_forward_dx_f16_i32_sim, adaface_flash_forward_dx_f16_i64_sim,
    adaface_flash_dw_f16_i32_sim, adaface_flash_dw_f16_i64_sim,
    adaface_flash_dx_finish_f16_i32_sim, adaface_flash_dx_finish_f16_i64_sim,
    adaface_flash_forward_dx_single_f16_i32_sim, adaface_flash_forward_dx_single_f16_i64_sim,
    adaface_flash_dw_single_f16_i32_sim, adaface_flash_dw_single_f16_i64_sim);
declare!(AdafaceCombineParams => adaface_combine_sim);
declare!(AdafaceShardParams => adaface_shard_rows_i32_sim, adaface_shard_rows_i64_sim);
declare!(AdafaceDxParams => adaface_dx_finish_f32_sim, adaface_dx_finish_bf16_sim, adaface_dx_finish_f16_sim);

/// The five entries of one (element, label) specialisation.
pub(super) struct Entries {
    pub stats: SimEntry<AdafaceStatsParams>,
    pub forward: SimEntry<AdafaceTileParams>,
    pub combine: SimEntry<AdafaceCombineParams>,
    pub backward: SimEntry<AdafaceTileParams>,
    pub dx_finish: SimEntry<AdafaceDxParams>,
}

impl Entries {
    pub(super) fn of<E: KernelElement, L: KernelLabel>() -> Result<Self> {
        let (stats, forward, backward): (SimEntry<_>, SimEntry<_>, SimEntry<_>) =
            match (E::SUFFIX, L::SUFFIX) {
                ("f32", "i32") => (
                    adaface_stats_f32_i32_sim,
                    adaface_forward_f32_i32_sim,
                    adaface_backward_f32_i32_sim,
                ),
                ("f32", "i64") => (
                    adaface_stats_f32_i64_sim,
                    adaface_forward_f32_i64_sim,
                    adaface_backward_f32_i64_sim,
                ),
                ("bf16", "i32") => (
                    adaface_stats_bf16_i32_sim,
                    adaface_forward_bf16_i32_sim,
                    adaface_backward_bf16_i32_sim,
                ),
                ("bf16", "i64") => (
                    adaface_stats_bf16_i64_sim,
                    adaface_forward_bf16_i64_sim,
                    adaface_backward_bf16_i64_sim,
                ),
                ("f16", "i32") => (
                    adaface_stats_f16_i32_sim,
                    adaface_forward_f16_i32_sim,
                    adaface_backward_f16_i32_sim,
                ),
                ("f16", "i64") => (
                    adaface_stats_f16_i64_sim,
                    adaface_forward_f16_i64_sim,
                    adaface_backward_f16_i64_sim,
                ),
                (e, l) => return Err(unsupported(e, l)),
            };
        let dx_finish: SimEntry<AdafaceDxParams> = match E::SUFFIX {
            "f32" => adaface_dx_finish_f32_sim,
            "bf16" => adaface_dx_finish_bf16_sim,
            "f16" => adaface_dx_finish_f16_sim,
            e => return Err(unsupported(e, L::SUFFIX)),
        };
        Ok(Entries {
            stats,
            forward,
            combine: adaface_combine_sim,
            backward,
            dx_finish,
        })
    }
}

/// The flash family's tile entries (bf16 and f16; the plan picks it).
pub(super) struct FlashEntries {
    pub forward: SimEntry<AdafaceTileParams>,
    pub forward_dx: SimEntry<AdafaceTileParams>,
    pub dw: SimEntry<AdafaceTileParams>,
    pub forward_dx_single: SimEntry<AdafaceTileParams>,
    pub dw_single: SimEntry<AdafaceTileParams>,
    pub dx_finish: SimEntry<AdafaceTileParams>,
}

impl FlashEntries {
    /// The entries for element `E` and label `L`; `wgmma` picks the sm_90a
    /// tile kernels (`_wg`, bf16 only).
    pub(super) fn of<E: KernelElement, L: KernelLabel>(wgmma: bool) -> Result<Self> {
        Ok(match (E::SUFFIX, L::SUFFIX, wgmma) {
            ("bf16", "i32", false) => FlashEntries {
                forward: adaface_flash_forward_bf16_i32_sim,
                forward_dx: adaface_flash_forward_dx_bf16_i32_sim,
                dw: adaface_flash_dw_bf16_i32_sim,
                forward_dx_single: adaface_flash_forward_dx_single_bf16_i32_sim,
                dw_single: adaface_flash_dw_single_bf16_i32_sim,
                dx_finish: adaface_flash_dx_finish_bf16_i32_sim,
            },
            ("bf16", "i64", false) => FlashEntries {
                forward: adaface_flash_forward_bf16_i64_sim,
                forward_dx: adaface_flash_forward_dx_bf16_i64_sim,
                dw: adaface_flash_dw_bf16_i64_sim,
                forward_dx_single: adaface_flash_forward_dx_single_bf16_i64_sim,
                dw_single: adaface_flash_dw_single_bf16_i64_sim,
                dx_finish: adaface_flash_dx_finish_bf16_i64_sim,
            },
            ("bf16", "i32", true) => FlashEntries {
                forward: adaface_flash_wg_forward_bf16_i32_sim,
                forward_dx: adaface_flash_wg_forward_dx_bf16_i32_sim,
                dw: adaface_flash_wg_dw_bf16_i32_sim,
                forward_dx_single: adaface_flash_wg_forward_dx_single_bf16_i32_sim,
                dw_single: adaface_flash_wg_dw_single_bf16_i32_sim,
                dx_finish: adaface_flash_dx_finish_bf16_i32_sim,
            },
            ("bf16", "i64", true) => FlashEntries {
                forward: adaface_flash_wg_forward_bf16_i64_sim,
                forward_dx: adaface_flash_wg_forward_dx_bf16_i64_sim,
                dw: adaface_flash_wg_dw_bf16_i64_sim,
                forward_dx_single: adaface_flash_wg_forward_dx_single_bf16_i64_sim,
                dw_single: adaface_flash_wg_dw_single_bf16_i64_sim,
                dx_finish: adaface_flash_dx_finish_bf16_i64_sim,
            },
            ("f16", "i32", false) => FlashEntries {
                forward: adaface_flash_forward_f16_i32_sim,
                forward_dx: adaface_flash_forward_dx_f16_i32_sim,
                dw: adaface_flash_dw_f16_i32_sim,
                forward_dx_single: adaface_flash_forward_dx_single_f16_i32_sim,
                dw_single: adaface_flash_dw_single_f16_i32_sim,
                dx_finish: adaface_flash_dx_finish_f16_i32_sim,
            },
            ("f16", "i64", false) => FlashEntries {
                forward: adaface_flash_forward_f16_i64_sim,
                forward_dx: adaface_flash_forward_dx_f16_i64_sim,
                dw: adaface_flash_dw_f16_i64_sim,
                forward_dx_single: adaface_flash_forward_dx_single_f16_i64_sim,
                dw_single: adaface_flash_dw_single_f16_i64_sim,
                dx_finish: adaface_flash_dx_finish_f16_i64_sim,
            },
            (e, l, _) => return Err(unsupported(e, l)),
        })
    }
}

/// The row-statistics entry of a class-sharded step for label `L`.
pub(super) fn shard_rows<L: KernelLabel>() -> Result<SimEntry<AdafaceShardParams>> {
    match L::SUFFIX {
        "i32" => Ok(adaface_shard_rows_i32_sim),
        "i64" => Ok(adaface_shard_rows_i64_sim),
        l => Err(unsupported("f32", l)),
    }
}

fn unsupported(element: &'static str, label: &'static str) -> Error {
    Error::DtypeMismatch {
        expected: "f32, bf16 or f16 elements with i32 or i64 labels",
        actual: if matches!(element, "f32" | "bf16" | "f16") {
            label
        } else {
            element
        },
    }
}
