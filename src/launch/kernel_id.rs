//! The one list of the kernels: every entry point of the kernel source,
//! by family and element/label variant. The NVRTC entry names and, with the
//! simulator, the `extern "C"` `<name>_sim` entries are both generated from
//! it, so adding a kernel instantiation is one line here (and its
//! `ADAFACE_KERNEL` in `kernels/`).

use crate::element::{Element, Label};
use crate::error::{Error, Result};
use crate::kernel_params::{
    AdafaceCombineParams, AdafaceDxParams, AdafaceNaiveParams, AdafaceShardParams,
    AdafaceStatsParams, AdafaceTileParams,
};

/// Element types the kernels are instantiated for.
pub trait KernelElement: Element {
    /// Suffix of the kernel names (`f32`, `bf16`, `f16`).
    const SUFFIX: &'static str;
}
impl KernelElement for f32 {
    const SUFFIX: &'static str = "f32";
}
impl KernelElement for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl KernelElement for half::f16 {
    const SUFFIX: &'static str = "f16";
}

/// Label types the kernels are instantiated for.
pub trait KernelLabel: Label {
    /// Suffix of the kernel names (`i32`, `i64`).
    const SUFFIX: &'static str;
}
impl KernelLabel for i32 {
    const SUFFIX: &'static str = "i32";
}
impl KernelLabel for i64 {
    const SUFFIX: &'static str = "i64";
}

/// A kernel entry point: an index into the table of every kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelId(u16);

/// What the table knows of one kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KernelInfo {
    /// The family (the name without the type suffixes).
    family: &'static str,
    /// The element and label suffixes of this instantiation, in order.
    suffixes: &'static [&'static str],
    /// The entry name: family and suffixes joined by `_`.
    name: &'static str,
    /// The name of the parameter struct the kernel takes.
    params: &'static str,
}

/// The parameter structs of the kernels: each knows its name, so that a
/// typed entry is only ever handed a kernel that takes that struct.
pub trait KernelParams: Copy {
    /// The struct's name, as the kernel table spells it.
    const NAME: &'static str;
}

macro_rules! kernel_params {
    ($($params:ident),* $(,)?) => {
        $(impl KernelParams for $params {
            const NAME: &'static str = stringify!($params);
        })*
    };
}
kernel_params!(
    AdafaceStatsParams,
    AdafaceTileParams,
    AdafaceCombineParams,
    AdafaceDxParams,
    AdafaceShardParams,
    AdafaceNaiveParams,
);
impl KernelParams for crate::chunked::ChunkedParams {
    const NAME: &'static str = "ChunkedParams";
}

/// The signature every `_sim` entry shares once its parameter pointer is
/// erased (the parameter struct is checked through [`KernelParams`]).
#[cfg(feature = "sim")]
type RawSimEntry = unsafe extern "C" fn(
    launch: *const crate::sim::SimLaunch,
    params: *const std::ffi::c_void,
) -> std::ffi::c_int;

/// Generates [`KERNELS`] and, with the simulator, the table of `_sim`
/// entries in the same order, from one list of families, each with its
/// parameter struct and its suffix combinations.
macro_rules! kernel_table {
    ($($family:literal: $params:ident [$(($($suffix:literal),*)),* $(,)?]),* $(,)?) => {
        /// Every kernel in the source, in table order.
        const KERNELS: &[KernelInfo] = &[$($(KernelInfo {
            family: $family,
            suffixes: &[$($suffix),*],
            name: concat!($family $(, "_", $suffix)*),
            params: stringify!($params),
        }),*),*];

        /// The `_sim` entry of each kernel of [`KERNELS`], same order.
        #[cfg(feature = "sim")]
        static SIM_ENTRIES: &[RawSimEntry] = &[$($({
            extern "C" {
                #[link_name = concat!($family $(, "_", $suffix)*, "_sim")]
                fn entry(
                    launch: *const crate::sim::SimLaunch,
                    params: *const std::ffi::c_void,
                ) -> std::ffi::c_int;
            }
            entry as RawSimEntry
        }),*),*];
    };
}

