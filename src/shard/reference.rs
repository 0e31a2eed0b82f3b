//! The sharded step on the exact reference: materialises this shard's
//! `B x C_k` logits, in `f32` or `f64`. The oracle for the other backends'
//! sharded steps, as [`crate::reference`] is for the unsharded one.

use rayon::prelude::*;

use super::{
    reduce_partials, CommReal, Communicator, GlobalRows, PartialFc, ReduceOp, RowPartials,
    ShardSpec, ShardStepOutput,
};
use crate::config::AdaFaceConfig;
use crate::element::Label;
use crate::error::{Error, Result, Tensor};
use crate::math::{batch_scalers, clamp_cosine, target_logit, MarginConsts};
use crate::output::Diagnostics;
use crate::real::Real;
use crate::shape::{check_finite, check_labels, check_nonzero_rows, Shape};
use crate::state::{BatchStats, EmaState};

/// One shard of the reference loss, owning its copy of the EMA state (the
/// same on every shard, see [the module docs](super)).
#[derive(Debug, Clone)]
pub struct ShardedReference {
    cfg: AdaFaceConfig,
    state: EmaState,
    spec: ShardSpec,
}

/// What phase 1 keeps for phase 2 (this shard's logits and normalised rows).
#[derive(Debug, Clone)]
pub struct ReferencePending<T> {
    state_before: EmaState,
    batch: usize,
    dim: usize,
    /// Classes taking part: all of the shard's, or the sampled ones.
    active: usize,
    sampled: Option<Vec<usize>>,
    /// Per row: the active-class index of the label, if held here.
    local: Vec<Option<usize>>,
    x_norm: Vec<T>,
    x_hat: Vec<T>,
    w_norm: Vec<T>,
    w_hat: Vec<T>,
    logits: Vec<T>,
    dlogit: Vec<T>,
    scalers: Vec<T>,
    stats: BatchStats<T>,
}

