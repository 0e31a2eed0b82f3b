//! Launch planning shared by the CUDA backend and the simulator: grid and
//! block sizes, the workspace layout, the kernel names and the parameter
//! structs. Both backends call the same functions, so every simulated run
//! exercises the arithmetic the GPU launch uses.
//!
//! # Kernels of one step
//!
//! | kernel | grid | block | does |
//! |---|---|---|---|
//! | `stats` | 1 | 256 | validate labels and `x`, row norms, batch mean/std, EMA, `z_i`, `(a_i, b_i)` |
//! | `forward` | `(S_f, ceil(B/32))` | 256 | 32 x 64 logit tiles, class norms, running max/sum-exp per split |
//! | `combine` | 1 | 256 | log-sum-exp per row (splits in order), mean loss, EMA commit |
//! | `backward` | `S_b` | 256 | recompute tiles, `A`, `dW` (owned rows), per-split `gx` |
//! | `dx_finish` | `B` | 256 | sum `gx` over splits in order, Jacobian of `x / \|\|x\|\|` |
//!
//! That is [`Variant::Tiled`], for every dtype. bf16 and f16 inputs with
//! `D % 32 == 0` and `D <= 512` take [`Variant::Flash`]
//! (kernels/adaface_flash.cu):
//!
//! | kernel | grid | block | does |
//! |---|---|---|---|
//! | `stats` | 1 | 256 | as above |
//! | `flash_forward[_dx]` | `(ceil(B/64), S_f)` | 256 | 64 x 64 tiles, x resident, W streamed; max/sum-exp and (training) the unnormalised `gx` per split |
//! | `combine` | 1 | 256 | as above |
//! | `flash_dw` | `ceil(C/64)` | 256 | W tile resident, x streamed; `dW` of its classes, Jacobian |
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
//! One `f32` buffer of `9 B + C + 2 S_f B + S_g B D` elements (the last
//! term only for training steps), plus the 56-byte step record and the
//! 16-byte EMA state. `S_g` is the number of per-split `gx` partials:
//! tiled, `S_g = S_b = min(tiles, max(1, dx_budget / (4 B D)),
//! max_backward_splits)` and `S_f = min(tiles, ceil(target_blocks /
//! ceil(B/32)))`; flash, `S_g = S_f = min(tiles, max(1, flash_blocks /
//! ceil(B/64)))` (capped by the same budget), with `tiles = ceil(C / 64)`. So
//! the workspace is bounded by the budget (48 MiB by default) plus
//! `O(B + C)`: at `B = D = 512`, `C = 1M`, 20.9 MB (flash: 16.8 MB of
//! partials) or 54.9 MB (tiled: 50.3 MB), against 2 GB for one `B x C` f32
//! matrix.

use crate::config::{AdaFaceConfig, MarginPolicy};
use crate::element::{Dtype, Element, Label};
use crate::error::{Error, Result, Tensor};
use crate::kernel_params::{
    AdafaceCombineParams, AdafaceDxParams, AdafaceStatsParams, AdafaceStepRecord,
    AdafaceTileParams, ADAFACE_ERR_LABEL, ADAFACE_ERR_NONFINITE_W, ADAFACE_ERR_NONFINITE_X,
    ADAFACE_ERR_ROWNORM_W, ADAFACE_ERR_ROWNORM_X, ADAFACE_ERR_SHARD, ADAFACE_FLASH_CLASSES,
    ADAFACE_FLASH_MAX_DIM, ADAFACE_FLASH_ROWS, ADAFACE_FLASH_ROW_PAD, ADAFACE_THREADS,
    ADAFACE_TILE_CLASSES, ADAFACE_TILE_ROWS,
};
use crate::shape::Shape;
use crate::state::EmaState;

/// The key of a step record that holds no error.
pub const NO_ERROR: u64 = u64::MAX;

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block, bytes (the tiled kernels use static
    /// shared memory only; the flash kernels up to 215 KiB, see
    /// [`flash_shared_bytes`]).
    pub shared_bytes: u32,
}

/// Dynamic shared memory of the flash tile kernels for depth `dim`: three
/// 64-row tiles of 16-bit elements (one resident, two streamed), the hi and
/// lo 64 x 64 tiles of `P` or `A`, and 576 floats of row reductions, class
/// norms and (f16) peaks (the layout of `AdafaceFlashSmem` in
/// kernels/adaface_flash.cu).
/// The `mma.sync` kernels pad every row by 8 elements (conflict-free
/// `ldmatrix`); the `wgmma` ones store unpadded swizzled tiles and take
/// 1 KiB more to align them to 1024 bytes.
pub fn flash_shared_bytes(dim: usize, wgmma: bool) -> usize {
    let pad = if wgmma {
        0
    } else {
        ADAFACE_FLASH_ROW_PAD as usize
    };
    let align = if wgmma { 1024 } else { 0 };
    let rows = ADAFACE_FLASH_ROWS as usize;
    let classes = ADAFACE_FLASH_CLASSES as usize;
    align + 2 * 3 * rows * (dim + pad) + 2 * 2 * rows * (classes + pad) + 4 * (128 + 128 + 64 + 256)
}

