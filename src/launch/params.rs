//! The parameter structs of the step kernels, filled from a plan, the
//! config and the step's buffer addresses.

use super::{StepBuffers, StepPlan, Variant};
use crate::config::{AdaFaceConfig, AffineMargin, MarginPolicy};
use crate::kernel_params::{
    AdafaceCombineParams, AdafaceDxParams, AdafaceStatsParams, AdafaceTileParams,
    ADAFACE_MARGIN_AFFINE, ADAFACE_MARGIN_CURRICULAR, ADAFACE_MARGIN_MAGFACE,
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
                w: buf.w,
                curricular_t: buf.curricular_t,
                row_thr: self.ws(buf, l.row_thr),
                row_mag: self.ws(buf, l.row_mag),
            },
        )
    }

    /// MagFace's radial coefficients (the combine writes them, dx_finish
    /// reads them), or 0: no other policy has a loss term in `||x||`.
    fn row_radial(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> u64 {
        match cfg.margin() {
            MarginPolicy::MagFace { .. } => self.ws(buf, self.workspace.row_radial),
            _ => 0,
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
            row_thr: self.ws(buf, l.row_thr),
            row_radial: self.row_radial(cfg, buf),
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
    pub fn combine_params(
        &self,
        cfg: &AdaFaceConfig,
        buf: &StepBuffers,
        commit_state: bool,
    ) -> AdafaceCombineParams {
        let l = &self.workspace;
        let radial = self.row_radial(cfg, buf);
        AdafaceCombineParams {
            record: buf.record,
            state: buf.state,
            partial_max: self.ws(buf, l.partial_max),
            partial_sum: self.ws(buf, l.partial_sum),
            target_logit: self.ws(buf, l.target_logit),
            lse: self.ws(buf, l.lse),
            sample_loss: self.ws(buf, l.sample_loss),
            curricular_t: buf.curricular_t,
            target_cos: self.ws(buf, l.target_cos),
            row_a: self.ws(buf, l.row_a),
            row_mag: if radial != 0 {
                self.ws(buf, l.row_mag)
            } else {
                0
            },
            row_radial: radial,
            batch: self.shape.batch as i64,
            splits: self.forward_splits as i64,
            commit_state: commit_state as u32,
            pad0: 0,
            s: cfg.s() as f32,
            eps: cfg.eps() as f32,
        }
    }

    /// Parameters of the dx_finish kernel.
    pub fn dx_params(&self, cfg: &AdaFaceConfig, buf: &StepBuffers) -> AdafaceDxParams {
        let l = &self.workspace;
        AdafaceDxParams {
            x: buf.x,
            record: buf.record,
            row_norm: self.ws(buf, l.row_norm),
            dx_partial: self.ws(buf, l.dx_partial),
            dx: buf.dx,
            row_radial: self.row_radial(cfg, buf),
            batch: self.shape.batch as i64,
            dim: self.shape.dim as i64,
            splits: self.backward_splits as i64,
        }
    }
}

/// The addresses the stats kernel reads and writes: the inputs, the EMA
/// state, the step record and four per-row `f32` arrays of `B` values;
/// and, for the policies beyond the affine ones, `W`, CurricularFace's `t`
/// and the per-row threshold and MagFace arrays (0 where the caller runs
/// the affine policies only).
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
    pub w: u64,
    pub curricular_t: u64,
    pub row_thr: u64,
    pub row_mag: u64,
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
    let (kind, mag) = match cfg.margin() {
        MarginPolicy::CurricularFace { .. } => (ADAFACE_MARGIN_CURRICULAR, [0.0; 5]),
        MarginPolicy::MagFace {
            l_a,
            u_a,
            l_m,
            u_m,
            lambda_g,
        } => (ADAFACE_MARGIN_MAGFACE, [l_a, u_a, l_m, u_m, lambda_g]),
        _ => (ADAFACE_MARGIN_AFFINE, [0.0; 5]),
    };
    AdafaceStatsParams {
        x: buf.x,
        labels: buf.labels,
        state: buf.state,
        record: buf.record,
        row_norm: buf.row_norm,
        row_a: buf.row_a,
        row_b: buf.row_b,
        row_z: buf.row_z,
        w: buf.w,
        curricular_t: buf.curricular_t,
        row_thr: buf.row_thr,
        row_mag: buf.row_mag,
        batch: shape.batch as i64,
        dim: shape.dim as i64,
        classes: shape.classes as i64,
        kind: kind as i64,
        t_alpha: cfg.t_alpha(),
        eps: cfg.eps(),
        clip_min: cfg.norm_clip_min(),
        clip_max: cfg.norm_clip_max(),
        h: cfg.h(),
        a0,
        a1,
        b0,
        b1,
        mag_l_a: mag[0],
        mag_u_a: mag[1],
        mag_l_m: mag[2],
        mag_u_m: mag[3],
        mag_lambda_g: mag[4],
    }
}

/// The config's margin as the kernels take it: the affine form
/// ([`MarginPolicy::affine_in_z`]) where the policy has one; CurricularFace
/// as ArcFace with its margin (its negatives come from the stats kernel's
/// thresholds); MagFace's angle factor 1 with no fixed offsets (the stats
/// kernel writes its per-row margin).
pub(crate) fn kernel_margin(cfg: &AdaFaceConfig) -> AffineMargin {
    let neutral = AffineMargin {
        a0: 0.0,
        a1: 0.0,
        b0: 0.0,
        b1: 0.0,
        m1: 1.0,
    };
    match cfg.margin() {
        MarginPolicy::CurricularFace { m } => AffineMargin { a0: m, ..neutral },
        policy => policy.affine_in_z().unwrap_or(neutral),
    }
}