impl ShardedReference {
    /// Shard `spec` of a loss with `cfg`, from the config's initial state.
    pub fn new(cfg: AdaFaceConfig, spec: ShardSpec) -> Self {
        ShardedReference {
            state: cfg.initial_state(),
            cfg,
            spec,
        }
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
    /// batch, `weight` this shard's `C_k x D` rows, `labels` the global
    /// labels (in `0..C`). With `sampling = Some((partial_fc, step))` only
    /// the sampled classes take part. Nothing is stored.
    pub fn phase1<T: Real, L: Label>(
        &self,
        shape: Shape,
        features: &[T],
        weight: &[T],
        labels: &[L],
        sampling: Option<(&PartialFc, u64)>,
    ) -> Result<(RowPartials<T>, ReferencePending<T>)> {
        self.cfg.margin().require_affine("sharded reference")?;
        validate_shard(&self.spec, &shape, features, weight, labels)?;
        self.state.validate()?;
        let sampled = match sampling {
            Some((p, step)) => Some(p.sample(&self.spec, labels, step)?),
            None => None,
        };
        let d = shape.dim;
        let b = shape.batch;
        let (active_w, active, local): (Vec<T>, usize, Vec<Option<usize>>) = match &sampled {
            None => (
                weight.to_vec(),
                shape.classes,
                labels.iter().map(|l| self.spec.local(l.to_i64())).collect(),
            ),
            Some(idx) => (
                idx.iter()
                    .flat_map(|&j| weight[j * d..(j + 1) * d].iter().copied())
                    .collect(),
                idx.len(),
                labels
                    .iter()
                    .map(|l| {
                        self.spec
                            .local(l.to_i64())
                            .map(|j| idx.binary_search(&j).expect("positives are sampled"))
                    })
                    .collect(),
            ),
        };

        let k = MarginConsts::<T>::new(&self.cfg);
        let policy = self.cfg.margin();
        let (x_norm, x_hat) = normalize_rows(features, d);
        let (w_norm, w_hat) = normalize_rows(&active_w, d);
        let (stats, scalers) = batch_scalers(&x_norm, &self.state, &self.cfg, &k);

        let c = active;
        let mut logits = vec![T::ZERO; b * c];
        let mut dlogit = vec![T::ZERO; b * c];
        let mut partials = RowPartials {
            max: vec![T::ZERO; b],
            sumexp: vec![T::ZERO; b],
            target_logit: vec![T::ZERO; b],
            target_cosine: vec![T::ZERO; b],
            owned: vec![T::ZERO; b],
        };
        logits
            .par_chunks_mut(c)
            .zip(dlogit.par_chunks_mut(c))
            .enumerate()
            .for_each(|(i, (lrow, drow))| {
                let xi = &x_hat[i * d..(i + 1) * d];
                let (a, bb) = policy.row_offsets(scalers[i].to_f64());
                for j in 0..c {
                    let (cos, passes) = clamp_cosine(dot(xi, &w_hat[j * d..(j + 1) * d]), k.eps);
                    let gate = if passes { T::ONE } else { T::ZERO };
                    if local[i] == Some(j) {
                        let (l, dl) = target_logit(cos, T::from_f64(a), T::from_f64(bb), &k);
                        lrow[j] = l;
                        drow[j] = dl * gate;
                    } else {
                        lrow[j] = k.s * cos;
                        drow[j] = k.s * gate;
                    }
                }
            });
        for i in 0..b {
            let row = &logits[i * c..(i + 1) * c];
            let m = row.iter().copied().fold(row[0], T::max);
            partials.max[i] = m;
            partials.sumexp[i] = row.iter().map(|&v| (v - m).exp()).sum();
            if let Some(j) = local[i] {
                partials.target_logit[i] = row[j];
                let raw = dot(&x_hat[i * d..(i + 1) * d], &w_hat[j * d..(j + 1) * d]);
                partials.target_cosine[i] = clamp_cosine(raw, k.eps).0;
                partials.owned[i] = T::ONE;
            }
        }
        let pending = ReferencePending {
            state_before: self.state,
            batch: b,
            dim: d,
            active,
            sampled,
            local,
            x_norm,
            x_hat,
            w_norm,
            w_hat,
            logits,
            dlogit,
            scalers,
            stats,
        };
        Ok((partials, pending))
    }

    /// Phase 2: given the reduced row statistics, the loss, this shard's
    /// `dW` (`C_k x D`, zero on unsampled classes) and its partial `dX`; the
    /// EMA state advances. Rejects statistics of the wrong length or
    /// non-finite ones, and a `pending` made from another state, changing
    /// nothing.
    pub fn phase2<T: Real>(
        &mut self,
        pending: &ReferencePending<T>,
        global: &GlobalRows<T>,
    ) -> Result<ShardStepOutput<T>> {
        let p = pending;
        global.validate(p.batch)?;
        if p.state_before != self.state {
            return Err(Error::InvalidShard {
                reason: "the EMA state changed since phase 1".into(),
            });
        }
        let (b, d, c) = (p.batch, p.dim, p.active);
        let inv_b = T::ONE / T::from_f64(b as f64);
        let mut a = vec![T::ZERO; b * c];
        a.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                let prob = (p.logits[i * c + j] - global.lse[i]).exp();
                let onehot = if p.local[i] == Some(j) {
                    T::ONE
                } else {
                    T::ZERO
                };
                *v = (prob - onehot) * inv_b * p.dlogit[i * c + j];
            }
        });
        let mut gx = vec![T::ZERO; b * d];
        gx.par_chunks_mut(d).enumerate().for_each(|(i, out)| {
            for j in 0..c {
                axpy(a[i * c + j], &p.w_hat[j * d..(j + 1) * d], out);
            }
            project_out(out, &p.x_hat[i * d..(i + 1) * d], p.x_norm[i]);
        });
        let mut gw_active = vec![T::ZERO; c * d];
        gw_active
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(j, out)| {
                for i in 0..b {
                    axpy(a[i * c + j], &p.x_hat[i * d..(i + 1) * d], out);
                }
                project_out(out, &p.w_hat[j * d..(j + 1) * d], p.w_norm[j]);
            });
        let grad_weight = match &p.sampled {
            None => gw_active,
            Some(idx) => {
                let mut gw = vec![T::ZERO; self.spec.classes * d];
                for (k, &j) in idx.iter().enumerate() {
                    gw[j * d..(j + 1) * d].copy_from_slice(&gw_active[k * d..(k + 1) * d]);
                }
                gw
            }
        };
        let sample_loss: Vec<T> = global
            .lse
            .iter()
            .zip(&global.target_logit)
            .map(|(&l, &t)| l - t)
            .collect();
        let loss = sample_loss.iter().copied().sum::<T>() * inv_b;
        self.state = p.stats.state_after;
        Ok(ShardStepOutput {
            loss,
            grad_features: gx,
            grad_weight,
            sampled: p.sampled.clone(),
            diagnostics: Diagnostics {
                norms: p.x_norm.clone(),
                margin_scaler: p.scalers.clone(),
                target_cosine: global.target_cosine.clone(),
                sample_loss,
            },
            stats: p.stats,
        })
    }

    /// The whole step over `comm`: phase 1, the row reduction, phase 2 and
    /// the all-reduce of `dX`, so `grad_features` is the full `dX` (the same
    /// on every shard).
    ///
    /// Every rank must call it with the same global features and labels:
    /// their checks then fail on every rank alike, before any collective. A
    /// rank whose own weight shard is rejected returns its error before the
    /// first collective while its peers wait in theirs, as in any
    /// collective program: validate weights when loading them.
    pub fn step<T: CommReal, L: Label, C: Communicator + ?Sized>(
        &mut self,
        comm: &C,
        shape: Shape,
        features: &[T],
        weight: &[T],
        labels: &[L],
        sampling: Option<(&PartialFc, u64)>,
    ) -> Result<ShardStepOutput<T>> {
        let (partials, pending) = self.phase1(shape, features, weight, labels, sampling)?;
        let global = reduce_partials(comm, &partials)?;
        let mut out = self.phase2(&pending, &global)?;
        T::all_reduce(comm, &mut out.grad_features, ReduceOp::Sum)?;
        Ok(out)
    }
}