/// Whether a flash step of this dtype and depth `dim` can take the `wgmma`
/// kernels under `limits`: they exist for bf16 and issue `m64n64` products
/// over each depth half, so `D % 128 == 0`.
fn flash_wgmma(dtype: Dtype, dim: usize, limits: &PlanLimits) -> bool {
    limits.wgmma
        && dtype == Dtype::BF16
        && dim % 128 == 0
        && flash_shared_bytes(dim, true) <= limits.flash_max_shared
}

/// Whether device addresses suit the flash family: its cp.async copies
/// move 16 bytes at a time, so `x` and `W` must start on a 16-byte boundary
/// (an allocation always does; a view at an odd offset may not). A
/// misaligned step takes the tiled family instead.
pub fn flash_aligned(x: u64, w: u64) -> bool {
    x % 16 == 0 && w % 16 == 0
}

/// The kernel family of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// 32 x 64 tiles staged element by element (every dtype; mma tile
    /// products for bf16 and f16 on sm_80+): kernels/adaface_forward.cu and
    /// kernels/adaface_backward.cu.
    Tiled,
    /// bf16 or f16 with `D % 32 == 0` and `D <= 512`: 64 x 64 tensor-core tiles,
    /// cp.async staging, `dX` accumulated in the forward
    /// (kernels/adaface_flash.cu).
    Flash,
}

impl Variant {
    /// The family a step of this dtype and shape runs when `limits` allow
    /// the flash kernels.
    pub fn choose(dtype: Dtype, shape: &Shape, limits: &PlanLimits) -> Self {
        let d = shape.dim;
        if limits.flash
            && (dtype == Dtype::BF16 || dtype == Dtype::F16)
            && d % 32 == 0
            && d <= ADAFACE_FLASH_MAX_DIM as usize
            && flash_shared_bytes(d, false) <= limits.flash_max_shared
        {
            Variant::Flash
        } else {
            Variant::Tiled
        }
    }
}

impl LaunchDims {
    fn new(gx: usize, gy: usize) -> Result<Self> {
        let gx = u32::try_from(gx).map_err(|_| Error::TooLarge { what: "grid x" })?;
        let gy = u32::try_from(gy)
            .ok()
            .filter(|&g| g <= 65_535)
            .ok_or(Error::TooLarge {
                what: "grid y (batch)",
            })?;
        Ok(LaunchDims {
            grid: (gx, gy, 1),
            block: (ADAFACE_THREADS, 1, 1),
            shared_bytes: 0,
        })
    }
}

/// Knobs of the plan. The defaults suit a large GPU; tests shrink them to
/// make several class tiles share one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Forward blocks to aim for (the forward grid is about this size).
    pub target_blocks: usize,
    /// Bytes the backward's per-split `gx` partials may take.
    pub dx_budget_bytes: usize,
    /// Most backward splits.
    pub max_backward_splits: usize,
    /// Whether eligible steps (see [`Variant::choose`]) take the flash
    /// kernels. The CUDA backend clears it on devices older than sm_80.
    pub flash: bool,
    /// Flash forward blocks to aim for: one per SM (each takes up to
    /// 215 KiB of shared memory, so one block fits an SM).
    pub flash_blocks: usize,
    /// Dynamic shared memory a block may opt into: a depth whose flash
    /// tiles ([`flash_shared_bytes`]) do not fit takes the tiled family.
    pub flash_max_shared: usize,
    /// Flash gradient products with the softmax gradient split into bf16
    /// hi + lo (default: dX and dW within ~3e-6 of the f64 reference), or
    /// rounded once to bf16 as FlashAttention does (`false`: half the
    /// gradient tensor-core work, ~1e-3 relative error).
    pub split_gradients: bool,
    /// Flash steps with `D % 128 == 0` use Hopper's `wgmma` kernels (sm_90a)
    /// instead of `mma.sync`. Off by default: they are verified in the
    /// simulator but have not yet run on a GPU (docs/PERF.md); the CUDA
    /// backend keeps it off on devices other than compute capability 9.0.
    pub wgmma: bool,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            target_blocks: 2048,
            dx_budget_bytes: 48 << 20,
            max_backward_splits: 1024,
            flash: true,
            flash_blocks: 132,
            flash_max_shared: 227 << 10,
            split_gradients: true,
            wgmma: false,
        }
    }
}

