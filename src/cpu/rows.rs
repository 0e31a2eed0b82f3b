//! Per-row work done once per step, before the class loop: feature norms
//! and normalised features, the EMA update, the margin scaler and each
//! row's target logit (one dot product per row, so the tile epilogues only
//! patch it in).

use rayon::prelude::*;

use super::input::{dot, sum_squares, CpuElement};
use crate::config::AdaFaceConfig;
use crate::config::MarginPolicy;
use crate::math::{batch_scalers, clamp_cosine, row_target, MarginConsts};
use crate::state::{BatchStats, EmaState};

/// Everything per row that the passes and the diagnostics need.
#[derive(Debug)]
pub(crate) struct Rows {
    /// `x_i / ||x_i||`, `B x D` row-major `f32`.
    pub x_hat: Vec<f32>,
    /// `||x_i||`.
    pub norms: Vec<f32>,
    /// Margin scaler `z_i`.
    pub scaler: Vec<f32>,
    /// Labels as indices.
    pub labels: Vec<usize>,
    /// Clamped target cosine.
    pub target_cosine: Vec<f32>,
    /// Target logit, margin applied.
    pub target_logit: Vec<f32>,
    /// `d target_logit / d c`, times the clamp gate.
    pub target_dlogit: Vec<f32>,
    /// Batch statistics and the EMA state after them.
    pub stats: BatchStats<f32>,
    /// CurricularFace: each row's hard-negative threshold (empty otherwise).
    pub threshold: Vec<f32>,
    /// CurricularFace: this step's `t` (after its update).
    pub curricular_t: Option<f32>,
    /// MagFace: `d target_logit / d ||x_i||`, `d reg_i / d ||x_i||` and the
    /// regulariser `reg_i` of each row (empty otherwise).
    pub dtarget_dnorm: Vec<f32>,
    /// See `dtarget_dnorm`.
    pub dreg_dnorm: Vec<f32>,
    /// See `dtarget_dnorm`.
    pub reg: Vec<f32>,
}

/// `||w||` of one class row, widened; the same function the tiles use, so
/// the target's norm is bit-identical to the tile's.
pub(crate) fn class_norm(w: &[f32]) -> f32 {
    sum_squares(w).sqrt()
}

/// Computes [`Rows`]. Inputs are already validated.
pub(crate) fn prepare<E: CpuElement>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    dim: usize,
    features: &[E],
    weight: &[E],
    labels: Vec<usize>,
) -> Rows {
    let k = MarginConsts::<f32>::new(cfg);
    let batch = labels.len();
    let mut x_hat = vec![0.0f32; batch * dim];
    let mut norms = vec![0.0f32; batch];
    x_hat
        .par_chunks_mut(dim)
        .zip(features.par_chunks(dim))
        .zip(norms.par_iter_mut())
        .for_each(|((out, x), n)| {
            E::widen(x, out);
            *n = sum_squares(out).sqrt();
            let inv = 1.0 / *n;
            out.iter_mut().for_each(|v| *v *= inv);
        });

    let (mut stats, scaler) = batch_scalers(&norms, state, cfg, &k);

    let policy = cfg.margin();
    let mut target_cosine = vec![0.0f32; batch];
    let mut target_logit_v = vec![0.0f32; batch];
    let mut target_dlogit = vec![0.0f32; batch];
    let curricular = matches!(policy, MarginPolicy::CurricularFace { .. });
    let magface = matches!(policy, MarginPolicy::MagFace { .. });
    let per_row = |on: bool| vec![0.0f32; if on { batch } else { 0 }];
    let mut threshold = per_row(curricular);
    let (mut dtarget_dnorm, mut dreg_dnorm, mut reg) =
        (per_row(magface), per_row(magface), per_row(magface));
    let mut w_row = vec![0.0f32; dim];
    for i in 0..batch {
        let y = labels[i];
        E::widen(&weight[y * dim..(y + 1) * dim], &mut w_row);
        let raw = dot(&x_hat[i * dim..(i + 1) * dim], &w_row) * (1.0 / class_norm(&w_row));
        let (c, passes) = clamp_cosine(raw, k.eps);
        let t = row_target(&policy, c, scaler[i], norms[i], &k);
        target_cosine[i] = c;
        target_logit_v[i] = t.logit;
        target_dlogit[i] = if passes { t.dlogit } else { 0.0 };
        if curricular {
            threshold[i] = t.threshold;
        }
        if magface {
            dtarget_dnorm[i] = t.dlogit_dnorm;
            dreg_dnorm[i] = t.dreg_dnorm;
            reg[i] = t.reg;
        }
    }
    // CurricularFace: t moves towards this batch's mean target cosine
    // before the negatives use it.
    let curricular_t = curricular.then(|| {
        let t =
            crate::state::curricular_t_update(state.curricular_t, &target_cosine, cfg.t_alpha());
        stats.state_after.curricular_t = t as f64;
        t
    });
    Rows {
        x_hat,
        norms,
        scaler,
        labels,
        target_cosine,
        target_logit: target_logit_v,
        target_dlogit,
        stats,
        threshold,
        curricular_t,
        dtarget_dnorm,
        dreg_dnorm,
        reg,
    }
}
