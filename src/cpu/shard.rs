//! The sharded step on the fast CPU backend: the same passes as the
//! unsharded step, run over this shard's classes, with labels outside the
//! shard simply not targets here (see [`crate::shard`] for the protocol).

use rayon::prelude::*;

use super::epilogue::Consts;
use super::input::{dot, sum_squares, CpuElement};
use super::passes::{self, Plan};
use super::rows::{class_norm, Rows};
use super::{CpuOptions, Error, Result};
use crate::config::AdaFaceConfig;
use crate::element::Label;
use crate::error::Tensor;
use crate::math::{batch_scalers, clamp_cosine, target_logit, MarginConsts};
use crate::output::Diagnostics;
use crate::shape::Shape;
use crate::shard::reference::validate_shard;
use crate::shard::{
    reduce_partials, Communicator, GlobalRows, PartialFc, ReduceOp, RowPartials, ShardSpec,
};
use crate::state::{BatchStats, EmaState};

/// One shard of the fast CPU loss, owning its copy of the EMA state (the
/// same on every shard, see [`crate::shard`]). Inputs `f32`, `bf16` or
/// `f16`; statistics and gradients `f32`.
#[derive(Debug, Clone)]
pub struct ShardedCpuAdaFace {
    cfg: AdaFaceConfig,
    state: EmaState,
    spec: ShardSpec,
    options: CpuOptions,
}

/// What phase 1 keeps for phase 2: per-row data (`O(B x D)`), `1 / ||w_j||`
/// of the active classes and, when sampling, the sampled weight rows.
#[derive(Debug)]
pub struct CpuPending<E> {
    state_before: EmaState,
    plan: Plan,
    consts: Consts,
    rows: Rows,
    inv_r: Vec<f32>,
    sampled: Option<Vec<usize>>,
    compact: Option<Vec<E>>,
}

/// Result of one shard's phase 2 on the CPU; the gradients went to the
/// caller's buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuShardStep {
    /// Mean loss over the global batch (the same on every shard).
    pub loss: f32,
    /// The sampled shard-local class indices (sorted) with Partial FC.
    pub sampled: Option<Vec<usize>>,
    /// Per-row values of the global batch.
    pub diagnostics: Diagnostics<f32>,
    /// The global batch's norm statistics and the EMA state after them.
    pub stats: BatchStats<f32>,
}

impl ShardedCpuAdaFace {
    /// Shard `spec` with default [`CpuOptions`], from the initial state.
    pub fn new(cfg: AdaFaceConfig, spec: ShardSpec) -> Self {
        ShardedCpuAdaFace {
            state: cfg.initial_state(),
            cfg,
            spec,
            options: CpuOptions::default(),
        }
    }

    /// Shard `spec` with explicit block sizes and partitioning.
    pub fn with_options(cfg: AdaFaceConfig, spec: ShardSpec, options: CpuOptions) -> Result<Self> {
        options.validate()?;
        Ok(ShardedCpuAdaFace {
            state: cfg.initial_state(),
            cfg,
            spec,
            options,
        })
    }

    /// The classes this shard holds.
    pub fn spec(&self) -> ShardSpec {
        self.spec
    }

    /// The config.
    pub fn config(&self) -> &AdaFaceConfig {
        &self.cfg
    }

    /// The EMA state (identical on every shard).
    pub fn state(&self) -> EmaState {
        self.state
    }