/// Which kernels a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Loss only: stats, forward, combine.
    Forward,
    /// Training step: also backward and dx_finish.
    ForwardBackward,
}

/// Element offsets of the regions of the `f32` workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceLayout {
    /// `||x_i||`, `B`.
    pub row_norm: usize,
    /// Angular offsets `a_i`, `B`.
    pub row_a: usize,
    /// Additive offsets `b_i`, `B`.
    pub row_b: usize,
    /// Margin scaler `z_i`, `B`.
    pub row_z: usize,
    /// Margin target logits, `B`.
    pub target_logit: usize,
    /// Clamped target cosines, `B`.
    pub target_cos: usize,
    /// `dlogit / ||w_y||` of each row's target (flash training steps), `B`.
    pub target_dlogit: usize,
    /// Log-sum-exp per row, `B`.
    pub lse: usize,
    /// Per-row loss, `B`.
    pub sample_loss: usize,
    /// `||w_j||`, `C`.
    pub class_norm: usize,
    /// Forward running max per split and row, `S_f B`.
    pub partial_max: usize,
    /// Forward running sum-exp per split and row, `S_f B`.
    pub partial_sum: usize,
    /// `gx` per split, `S_g B D` (training steps only): the tiled
    /// backward's, or the flash forward's unnormalised one.
    pub dx_partial: usize,
    /// Total elements.
    pub len: usize,
}

/// Everything a backend needs to launch one step of a given shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// The problem shape.
    pub shape: Shape,
    /// Which kernels run.
    pub pass: Pass,
    /// Which kernel family runs them.
    pub variant: Variant,
    /// Flash only: hi + lo gradient products ([`PlanLimits::split_gradients`]).
    pub split_gradients: bool,
    /// Flash only: the `wgmma` kernels ([`PlanLimits::wgmma`]).
    pub wgmma: bool,
    /// Class tiles, `ceil(C / 64)`.
    pub class_tiles: usize,
    /// `S_f`.
    pub forward_splits: usize,
    /// `S_b` (0 for a forward, and for the flash family, whose `dW` grid is
    /// one block per class tile).
    pub backward_splits: usize,
    /// `S_g`: per-split `gx` partials (0 for a forward).
    pub dx_splits: usize,
    /// The stats launch.
    pub stats: LaunchDims,
    /// The forward launch.
    pub forward: LaunchDims,
    /// The combine launch.
    pub combine: LaunchDims,
    /// The backward launch (training steps): `backward` or `flash_dw`.
    pub backward: LaunchDims,
    /// The dx_finish launch (training steps): `dx_finish` or `flash_dx_finish`.
    pub dx_finish: LaunchDims,
    /// Workspace regions.
    pub workspace: WorkspaceLayout,
}

/// Device addresses (or, in the simulator, host addresses) of one step's buffers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepBuffers {
    /// Features, `B x D` elements of the input type.
    pub x: u64,
    /// Weight, `C x D`.
    pub w: u64,
    /// Labels, `B` (i32 or i64).
    pub labels: u64,
    /// EMA state, `f64[2]`.
    pub state: u64,
    /// The step record ([`AdafaceStepRecord`]).
    pub record: u64,
    /// The `f32` workspace of [`StepPlan::workspace`].
    pub workspace: u64,
    /// `dX`, `B x D` f32 (training steps).
    pub dx: u64,
    /// `dW`, `C x D` f32 (training steps).
    pub dw: u64,
}

fn div_ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