/// The host checks of a shard's inputs: shapes against the spec, global
/// labels, finiteness, zero norms.
pub(crate) fn validate_shard<E: crate::element::Element, L: Label>(
    spec: &ShardSpec,
    shape: &Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
) -> Result<()> {
    shape.check_nonempty()?;
    if shape.classes != spec.classes {
        return Err(Error::InvalidShard {
            reason: format!(
                "shape has {} classes, the shard holds {}",
                shape.classes, spec.classes
            ),
        });
    }
    shape.check_len(Tensor::Features, features.len())?;
    shape.check_len(Tensor::Weight, weight.len())?;
    shape.check_len(Tensor::Labels, labels.len())?;
    check_labels(labels, spec.total_classes)?;
    check_finite(Tensor::Features, features)?;
    check_finite(Tensor::Weight, weight)?;
    check_nonzero_rows(Tensor::Features, features, shape.dim)?;
    check_nonzero_rows(Tensor::Weight, weight, shape.dim)
}

fn normalize_rows<T: Real>(m: &[T], d: usize) -> (Vec<T>, Vec<T>) {
    let norms: Vec<T> = m.chunks_exact(d).map(|r| dot(r, r).sqrt()).collect();
    let hat = m
        .chunks_exact(d)
        .zip(&norms)
        .flat_map(|(r, &n)| r.iter().map(move |&v| v / n))
        .collect();
    (norms, hat)
}

fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

fn project_out<T: Real>(g: &mut [T], u: &[T], n: T) {
    let along = dot(u, g);
    for (gv, &uv) in g.iter_mut().zip(u) {
        *gv = (*gv - uv * along) / n;
    }
}
