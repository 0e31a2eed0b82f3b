//! Launch planning shared by the CUDA backend and the simulator: the plan
//! (grid and block sizes, the workspace layout: `plan`), the parameter
//! structs (`params`), the one list of kernels ([`KernelId`]), the
//! sequence of launches of a step ([`StepPlan::launches`]), the host-side
//! checks and the decoding of the step record. Both backends loop over the
//! same launches, so every simulated run exercises the kernel choice and
//! the arithmetic the GPU launch uses.
//!
//! # Kernels of one step
//!
//! | kernel | grid | block | does |
//! |---|---|---|---|
//! | `stats` | `ceil(B/8)` (at most 1024) | 256 | one warp per row: row norms; the last block: validate labels and `x`, batch mean/std, EMA, `z_i`, `(a_i, b_i)` |
//! | `forward` | `(S_f, ceil(B/32))` | 256 | 32 x 64 logit tiles, class norms, running max/sum-exp per split |
//! | `combine` | 1 | 256 | log-sum-exp per row (splits in order), mean loss, EMA commit |
//! | `backward` | `S_b` | 256 | recompute tiles, `A`, `dW` (owned rows), per-split `gx` |
//! | `dx_finish` | `B` | 256 | sum `gx` over splits in order, Jacobian of `x / \|\|x\|\|` |
//!
//! That is [`Variant::Tiled`], for every dtype. bf16 and f16 inputs with
//! `D % 32 == 0` and `D <= 512` take [`Variant::Flash`]
//! (kernels/flash/):
//!
//! | kernel | grid | block | does |
//! |---|---|---|---|
//! | `stats` | `ceil(B/8)` | 256 | as above |
//! | `flash_forward[_dx]` | `(ceil(B/64), S_f)` | 256 | 64 x 64 tiles, x resident, W streamed; max/sum-exp and (training) the unnormalised `gx` per split |
//! | `combine` | 1 | 256 | as above |
//! | `flash_dw` | `min(ceil(C/64), flash_blocks)`, persistent | 256 | per class tile: W resident, x streamed; `dW` of its classes, Jacobian; next W staged under the stores |
//! | `flash_dx_finish` | `B` | 256 | `gx` from the splits, target term, Jacobian |
//!
//! The flash tile kernels exist twice: on `mma.sync` (sm_80 and newer) and,
//! as the `_wg` entries (bf16), on Hopper's asynchronous warpgroup products
//! (`wgmma`, sm_90a, `D % 128 == 0`), chosen by [`PlanLimits::wgmma`]. Same
//! grids, workspace and results; only the instructions and the shared-memory
//! layout differ.
//!
//! # Workspace
//!
//! One `f32` buffer of `14 B + C + 2 S_f B + S_g B D` elements (the last
//! term only for training steps; 5 of the `14 B` hold CurricularFace's and
//! MagFace's per-row terms), plus the 72-byte step record and the 24-byte
//! EMA state (with CurricularFace's `t`). `S_g` is the number of per-split `gx` partials:
//! tiled, `S_g = S_b = min(tiles, max(1, dx_budget / (4 B D)),
//! max_backward_splits)` and `S_f = min(tiles, ceil(target_blocks /
//! ceil(B/32)))`; flash, `S_g = S_f = min(tiles, max(1, flash_blocks /
//! ceil(B/64)))` (capped by the same budget), with `tiles = ceil(C / 64)`. So
//! the workspace is bounded by the budget (48 MiB by default) plus
//! `O(B + C)`: at `B = D = 512`, `C = 1M`, 20.9 MB (flash: 16.8 MB of
//! partials) or 54.9 MB (tiled: 50.3 MB), against 2 GB for one `B x C` f32
//! matrix.

mod checks;
mod dispatch;
mod kernel_id;
mod params;
mod plan;
mod record;

pub use checks::{check_call, check_grads};
pub use dispatch::{KernelLaunch, LaunchParams, StepKernels};
pub use kernel_id::{KernelElement, KernelId, KernelLabel, KernelParams};
// Used by the naive and chunked paths, which exist with a kernel backend.
#[cfg(any(feature = "cuda", feature = "sim"))]
pub(crate) use params::{kernel_margin, stats_params, StatsBuffers};
pub use plan::{
    flash_aligned, flash_shared_bytes, stats_blocks, LaunchDims, Pass, PlanLimits, StepBuffers,
    StepPlan, Variant, WorkspaceLayout, MAX_STATS_BLOCKS,
};
pub use record::{check_record, StepSummary, NO_ERROR};