impl StepPlan {
    /// Plans a step of inputs of `dtype`; checks that the shape is non-empty
    /// and that every count fits the kernels' index types (64-bit offsets,
    /// 32-bit grids).
    pub fn new(shape: Shape, pass: Pass, dtype: Dtype, limits: PlanLimits) -> Result<Self> {
        shape.check_nonempty()?;
        shape.features_len()?;
        shape.weight_len()?;
        let Shape {
            batch: b,
            dim: d,
            classes: c,
        } = shape;
        if i64::try_from(shape.weight_len()?).is_err()
            || i64::try_from(shape.features_len()?).is_err()
        {
            return Err(Error::TooLarge { what: "C * D" });
        }
        let variant = Variant::choose(dtype, &shape, &limits);
        let wgmma = variant == Variant::Flash && flash_wgmma(dtype, d, &limits);
        debug_assert_eq!(ADAFACE_TILE_CLASSES, ADAFACE_FLASH_CLASSES);
        let tiles = div_ceil(c, ADAFACE_TILE_CLASSES as usize);
        let dx_cap = (limits.dx_budget_bytes / b.saturating_mul(d).saturating_mul(4).max(1)).max(1);
        let training = pass == Pass::ForwardBackward;
        let (row_tiles, forward_splits, backward_splits, dx_splits) = match variant {
            Variant::Tiled => {
                let row_tiles = div_ceil(b, ADAFACE_TILE_ROWS as usize);
                let sf = tiles
                    .min(div_ceil(limits.target_blocks.max(1), row_tiles))
                    .max(1);
                let sb = if training {
                    tiles.min(dx_cap).min(limits.max_backward_splits.max(1))
                } else {
                    0
                };
                (row_tiles, sf, sb, sb)
            }
            Variant::Flash => {
                let row_tiles = div_ceil(b, ADAFACE_FLASH_ROWS as usize);
                let mut sf = tiles.min((limits.flash_blocks / row_tiles).max(1));
                if training {
                    sf = sf.min(dx_cap);
                }
                (row_tiles, sf, 0, if training { sf } else { 0 })
            }
        };
        let too_large = Error::TooLarge { what: "workspace" };
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<usize> {
            let start = at;
            at = at.checked_add(n).ok_or(too_large.clone())?;
            Ok(start)
        };
        let workspace = WorkspaceLayout {
            row_norm: take(b)?,
            row_a: take(b)?,
            row_b: take(b)?,
            row_z: take(b)?,
            target_logit: take(b)?,
            target_cos: take(b)?,
            target_dlogit: take(b)?,
            lse: take(b)?,
            sample_loss: take(b)?,
            class_norm: take(c)?,
            partial_max: take(forward_splits * b)?,
            partial_sum: take(forward_splits * b)?,
            dx_partial: take(
                dx_splits
                    .checked_mul(b)
                    .and_then(|v| v.checked_mul(d))
                    .ok_or(too_large.clone())?,
            )?,
            len: 0,
        };
        let workspace = WorkspaceLayout {
            len: at,
            ..workspace
        };
        let (forward, backward) = match variant {
            Variant::Tiled => (
                LaunchDims::new(forward_splits, row_tiles)?,
                LaunchDims::new(backward_splits.max(1), 1)?,
            ),
            Variant::Flash => {
                let smem = u32::try_from(flash_shared_bytes(d, wgmma))
                    .map_err(|_| Error::TooLarge { what: "dim" })?;
                let with_smem = |dims: LaunchDims| LaunchDims {
                    shared_bytes: smem,
                    ..dims
                };
                (
                    with_smem(LaunchDims::new(row_tiles, forward_splits).map_err(|_| {
                        Error::TooLarge {
                            what: "grid y (splits)",
                        }
                    })?),
                    with_smem(LaunchDims::new(tiles, 1)?),
                )
            }
        };
        Ok(StepPlan {
            shape,
            pass,
            variant,
            split_gradients: limits.split_gradients,
            wgmma,
            class_tiles: tiles,
            forward_splits,
            backward_splits,
            dx_splits,
            stats: LaunchDims::new(1, 1)?,
            forward,
            combine: LaunchDims::new(1, 1)?,
            backward,
            dx_finish: LaunchDims::new(b, 1)?,
            workspace,
        })
    }

