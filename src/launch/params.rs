//! The parameter structs of the step kernels, filled from a plan, the
//! config and the step's buffer addresses.

use super::{StepBuffers, StepPlan, Variant};
use crate::config::{AdaFaceConfig, AffineMargin};
use crate::kernel_params::{
    AdafaceCombineParams, AdafaceDxParams, AdafaceStatsParams, AdafaceTileParams,
};
use crate::shape::Shape;

impl StepPlan {
    fn ws(&self, buf: &StepBuffers, offset: usize) -> u64 {
        buf.workspace + 4 * offset as u64
    }

    /// Parameters of the stats kernel.
    pub fn stats_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceStatsParams {
        let l = &self.workspace;
        stats_params(
            cfg,
            self.shape,
            StatsBuffers {
                x: buf.x,
                labels: buf.labels,
                state: buf.state,
                record: buf.record,
                row_norm: self.ws(buf, l.row_norm),
                row_a: self.ws(buf, l.row_a),
                row_b: self.ws(buf, l.row_b),
                row_z: self.ws(buf, l.row_z),
            },
        )
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
            m1: kernel_margin(cfg).m1 as f32,
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

/// The addresses the stats kernel reads and writes: the inputs, the EMA
/// state, the step record and four per-row `f32` arrays of `B` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StatsBuffers {
    pub x: u64,
    pub labels: u64,
    pub state: u64,
    pub record: u64,
    pub row_norm: u64,
    pub row_a: u64,
    pub row_b: u64,
    pub row_z: u64,
}

/// Parameters of the stats kernel for a step of `shape` at `buf`: the one
/// filling shared by the fused step, the class-sharded step and the naive
/// and chunked pipelines (which run the same kernel).
pub(crate) fn stats_params(
    cfg: &AdaFaceConfig,
    shape: Shape,
    buf: StatsBuffers,
) -> AdafaceStatsParams {
    let AffineMargin { a0, a1, b0, b1, .. } = kernel_margin(cfg);
    AdafaceStatsParams {
        x: buf.x,
        labels: buf.labels,
        state: buf.state,
        record: buf.record,
        row_norm: buf.row_norm,
        row_a: buf.row_a,
        row_b: buf.row_b,
        row_z: buf.row_z,
        batch: shape.batch as i64,
        dim: shape.dim as i64,
        classes: shape.classes as i64,
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

/// The config's margin as the kernels take it
/// ([`MarginPolicy::affine_in_z`](crate::MarginPolicy::affine_in_z)). The
/// backends reject policies without that form before they plan; parameters
/// filled for one anyway carry the neutral margin (no offsets, angle
/// factor 1).
pub(crate) fn kernel_margin(cfg: &AdaFaceConfig) -> AffineMargin {
    cfg.margin().affine_in_z().unwrap_or(AffineMargin {
        a0: 0.0,
        a1: 0.0,
        b0: 0.0,
        b1: 0.0,
        m1: 1.0,
    })
}
