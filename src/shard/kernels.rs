//! The class-sharded step on the kernels: the launch parameters shared by
//! the CUDA backend (`cuda::ShardedCudaAdaFace`) and the simulator
//! (`sim::ShardedSimAdaFace`), so that every simulated
//! sharded step exercises the arithmetic of the GPU launches.
//!
//! A shard runs the unsharded kernel pipeline over its `C_k` classes with
//! two differences, both parameters of the same kernels:
//!
//! * the tile kernels get [`ShardSpec::offset`] as `class_offset`: a row's
//!   target in this shard's weight is `label - offset` when that lies in
//!   `0..C_k`, and the row has no target here otherwise (labels stay
//!   global, on the device, untouched);
//! * `stats` validates the labels against the global `C`.
//!
//! Phase 1 is `stats -> forward -> shard_rows(0)`: the last merges the
//! forward's class splits into the shard's running max and sum of
//! exponentials (as `combine` merges them, with no logarithm yet) and packs
//! the [`RowPartials`] layout into a `5 B` buffer: `[max | sumexp | target
//! logit | target cosine | owned]`. The EMA state is not committed.
//!
//! The reduction is in place on that buffer: all-reduce `MAX` of the first
//! `B` values, `shard_rows(1)` (`sumexp *= exp(lse_k - max)`), all-reduce
//! `SUM` of the other `4 B`, `shard_rows(2)` (a row whose label no shard
//! or several shards hold records [`crate::Error::InvalidShard`]).
//!
//! Phase 2 is `combine` again, on the reduced buffer as one split (`lse =
//! max + ln(sum)`, the loss over the global batch, and the EMA commit)
//! `-> backward -> dx_finish`, giving this shard's `dW` and its partial
//! `dX`.
//!
//! [`RowPartials`]: super::RowPartials

use crate::config::AdaFaceConfig;
use crate::element::Dtype;
use crate::error::{Error, Result};
use crate::kernel_params::{
    AdafaceCombineParams, AdafaceDxParams, AdafaceShardParams, AdafaceStatsParams,
    AdafaceTileParams,
};
use crate::launch::{
    KernelElement, KernelId, KernelLabel, KernelLaunch, LaunchDims, LaunchParams, Pass, PlanLimits,
    StepBuffers, StepPlan,
};
use crate::shape::Shape;

use super::ShardSpec;

/// Values per row of the row-statistics buffer (`5 B` floats).
pub const ROW_STATS: usize = 5;

/// What a `shard_rows` launch does (the `mode` of [`AdafaceShardParams`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsMode {
    /// End of phase 1: pack this shard's row statistics.
    Pack = 0,
    /// After the all-reduce `MAX` of the maxima: rescale the sums.
    Rescale = 1,
    /// After the all-reduce `SUM`: check that one shard owns each label.
    Check = 2,
}

/// The launch plan of one shard's step: the unsharded plan of a `(B, D,
/// C_k)` step and the shard's place in the global classes.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPlan {
    /// The plan of the shard's kernels (shape `(B, D, C_k)`).
    pub plan: StepPlan,
    /// The shard.
    pub spec: ShardSpec,
}

impl ShardPlan {
    /// The plan of a training step of `shape` (`(B, D, C_k)`, `C_k` the
    /// shard's classes) in `dtype`.
    pub fn new(spec: ShardSpec, shape: Shape, dtype: Dtype, limits: PlanLimits) -> Result<Self> {
        if shape.classes != spec.classes {
            return Err(Error::InvalidShard {
                reason: format!(
                    "shape has {} classes, the shard holds {}",
                    shape.classes, spec.classes
                ),
            });
        }
        let plan = StepPlan::new(shape, Pass::ForwardBackward, dtype, limits)?;
        Ok(ShardPlan { plan, spec })
    }

    /// Rows of the batch.
    pub fn batch(&self) -> usize {
        self.plan.shape.batch
    }

    /// Elements of the row-statistics buffer, `5 B`.
    pub fn rows_len(&self) -> usize {
        ROW_STATS * self.batch()
    }

    fn ws(&self, buf: &StepBuffers, offset: usize) -> u64 {
        buf.workspace + 4 * offset as u64
    }

    /// `stats`: labels checked against the global classes.
    pub fn stats_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceStatsParams {
        AdafaceStatsParams {
            classes: self.spec.total_classes as i64,
            ..self.plan.stats_params(cfg, buf)
        }
    }

    /// The forward tile kernel, over the shard's classes.
    pub fn forward_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceTileParams {
        AdafaceTileParams {
            class_offset: self.spec.offset as i64,
            ..self.plan.forward_params(cfg, buf)
        }
    }

    /// The backward tile kernel (and the flash `dx_finish`).
    pub fn backward_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceTileParams {
        AdafaceTileParams {
            class_offset: self.spec.offset as i64,
            ..self.plan.backward_params(cfg, buf)
        }
    }

    /// The tiled `dx_finish`.
    pub fn dx_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceDxParams {
        self.plan.dx_params(cfg, buf)
    }