    /// Bytes of the `f32` workspace.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.len * 4
    }

    fn ws(&self, buf: &StepBuffers, offset: usize) -> u64 {
        buf.workspace + 4 * offset as u64
    }

    /// Parameters of the stats kernel.
    pub fn stats_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceStatsParams {
        let KernelMargin { a0, a1, b0, b1, .. } = kernel_margin(&cfg.margin());
        let l = &self.workspace;
        AdafaceStatsParams {
            x: buf.x,
            labels: buf.labels,
            state: buf.state,
            record: buf.record,
            row_norm: self.ws(buf, l.row_norm),
            row_a: self.ws(buf, l.row_a),
            row_b: self.ws(buf, l.row_b),
            row_z: self.ws(buf, l.row_z),
            batch: self.shape.batch as i64,
            dim: self.shape.dim as i64,
            classes: self.shape.classes as i64,
            t_alpha: cfg.t_alpha(),
            eps: cfg.eps(),
            clip_min: cfg.norm_clip_min(),
            clip_max: cfg.norm_clip_max(),
            h: cfg.h(),
            a0,
            a1,
            b0,
            b1,
        }
    }

    fn tile_params(
        &self,
        cfg: &AdaFaceConfig,
        buf: &StepBuffers,
        splits: usize,
    ) -> AdafaceTileParams {
        let l = &self.workspace;
        AdafaceTileParams {
            x: buf.x,
            w: buf.w,
            labels: buf.labels,
            record: buf.record,
            row_norm: self.ws(buf, l.row_norm),
            row_a: self.ws(buf, l.row_a),
            row_b: self.ws(buf, l.row_b),
            class_norm: self.ws(buf, l.class_norm),
            partial_max: self.ws(buf, l.partial_max),
            partial_sum: self.ws(buf, l.partial_sum),
            target_logit: self.ws(buf, l.target_logit),
            target_cos: self.ws(buf, l.target_cos),
            lse: self.ws(buf, l.lse),
            dx_partial: self.ws(buf, l.dx_partial),
            dw: buf.dw,
            target_dlogit: self.ws(buf, l.target_dlogit),
            dx: buf.dx,
            batch: self.shape.batch as i64,
            dim: self.shape.dim as i64,
            classes: self.shape.classes as i64,
            splits: splits as i64,
            class_offset: 0,
            s: cfg.s() as f32,
            eps: cfg.eps() as f32,
            m1: kernel_margin(&cfg.margin()).m1 as f32,
            inv_batch: (1.0 / self.shape.batch as f64) as f32,
        }
    }

    /// Parameters of the forward tile kernel.
    pub fn forward_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceTileParams {
        self.tile_params(cfg, buf, self.forward_splits)
    }

    /// Parameters of the backward tile kernel.
    pub fn backward_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceTileParams {
        match self.variant {
            Variant::Tiled => self.tile_params(cfg, buf, self.backward_splits),
            // flash_dw walks every row tile of its class tile; flash_dx_finish
            // reads the forward's partials.
            Variant::Flash => self.tile_params(cfg, buf, self.forward_splits),
        }
    }

    /// Parameters of the combine kernel; `commit_state` stores the updated
    /// EMA state (when no error was recorded).
    pub fn combine_params(&self, buf: &StepBuffers, commit_state: bool) -> AdafaceCombineParams {
        let l = &self.workspace;
        AdafaceCombineParams {
            record: buf.record,
            state: buf.state,
            partial_max: self.ws(buf, l.partial_max),
            partial_sum: self.ws(buf, l.partial_sum),
            target_logit: self.ws(buf, l.target_logit),
            lse: self.ws(buf, l.lse),
            sample_loss: self.ws(buf, l.sample_loss),
            batch: self.shape.batch as i64,
            splits: self.forward_splits as i64,
            commit_state: commit_state as u32,
            pad0: 0,
        }
    }

    /// Parameters of the dx_finish kernel.
    pub fn dx_params(&self, buf: &StepBuffers) -> AdafaceDxParams {
        let l = &self.workspace;
        AdafaceDxParams {
            x: buf.x,
            record: buf.record,
            row_norm: self.ws(buf, l.row_norm),
            dx_partial: self.ws(buf, l.dx_partial),
            dx: buf.dx,
            batch: self.shape.batch as i64,
            dim: self.shape.dim as i64,
            splits: self.backward_splits as i64,
        }
    }
}

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

/// The entry points of one (element, label) specialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNames {
    /// Norm statistics.
    pub stats: String,
    /// Forward tiles.
    pub forward: String,
    /// Combine (untyped).
    pub combine: String,
    /// Backward tiles.
    pub backward: String,
    /// dX finish.
    pub dx_finish: String,
}

impl KernelNames {
    /// Names of the tiled family for element `E` and label `L`.
    pub fn of<E: KernelElement, L: KernelLabel>() -> Self {
        Self::for_suffixes(E::SUFFIX, L::SUFFIX)
    }

    /// Names of the kernels `plan` launches for element `E` and label `L`.
    pub fn for_plan<E: KernelElement, L: KernelLabel>(plan: &StepPlan) -> Self {
        match plan.variant {
            Variant::Tiled => Self::of::<E, L>(),
            Variant::Flash => Self::flash(
                E::SUFFIX,
                L::SUFFIX,
                plan.pass,
                plan.split_gradients,
                plan.wgmma,
            ),
        }
    }

    /// Names of the tiled family for the given suffixes.
    pub fn for_suffixes(e: &str, l: &str) -> Self {
        KernelNames {
            stats: format!("adaface_stats_{e}_{l}"),
            forward: format!("adaface_forward_{e}_{l}"),
            combine: "adaface_combine".to_string(),
            backward: format!("adaface_backward_{e}_{l}"),
            dx_finish: format!("adaface_dx_finish_{e}"),
        }
    }