kernel_table! {
    "adaface_stats": AdafaceStatsParams [
        ("f32", "i32"), ("f32", "i64"), ("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64"),
    ],
    "adaface_forward": AdafaceTileParams [
        ("f32", "i32"), ("f32", "i64"), ("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64"),
    ],
    "adaface_combine": AdafaceCombineParams [()],
    "adaface_backward": AdafaceTileParams [
        ("f32", "i32"), ("f32", "i64"), ("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64"),
    ],
    "adaface_dx_finish": AdafaceDxParams [("f32"), ("bf16"), ("f16")],
    "adaface_shard_rows": AdafaceShardParams [("i32"), ("i64")],
    "adaface_flash_forward": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64")],
    "adaface_flash_forward_dx": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64")],
    "adaface_flash_forward_dx_single": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64")],
    "adaface_flash_dw": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64")],
    "adaface_flash_dw_single": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64")],
    "adaface_flash_dx_finish": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64")],
    "adaface_flash_wg_forward": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64")],
    "adaface_flash_wg_forward_dx": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64")],
    "adaface_flash_wg_forward_dx_single": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64")],
    "adaface_flash_wg_dw": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64")],
    "adaface_flash_wg_dw_single": AdafaceTileParams [("bf16", "i32"), ("bf16", "i64")],
    "adaface_naive_normalize": AdafaceNaiveParams [("f32"), ("bf16"), ("f16")],
    "adaface_naive_softmax": AdafaceNaiveParams [
        ("f32", "i32"), ("f32", "i64"), ("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64"),
    ],
    "adaface_naive_loss": AdafaceNaiveParams [()],
    "adaface_naive_norm_backward": AdafaceNaiveParams [("f32"), ("bf16"), ("f16")],
    "adaface_chunked_stats": ChunkedParams [("i32"), ("i64")],
    "adaface_chunked_grad": ChunkedParams [
        ("f32", "i32"), ("f32", "i64"), ("bf16", "i32"), ("bf16", "i64"), ("f16", "i32"), ("f16", "i64"),
    ],
}

impl KernelId {
    /// Every kernel in the source, in table order (for compile checks and
    /// counts: nothing else lists them).
    pub fn all() -> impl ExactSizeIterator<Item = KernelId> {
        (0..KERNELS.len() as u16).map(KernelId)
    }

    /// The kernel of `family` for the given element and/or label suffixes
    /// (e.g. `("adaface_stats", &["bf16", "i64"])`), or
    /// [`Error::DtypeMismatch`] when the source has no such instantiation.
    pub fn find(family: &str, suffixes: &[&'static str]) -> Result<KernelId> {
        KERNELS
            .iter()
            .position(|k| k.family == family && k.suffixes == suffixes)
            .map(|i| KernelId(i as u16))
            .ok_or_else(|| unsupported(suffixes))
    }

    fn info(self) -> &'static KernelInfo {
        &KERNELS[self.0 as usize]
    }

    /// The entry name (what NVRTC exports; the simulator's entry adds `_sim`).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The simulator entry of this kernel, typed by its parameter struct;
    /// [`Error::Backend`] if the kernel takes another struct than `P`.
    #[cfg(feature = "sim")]
    pub(crate) fn sim_entry<P: KernelParams>(self) -> Result<crate::sim::SimEntry<P>> {
        let info = self.info();
        if info.params != P::NAME {
            return Err(Error::Backend {
                message: format!("{} takes {}, not {}", info.name, info.params, P::NAME),
            });
        }
        let raw = SIM_ENTRIES[self.0 as usize];
        // SAFETY: both are C functions of a launch pointer and a parameter
        // pointer returning an int, the same ABI; the entry's parameter
        // struct is `P`, checked above against the table.
        Ok(unsafe { std::mem::transmute::<RawSimEntry, crate::sim::SimEntry<P>>(raw) })
    }
}

impl std::fmt::Display for KernelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a type combination the kernels are not instantiated for:
/// names the offending suffix (the element, unless it is a known one).
fn unsupported(suffixes: &[&'static str]) -> Error {
    let actual = suffixes
        .iter()
        .copied()
        .find(|s| !matches!(*s, "f32" | "bf16" | "f16" | "i32" | "i64"))
        .or_else(|| suffixes.last().copied())
        .unwrap_or("");
    Error::DtypeMismatch {
        expected: "f32, bf16 or f16 elements with i32 or i64 labels",
        actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_listed_once_with_its_suffixes() {
        let names: Vec<&str> = KernelId::all().map(KernelId::name).collect();
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name), "{name} listed twice");
        }
        let stats = KernelId::find("adaface_stats", &["bf16", "i64"]).unwrap();
        assert_eq!(stats.name(), "adaface_stats_bf16_i64");
        assert_eq!(
            KernelId::find("adaface_combine", &[]).unwrap().name(),
            "adaface_combine"
        );
        assert!(matches!(
            KernelId::find("adaface_flash_wg_dw", &["f16", "i32"]),
            Err(Error::DtypeMismatch { .. })
        ));
    }

    #[cfg(feature = "sim")]
    #[test]
    fn simulator_entries_are_typed_by_the_table() {
        let stats = KernelId::find("adaface_stats", &["f32", "i32"]).unwrap();
        assert!(stats.sim_entry::<AdafaceStatsParams>().is_ok());
        assert!(matches!(
            stats.sim_entry::<AdafaceTileParams>(),
            Err(Error::Backend { .. })
        ));
        assert_eq!(SIM_ENTRIES.len(), KERNELS.len());
    }
}