    /// Restores an EMA state; rejected if invalid.
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        state.validate()?;
        self.state = state;
        Ok(())
    }

    /// Phase 1: `shape` is `(B, D, C_k)`, `features` the global `B x D`
    /// batch, `weight` this shard's `C_k x D` rows, `labels` global (in
    /// `0..C`). With `sampling = Some((partial_fc, step))` only the sampled
    /// classes take part. Nothing is stored.
    pub fn phase1<E: CpuElement, L: Label>(
        &self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
        sampling: Option<(&PartialFc, u64)>,
    ) -> Result<(RowPartials<f32>, CpuPending<E>)> {
        self.options.validate()?;
        self.cfg.margin().require_affine("sharded cpu")?;
        validate_shard(&self.spec, &shape, features, weight, labels)?;
        self.state.validate()?;
        let d = shape.dim;
        let b = shape.batch;
        let sampled = match sampling {
            Some((p, step)) => Some(p.sample(&self.spec, labels, step)?),
            None => None,
        };
        let compact: Option<Vec<E>> = sampled.as_ref().map(|idx| {
            idx.iter()
                .flat_map(|&j| weight[j * d..(j + 1) * d].iter().copied())
                .collect()
        });
        let active_w = compact.as_deref().unwrap_or(weight);
        let active = active_w.len() / d;
        let local: Vec<usize> = labels
            .iter()
            .map(|l| match (self.spec.local(l.to_i64()), &sampled) {
                (None, _) => usize::MAX,
                (Some(j), None) => j,
                (Some(j), Some(idx)) => idx.binary_search(&j).expect("positives are sampled"),
            })
            .collect();
        let plan = Plan::new(b, d, active, &self.options);
        let consts = Consts {
            s: self.cfg.s() as f32,
            lo: -1.0 + self.cfg.eps() as f32,
            hi: 1.0 - self.cfg.eps() as f32,
            inv_b: 1.0 / b as f32,
            curricular_t: None,
        };
        let rows = prepare(&self.cfg, &self.state, d, features, active_w, local);
        let mut inv_r = vec![0.0f32; active];
        let (max, sumexp) = passes::row_max_sum(&plan, &consts, &rows, active_w, &mut inv_r);
        let owned: Vec<bool> = rows.labels.iter().map(|&l| l != usize::MAX).collect();
        let pick = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .zip(&owned)
                .map(|(&x, &o)| if o { x } else { 0.0 })
                .collect()
        };
        let partials = RowPartials {
            max,
            sumexp,
            target_logit: pick(&rows.target_logit),
            target_cosine: pick(&rows.target_cosine),
            owned: owned.iter().map(|&o| f32::from(u8::from(o))).collect(),
        };
        Ok((
            partials,
            CpuPending {
                state_before: self.state,
                plan,
                consts,
                rows,
                inv_r,
                sampled,
                compact,
            },
        ))
    }

    /// Phase 2: given the reduced row statistics, writes this shard's `dW`
    /// (`C_k x D`, exactly zero on unsampled classes) into `grad_weight` and
    /// its partial `dX` (`B x D`, to be summed over shards) into
    /// `grad_features`, and advances the EMA state. `weight` is the same
    /// shard weight phase 1 saw. Checks everything before writing anything.
    pub fn phase2<E: CpuElement>(
        &mut self,
        pending: &CpuPending<E>,
        weight: &[E],
        global: &GlobalRows<f32>,
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<CpuShardStep> {
        let p = pending;
        let (b, d) = (p.plan.batch, p.plan.dim);
        global.validate(b)?;
        let shape = Shape::new(b, d, self.spec.classes);
        shape.check_len(Tensor::Weight, weight.len())?;
        for (tensor, expected, actual) in [
            (Tensor::GradFeatures, b * d, grad_features.len()),
            (Tensor::GradWeight, self.spec.classes * d, grad_weight.len()),
        ] {
            if expected != actual {
                return Err(Error::ShapeMismatch {
                    tensor,
                    expected,
                    actual,
                });
            }
        }
        if p.state_before != self.state {
            return Err(Error::InvalidShard {
                reason: "the EMA state changed since phase 1".into(),
            });
        }
        let active_w = p.compact.as_deref().unwrap_or(weight);
        match &p.sampled {
            None => passes::gradients(
                &p.plan,
                &p.consts,
                &p.rows,
                &global.lse,
                active_w,
                &p.inv_r,
                grad_features,
                grad_weight,
            ),
            Some(idx) => {
                let mut gw = vec![0.0f32; idx.len() * d];
                passes::gradients(
                    &p.plan,
                    &p.consts,
                    &p.rows,
                    &global.lse,
                    active_w,
                    &p.inv_r,
                    grad_features,
                    &mut gw,
                );
                grad_weight.par_iter_mut().for_each(|v| *v = 0.0);
                for (k, &j) in idx.iter().enumerate() {
                    grad_weight[j * d..(j + 1) * d].copy_from_slice(&gw[k * d..(k + 1) * d]);
                }
            }
        }
        let sample_loss: Vec<f32> = global
            .lse
            .iter()
            .zip(&global.target_logit)
            .map(|(&l, &t)| l - t)
            .collect();
        let loss =
            (sample_loss.iter().map(|&v| v as f64).sum::<f64>() / sample_loss.len() as f64) as f32;
        self.state = p.rows.stats.state_after;
        Ok(CpuShardStep {
            loss,
            sampled: p.sampled.clone(),
            diagnostics: Diagnostics {
                norms: p.rows.norms.clone(),
                margin_scaler: p.rows.scaler.clone(),
                target_cosine: global.target_cosine.clone(),
                sample_loss,
            },
            stats: p.rows.stats,
        })
    }

    /// The whole step over `comm`: phase 1, the row reduction, phase 2 and
    /// the all-reduce of `dX`, so `grad_features` ends as the full `dX`.
    ///
    /// Every rank must call it with the same global features and labels:
    /// their checks then fail on every rank alike, before any collective. A
    /// rank whose own weight shard is rejected returns its error before the
    /// first collective while its peers wait in theirs, as in any
    /// collective program: validate weights when loading them.
    #[allow(clippy::too_many_arguments)]
    pub fn step<E: CpuElement, L: Label, C: Communicator + ?Sized>(
        &mut self,
        comm: &C,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
        sampling: Option<(&PartialFc, u64)>,
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<CpuShardStep> {
        let (partials, pending) = self.phase1(shape, features, weight, labels, sampling)?;
        let global = reduce_partials(comm, &partials)?;
        let out = self.phase2(&pending, weight, &global, grad_features, grad_weight)?;
        comm.all_reduce_f32(grad_features, ReduceOp::Sum)?;
        Ok(out)
    }
}

/// [`super::rows::prepare`] for a shard: `local[i]` is the row's label as an
/// index into `weight` (the active classes), or `usize::MAX` when the label
/// is not held here (no target on this shard).
fn prepare<E: CpuElement>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    dim: usize,
    features: &[E],
    weight: &[E],
    local: Vec<usize>,
) -> Rows {
    let k = MarginConsts::<f32>::new(cfg);
    let batch = local.len();
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
    let (stats, scaler) = batch_scalers(&norms, state, cfg, &k);
    let policy = cfg.margin();
    let mut target_cosine = vec![0.0f32; batch];
    let mut target_logit_v = vec![0.0f32; batch];
    let mut target_dlogit = vec![0.0f32; batch];
    let mut w_row = vec![0.0f32; dim];
    for i in 0..batch {
        let y = local[i];
        if y == usize::MAX {
            continue;
        }
        E::widen(&weight[y * dim..(y + 1) * dim], &mut w_row);
        let raw = dot(&x_hat[i * dim..(i + 1) * dim], &w_row) * (1.0 / class_norm(&w_row));
        let (c, passes) = clamp_cosine(raw, k.eps);
        let (a, b) = policy.row_offsets(scaler[i] as f64);
        let (l, dl) = target_logit(c, a as f32, b as f32, &k);
        target_cosine[i] = c;
        target_logit_v[i] = l;
        target_dlogit[i] = if passes { dl } else { 0.0 };
    }
    Rows {
        x_hat,
        norms,
        scaler,
        labels: local,
        target_cosine,
        target_logit: target_logit_v,
        target_dlogit,
        stats,
        // The sharded backend computes the affine policies only.
        threshold: Vec::new(),
        curricular_t: None,
        dtarget_dnorm: Vec::new(),
        dreg_dnorm: Vec::new(),
        reg: Vec::new(),
    }
}