    /// Names of the flash family (`e` is "bf16"); the forward accumulates
    /// `gx` only for training steps; `split` picks the hi + lo gradient
    /// products (else the `_single` entries), `wgmma` the sm_90a tile
    /// kernels (the `_wg` entries).
    pub fn flash(e: &str, l: &str, pass: Pass, split: bool, wgmma: bool) -> Self {
        let single = if split { "" } else { "_single" };
        let wg = if wgmma { "_wg" } else { "" };
        let forward = match pass {
            Pass::Forward => format!("adaface_flash{wg}_forward_{e}_{l}"),
            Pass::ForwardBackward => format!("adaface_flash{wg}_forward_dx{single}_{e}_{l}"),
        };
        KernelNames {
            stats: format!("adaface_stats_{e}_{l}"),
            forward,
            combine: "adaface_combine".to_string(),
            backward: format!("adaface_flash{wg}_dw{single}_{e}_{l}"),
            dx_finish: format!("adaface_flash_dx_finish_{e}_{l}"),
        }
    }

    /// The row-statistics kernel of a class-sharded step for label type
    /// suffix `l` ([`crate::shard`]).
    pub fn shard_rows(l: &str) -> String {
        format!("adaface_shard_rows_{l}")
    }

    /// Every entry point in the kernel source, for compile checks.
    pub fn all() -> Vec<String> {
        let mut out = vec!["adaface_combine".to_string()];
        out.extend(["i32", "i64"].map(Self::shard_rows));
        for e in [Dtype::F32, Dtype::BF16, Dtype::F16] {
            out.push(format!("adaface_dx_finish_{}", e.name()));
            for l in ["i32", "i64"] {
                let n = Self::for_suffixes(e.name(), l);
                out.extend([n.stats, n.forward, n.backward]);
            }
        }
        for l in ["i32", "i64"] {
            for (e, wgmma) in [("bf16", false), ("bf16", true), ("f16", false)] {
                let t = Self::flash(e, l, Pass::ForwardBackward, true, wgmma);
                let s = Self::flash(e, l, Pass::ForwardBackward, false, wgmma);
                let f = Self::flash(e, l, Pass::Forward, true, wgmma);
                out.extend([f.forward, t.forward, t.backward, s.forward, s.backward]);
                if !wgmma {
                    out.push(t.dx_finish);
                }
            }
        }
        out
    }
}

/// Host-side checks of one call before anything is launched: shape,
/// buffer lengths and output lengths. Labels, non-finite values and zero
/// norms are checked on the device.
pub fn check_call(
    shape: &Shape,
    x_len: usize,
    w_len: usize,
    labels_len: usize,
    outputs: Option<(usize, usize)>,
) -> Result<()> {
    crate::shape::check_sizes(shape, x_len, w_len, labels_len, outputs)
}

/// Turns a step record into `Ok` or the typed error the host-side checks
/// would have reported for the same inputs.
pub fn check_record(rec: &AdafaceStepRecord, shape: &Shape) -> Result<()> {
    if rec.error_key == NO_ERROR {
        return Ok(());
    }
    let kind = (rec.error_key >> 56) as u32;
    let detail = (rec.error_key & ((1u64 << 56) - 1)) as usize;
    Err(match kind {
        ADAFACE_ERR_LABEL => Error::LabelOutOfRange {
            row: detail,
            label: rec.error_value,
            classes: shape.classes,
        },
        ADAFACE_ERR_NONFINITE_X => Error::NonFinite {
            tensor: Tensor::Features,
            index: detail,
        },
        ADAFACE_ERR_NONFINITE_W => Error::NonFinite {
            tensor: Tensor::Weight,
            index: detail,
        },
        ADAFACE_ERR_ROWNORM_X | ADAFACE_ERR_ROWNORM_W => {
            let tensor = if kind == ADAFACE_ERR_ROWNORM_X {
                Tensor::Features
            } else {
                Tensor::Weight
            };
            let row = detail >> 1;
            if detail & 1 == 0 {
                Error::ZeroNorm { tensor, row }
            } else {
                Error::NormOverflow { tensor, row }
            }
        }
        ADAFACE_ERR_SHARD => Error::InvalidShard {
            reason: format!("the label of row {detail} is held by no shard or by several"),
        },
        _ => Error::Backend {
            message: format!("unknown device error key {:#x}", rec.error_key),
        },
    })
}

/// Results of a step the host reads from the record: loss, batch
/// statistics, and the EMA state the step led to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSummary {
    /// Mean loss.
    pub loss: f64,
    /// Mean of this batch's clipped norms.
    pub norm_mean: f64,
    /// Unbiased std of this batch's clipped norms; `None` when `B = 1`.
    pub norm_std: Option<f64>,
    /// EMA state after this step (stored only if the call asked for it).
    pub state_after: EmaState,
}