    /// Phase 2's combine over the reduced row statistics at `rows`: one
    /// split, the global log-sum-exp and loss, and the EMA commit.
    pub fn global_combine_params(
        &self,
        cfg: &AdaFaceConfig,
        buf: &StepBuffers,
        rows: u64,
    ) -> AdafaceCombineParams {
        let b = self.batch() as u64;
        let l = &self.plan.workspace;
        AdafaceCombineParams {
            partial_max: rows,
            partial_sum: rows + 4 * b,
            target_logit: rows + 8 * b,
            splits: 1,
            commit_state: 1,
            lse: self.ws(buf, l.lse),
            sample_loss: self.ws(buf, l.sample_loss),
            ..self.plan.combine_params(cfg, buf, true)
        }
    }

    /// A `shard_rows` launch on the buffer at `rows`.
    pub fn rows_params(&self, buf: &StepBuffers, rows: u64, mode: RowsMode) -> AdafaceShardParams {
        let l = &self.plan.workspace;
        AdafaceShardParams {
            labels: buf.labels,
            record: buf.record,
            partial_max: self.ws(buf, l.partial_max),
            partial_sum: self.ws(buf, l.partial_sum),
            target_logit: self.ws(buf, l.target_logit),
            target_cos: self.ws(buf, l.target_cos),
            rows,
            batch: self.batch() as i64,
            splits: self.plan.forward_splits as i64,
            class_offset: self.spec.offset as i64,
            classes: self.spec.classes as i64,
            mode: mode as i64,
        }
    }

    /// The `shard_rows` launch: one block, like `combine`.
    pub fn rows_launch(&self) -> LaunchDims {
        self.plan.combine
    }

    /// Phase 1 of element `E` and label `L`: `stats`, the forward (with
    /// `gx` where the family accumulates it there) and `shard_rows(Pack)`
    /// into the buffer at `rows`.
    pub fn phase1_launches<E: KernelElement, L: KernelLabel>(
        &self,
        cfg: &AdaFaceConfig,
        buf: &StepBuffers,
        rows: u64,
    ) -> Result<Vec<KernelLaunch>> {
        let k = self.plan.kernels::<E, L>()?;
        Ok(vec![
            KernelLaunch {
                kernel: k.stats,
                dims: self.plan.stats,
                params: LaunchParams::Stats(self.stats_params(cfg, buf)),
            },
            KernelLaunch {
                kernel: k.forward,
                dims: self.plan.forward,
                params: LaunchParams::Tile(self.forward_params(cfg, buf)),
            },
            self.rows_kernel_launch(L::SUFFIX, buf, rows, RowsMode::Pack)?,
        ])
    }

    /// A `shard_rows` launch in `mode` for labels of suffix `label` on the
    /// buffer at `rows`.
    pub fn rows_kernel_launch(
        &self,
        label: &'static str,
        buf: &StepBuffers,
        rows: u64,
        mode: RowsMode,
    ) -> Result<KernelLaunch> {
        Ok(KernelLaunch {
            kernel: KernelId::find("adaface_shard_rows", &[label])?,
            dims: self.rows_launch(),
            params: LaunchParams::Shard(self.rows_params(buf, rows, mode)),
        })
    }

    /// Phase 2 of element `E` and label `L` on the reduced buffer at
    /// `rows`: the global `combine`, the backward and `dx_finish`.
    pub fn phase2_launches<E: KernelElement, L: KernelLabel>(
        &self,
        cfg: &AdaFaceConfig,
        buf: &StepBuffers,
        rows: u64,
    ) -> Result<Vec<KernelLaunch>> {
        let k = self.plan.kernels::<E, L>()?;
        let mut out = vec![KernelLaunch {
            kernel: k.combine,
            dims: self.plan.combine,
            params: LaunchParams::Combine(self.global_combine_params(cfg, buf, rows)),
        }];
        out.extend(
            self.plan
                .backward_launches(&k, self.backward_params(cfg, buf), cfg, buf),
        );
        Ok(out)
    }
}

/// `rows` (the `5 B` buffer) as [`super::RowPartials`].
pub fn partials_from_rows(rows: &[f32], b: usize) -> super::RowPartials<f32> {
    let part = |k: usize| rows[k * b..(k + 1) * b].to_vec();
    super::RowPartials {
        max: part(0),
        sumexp: part(1),
        target_logit: part(2),
        target_cosine: part(3),
        owned: part(4),
    }
}

/// [`super::GlobalRows`] as a reduced `5 B` buffer: `max = lse`, `sum = 1`,
/// every row owned once; phase 2's combine then gives back `lse` exactly.
pub fn rows_from_global(global: &super::GlobalRows<f32>) -> Vec<f32> {
    let b = global.rows();
    let mut rows = Vec::with_capacity(ROW_STATS * b);
    rows.extend_from_slice(&global.lse);
    rows.resize(rows.len() + b, 1.0f32);
    rows.extend_from_slice(&global.target_logit);
    rows.extend_from_slice(&global.target_cosine);
    rows.resize(rows.len() + b, 1.0f32);
    rows
}
