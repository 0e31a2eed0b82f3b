//! The plan of one step: which kernel family runs it, grids, blocks,
//! dynamic shared memory and the workspace layout.

use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::kernel_params::{
    ADAFACE_FLASH_CLASSES, ADAFACE_FLASH_MAX_DIM, ADAFACE_FLASH_ROWS, ADAFACE_FLASH_ROW_PAD,
    ADAFACE_THREADS, ADAFACE_TILE_CLASSES, ADAFACE_TILE_ROWS,
};
use crate::shape::Shape;

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
/// kernels/flash/layout.cuh).
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
    /// products for bf16 and f16 on sm_80+): kernels/tiled_forward.cu and
    /// kernels/tiled_backward.cu.
    Tiled,
    /// bf16 or f16 with `D % 32 == 0` and `D <= 512`: 64 x 64 tensor-core tiles,
    /// cp.async staging, `dX` accumulated in the forward
    /// (kernels/flash/).
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
    /// Flash forward blocks to aim for, and the most flash dW blocks (a
    /// persistent grid): one per SM (each takes up to 215 KiB of shared
    /// memory and over 200 registers a thread, so one block fits an SM).
    pub flash_blocks: usize,
    /// Dynamic shared memory a block may opt into: a depth whose flash
    /// tiles ([`flash_shared_bytes`]) do not fit takes the tiled family.
    pub flash_max_shared: usize,
    /// Flash gradient products with the softmax gradient (`P`, `A`) split
    /// into 16-bit hi + lo, the exact mode (`true`: dX and dW within ~3e-6
    /// of the f64 reference), or rounded once to 16 bits as FlashAttention
    /// and Cut Cross-Entropy do (`false`, the default: half the gradient
    /// tensor-core work; bf16 ~1e-3 and f16 ~3e-4 relative error on dX and
    /// dW, while the logits, the softmax and the target term stay f32). The
    /// loss and the EMA state are the same in both modes.
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
            split_gradients: false,
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
    /// CurricularFace's hard-negative thresholds (`+inf` for the other
    /// policies), `B`.
    pub row_thr: usize,
    /// MagFace's `[dm/d||x|| | lambda_g g | lambda_g dg/d||x||]`, `3 B`.
    pub row_mag: usize,
    /// MagFace's `dL/d||x_i||` from the combine for dx_finish, `B`.
    pub row_radial: usize,
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
    /// The stats launch: [`stats_blocks`] blocks.
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
    /// CurricularFace's `t`, one `f64` (read by the stats kernel, stored by
    /// the combine's commit), or 0 where the caller keeps none (then the
    /// policy must not be CurricularFace).
    pub curricular_t: u64,
    /// The step record ([`AdafaceStepRecord`](crate::kernel_params::AdafaceStepRecord)).
    pub record: u64,
    /// The `f32` workspace of [`StepPlan::workspace`].
    pub workspace: u64,
    /// `dX`, `B x D` f32 (training steps).
    pub dx: u64,
    /// `dW`, `C x D` f32 (training steps).
    pub dw: u64,
}

/// Most blocks of the stats kernel; larger batches are grid-strided.
pub const MAX_STATS_BLOCKS: usize = 1024;

/// Blocks of the stats kernel for `batch` rows: one warp per row
/// (`ADAFACE_THREADS / 32` rows a block), at most [`MAX_STATS_BLOCKS`]. Any
/// count gives the same result (the last block to finish computes the
/// statistics from every row); more blocks only spread the norm reads.
pub fn stats_blocks(batch: usize) -> usize {
    div_ceil(batch, ADAFACE_THREADS as usize / 32).clamp(1, MAX_STATS_BLOCKS)
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
            row_thr: take(b)?,
            row_mag: take(3 * b)?,
            row_radial: take(b)?,
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
                    // flash_dw is persistent: at most one block per SM
                    // (its registers allow no more), each looping over
                    // class tiles.
                    with_smem(LaunchDims::new(tiles.min(limits.flash_blocks.max(1)), 1)?),
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
            stats: LaunchDims::new(stats_blocks(b), 1)?,
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
            assert_eq!(plan.workspace.len, 14 * b + c + 2 * sf * b + sb * b * d);
            assert!(sf >= 1 && sf <= plan.class_tiles && sb >= 1 && sb <= plan.class_tiles);
            assert!(sb * b * d * 4 <= (48 << 20) || sb == 1);
            assert_eq!(plan.forward.grid, (sf as u32, b.div_ceil(32) as u32, 1));
            let fwd =
                StepPlan::new(shape, Pass::Forward, Dtype::F32, PlanLimits::default()).unwrap();
            assert_eq!(fwd.workspace.len, 14 * b + c + 2 * sf * b);

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
            assert_eq!(flash.workspace.len, 14 * b + c + 2 * sf * b + sf * b * d);
            assert!(sf * b.div_ceil(64) <= 132 || sf == 1);
            assert_eq!(flash.forward.grid, (b.div_ceil(64) as u32, sf as u32, 1));
            // flash_dw is persistent: one block per SM at most.
            assert_eq!(flash.backward.grid, (c.div_ceil(64).min(132) as u32, 1, 1));
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
}