impl StepSummary {
    /// Reads a record, failing with its error if it holds one.
    pub fn from_record(rec: &AdafaceStepRecord, shape: &Shape) -> Result<Self> {
        check_record(rec, shape)?;
        Ok(StepSummary {
            loss: rec.loss,
            norm_mean: rec.norm_mean,
            norm_std: (rec.norm_std >= 0.0).then_some(rec.norm_std),
            // The kernels compute the affine policies only, which never
            // move CurricularFace's t: the loss objects fill in theirs.
            state_after: EmaState::new(rec.state_mean, rec.state_std),
        })
    }
}

/// The margin as the kernels take it: per-row offsets affine in the margin
/// scaler, `a_i = a0 + a1 z_i` and `b_i = b0 + b1 z_i`, and the angle factor
/// `m1` of `adaface_target_logit` (`kernels/adaface_math.cuh`). SphereFace
/// travels in the same fields: `m1 = -m` (a negative factor selects it) and
/// `b_i = lambda`. CurricularFace and MagFace have no kernel form (the
/// kernel backends reject them before planning); they get the affine
/// formula's neutral values here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KernelMargin {
    pub a0: f64,
    pub a1: f64,
    pub b0: f64,
    pub b1: f64,
    pub m1: f64,
}

/// See [`KernelMargin`].
pub(crate) fn kernel_margin(policy: &MarginPolicy) -> KernelMargin {
    if let MarginPolicy::SphereFace { m, lambda } = *policy {
        return KernelMargin {
            a0: 0.0,
            a1: 0.0,
            b0: lambda,
            b1: 0.0,
            m1: -(m as f64),
        };
    }
    let (a0, b0) = policy.row_offsets(0.0);
    let (a1, b1) = policy.row_offsets(1.0);
    KernelMargin {
        a0,
        a1: a1 - a0,
        b0,
        b1: b1 - b0,
        m1: policy.angle_scale(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_follows_the_documented_formula() {
        for &(b, d, c) in &[
            (1, 16, 50),
            (33, 96, 300),
            (512, 512, 1_000_000),
            (129, 512, 77),
        ] {
            let shape = Shape::new(b, d, c);
            let plan = StepPlan::new(
                shape,
                Pass::ForwardBackward,
                Dtype::F32,
                PlanLimits::default(),
            )
            .unwrap();
            assert_eq!(plan.variant, Variant::Tiled);
            let (sf, sb) = (plan.forward_splits, plan.backward_splits);
            assert_eq!(plan.workspace.len, 9 * b + c + 2 * sf * b + sb * b * d);
            assert!(sf >= 1 && sf <= plan.class_tiles && sb >= 1 && sb <= plan.class_tiles);
            assert!(sb * b * d * 4 <= (48 << 20) || sb == 1);
            assert_eq!(plan.forward.grid, (sf as u32, b.div_ceil(32) as u32, 1));
            let fwd =
                StepPlan::new(shape, Pass::Forward, Dtype::F32, PlanLimits::default()).unwrap();
            assert_eq!(fwd.workspace.len, 9 * b + c + 2 * sf * b);

            // bf16 at depths that are multiples of 32 (<= 512) takes the
            // flash family.
            if d % 32 != 0 {
                continue;
            }
            let flash = StepPlan::new(
                shape,
                Pass::ForwardBackward,
                Dtype::BF16,
                PlanLimits::default(),
            )
            .unwrap();
            assert_eq!(flash.variant, Variant::Flash);
            let sf = flash.forward_splits;
            assert_eq!(flash.dx_splits, sf);
            assert_eq!(flash.workspace.len, 9 * b + c + 2 * sf * b + sf * b * d);
            assert!(sf * b.div_ceil(64) <= 132 || sf == 1);
            assert_eq!(flash.forward.grid, (b.div_ceil(64) as u32, sf as u32, 1));
            assert_eq!(flash.backward.grid, (c.div_ceil(64) as u32, 1, 1));
            assert_eq!(
                flash.forward.shared_bytes as usize,
                flash_shared_bytes(d, false)
            );
            assert!(flash_shared_bytes(d, false) <= 227 << 10);
            assert!(!flash.wgmma);

            // With wgmma allowed, depths that are multiples of 128 take it:
            // same grids and workspace, the swizzled tiles' shared memory.
            let limits = PlanLimits {
                wgmma: true,
                ..PlanLimits::default()
            };
            let wg = StepPlan::new(shape, Pass::ForwardBackward, Dtype::BF16, limits).unwrap();
            assert_eq!(wg.wgmma, d % 128 == 0);
            assert_eq!(wg.workspace, flash.workspace);
            assert_eq!(wg.forward.grid, flash.forward.grid);
            assert_eq!(wg.backward.grid, flash.backward.grid);
            assert_eq!(
                wg.forward.shared_bytes as usize,
                flash_shared_bytes(d, wg.wgmma)
            );
            assert!(flash_shared_bytes(d, true) <= 227 << 10);

            // f16 takes the flash family too, never the (bf16) wgmma kernels.
            let h = StepPlan::new(shape, Pass::ForwardBackward, Dtype::F16, limits).unwrap();
            assert!(h.variant == Variant::Flash && !h.wgmma);
            assert_eq!(h.workspace, flash.workspace);
        }
        // Not multiples of 32, or deeper than 512: the tiled family.
        for d in [40, 544] {
            let p = StepPlan::new(
                Shape::new(8, d, 10),
                Pass::Forward,
                Dtype::BF16,
                PlanLimits::default(),
            )
            .unwrap();
            assert_eq!(p.variant, Variant::Tiled);
        }
        // The training shape of the target GPU: under 64 MB for every
        // dtype, far below one B x C matrix (2 GB).
        for dtype in [Dtype::F32, Dtype::BF16] {
            let big = StepPlan::new(
                Shape::new(512, 512, 1_000_000),
                Pass::ForwardBackward,
                dtype,
                PlanLimits::default(),
            )
            .unwrap();
            assert!(
                big.workspace_bytes() < 64_000_000,
                "{dtype:?}: {}",
                big.workspace_bytes()
            );
        }
    }

    #[test]
    fn shapes_the_grid_cannot_hold_are_rejected() {
        let huge_batch = Shape::new(65_536 * 32 + 1, 4, 4);
        assert!(matches!(
            StepPlan::new(huge_batch, Pass::Forward, Dtype::F32, PlanLimits::default()),
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(
            StepPlan::new(
                Shape::new(0, 4, 4),
                Pass::Forward,
                Dtype::F32,
                PlanLimits::default()
            )
            .unwrap_err(),
            Error::EmptyBatch
        );
    }

    #[test]
    fn error_records_decode_to_typed_errors() {
        let shape = Shape::new(8, 4, 10);
        let rec = |kind: u32, detail: u64, value: i64| AdafaceStepRecord {
            error_key: ((kind as u64) << 56) | detail,
            error_value: value,
            ..Default::default()
        };
        assert_eq!(
            check_record(&rec(ADAFACE_ERR_LABEL, 3, -2), &shape),
            Err(Error::LabelOutOfRange {
                row: 3,
                label: -2,
                classes: 10
            })
        );
        assert_eq!(
            check_record(&rec(ADAFACE_ERR_NONFINITE_W, 39, 0), &shape),
            Err(Error::NonFinite {
                tensor: Tensor::Weight,
                index: 39
            })
        );
        assert_eq!(
            check_record(&rec(ADAFACE_ERR_ROWNORM_X, 5 << 1, 0), &shape),
            Err(Error::ZeroNorm {
                tensor: Tensor::Features,
                row: 5
            })
        );
        assert_eq!(
            check_record(&rec(ADAFACE_ERR_ROWNORM_W, (7 << 1) | 1, 0), &shape),
            Err(Error::NormOverflow {
                tensor: Tensor::Weight,
                row: 7
            })
        );
        let ok = AdafaceStepRecord {
            error_key: NO_ERROR,
            norm_std: -1.0,
            ..Default::default()
        };
        assert_eq!(
            StepSummary::from_record(&ok, &shape).unwrap().norm_std,
            None
        );
    }

    #[test]
    fn every_kernel_name_is_listed_once() {
        let all = KernelNames::all();
        assert_eq!(all.len(), 1 + 2 + 3 * (1 + 2 * 3) + 2 * (6 + 5 + 6));
        let n = KernelNames::of::<half::bf16, i32>();
        let f = KernelNames::flash("bf16", "i64", Pass::ForwardBackward, true, false);
        let g = KernelNames::flash("bf16", "i32", Pass::ForwardBackward, false, false);
        let h = KernelNames::flash("bf16", "i32", Pass::ForwardBackward, false, true);
        let k = KernelNames::flash("bf16", "i64", Pass::Forward, true, true);
        for name in [
            &n.stats,
            &n.forward,
            &n.combine,
            &n.backward,
            &n.dx_finish,
            &f.forward,
            &f.backward,
            &f.dx_finish,
            &g.forward,
            &g.backward,
            &h.forward,
            &h.backward,
            &k.forward,
        ] {
            assert_eq!(all.iter().filter(|a| *a == name).count(), 1, "{name}");
        }
    }
}
