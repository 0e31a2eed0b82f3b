//! Shared by the simulator self-tests and the GPU cross-check: mirrors of
//! the parameter structs in `kernels/sim/selftest.cu`, their `_sim` entries,
//! and small helpers.
#![allow(dead_code)]

use std::ffi::c_int;

use adaface::sim::SimLaunch;

// ---------------------------------------------------------------------------
// Mirrors of the parameter structs in kernels/sim/selftest.cu.
// ---------------------------------------------------------------------------
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockSumParams {
    pub input: u64,
    pub sums: u64,
    pub counts: u64,
    pub n: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct DynSmemParams {
    pub input: u64,
    pub output: u64,
    pub zfill: u64,
    pub align: u64,
}

pub const WARP_RESULTS: usize = 12;
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WarpParams {
    pub input: u64,
    pub out: u64,
    pub out64: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct AtomicsParams {
    pub ints: u64,
    pub uints: u64,
    pub ull: u64,
    pub floats: u64,
    pub partials: u64,
    pub ticket: u64,
    pub total: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct GridParams {
    pub out: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct MmaParams {
    pub a: u64,
    pub b_nk: u64,
    pub b_kn: u64,
    pub c: u64,
    pub d: u64,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub mode: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConvertParams {
    pub floats: u64,
    pub bf16_bits: u64,
    pub f16_bits: u64,
    pub bits: u64,
    pub bf16_value: u64,
    pub f16_value: u64,
    pub n: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BarrierLoopParams {
    pub out: u64,
    pub iters: u32,
    pub pad: u32,
}

/// Dynamic shared memory of `selftest_wgmma_bf16`: 1 KiB for the alignment
/// of its atoms, the 64 x 64 A tile and the 256 x 64 B tile (bf16).
pub const WGMMA_SELFTEST_SHARED: u32 = 1024 + (64 * 64 + 256 * 64) * 2;

/// `selftest_wgmma_bf16`'s parameters: A (64 x 64), B (256 x 64, N x K),
/// D (64 x 256, f32) and the mode (0: B K-major, 1: MN-major, both in
/// m64n64 chunks; 2: MN-major in one m64n256).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WgmmaParams {
    pub a: u64,
    pub b_nk: u64,
    pub d: u64,
    pub mode: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BrokenParams {
    pub out: u64,
    pub mode: u32,
    pub pad: u32,
}

extern "C" {
    pub fn selftest_block_sum_f32_sim(l: *const SimLaunch, p: *const BlockSumParams) -> c_int;
    pub fn selftest_dyn_smem_f32_sim(l: *const SimLaunch, p: *const DynSmemParams) -> c_int;
    pub fn selftest_warp_i32_sim(l: *const SimLaunch, p: *const WarpParams) -> c_int;
    pub fn selftest_atomics_mixed_sim(l: *const SimLaunch, p: *const AtomicsParams) -> c_int;
    pub fn selftest_grid_u32_sim(l: *const SimLaunch, p: *const GridParams) -> c_int;
    pub fn selftest_mma_bf16_sim(l: *const SimLaunch, p: *const MmaParams) -> c_int;
    pub fn selftest_mma_f16_sim(l: *const SimLaunch, p: *const MmaParams) -> c_int;
    pub fn selftest_convert_all_sim(l: *const SimLaunch, p: *const ConvertParams) -> c_int;
    pub fn selftest_barrier_loop_u32_sim(l: *const SimLaunch, p: *const BarrierLoopParams)
        -> c_int;
    pub fn selftest_wgmma_bf16_sim(l: *const SimLaunch, p: *const WgmmaParams) -> c_int;
    pub fn selftest_broken_i32_sim(l: *const SimLaunch, p: *const BrokenParams) -> c_int;
}

pub fn addr<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

/// The tests' one generator; these tests draw from raw SplitMix64 states
/// (`Rng::from_state`), the streams their expected values were set on.
pub use adaface::testing::Rng;

pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}
