//! The CPU reference: the official AdaFace head, written out plainly.
//!
//! This is the oracle every other backend is checked against, so clarity
//! comes first: it materialises the `B x C` cosines, logits and softmax
//! gradient, follows the semantics section of `README.md` line by line, and is generic over
//! `f32` (which reproduces the official float32 run) and `f64`. Rayon splits
//! the matrix products over rows; nothing else is clever.
//!
//! Both entry points are pure: they read an [`EmaState`] and return the
//! state after the step, so callers decide whether to keep it.

use rayon::prelude::*;

use crate::config::AdaFaceConfig;
use crate::config::MarginPolicy;
use crate::element::Label;
use crate::error::{Result, Tensor};
use crate::math::{batch_scalers, clamp_cosine, curricular_negative, row_target, MarginConsts};
use crate::output::{Diagnostics, ForwardOutput, StepOutput};
use crate::real::Real;
use crate::shape::{validate_inputs, Shape};
use crate::state::{BatchStats, EmaState};

/// The official forward: mean loss, the `B x C` logits, per-row values and
/// the EMA state after this batch (the official head updates it on every
/// forward, train or eval).
pub fn forward<T: Real, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    shape: Shape,
    features: &[T],
    weight: &[T],
    labels: &[L],
) -> Result<ForwardOutput<T>> {
    let p = Pass::run(cfg, state, shape, features, weight, labels, None, None)?;
    Ok(ForwardOutput {
        loss: p.loss,
        logits: p.logits,
        diagnostics: p.diagnostics,
        stats: p.stats,
    })
}

/// A training step: the forward and the gradients with respect to the raw
/// features (`B x D`) and the raw class weights (`C x D`).
pub fn forward_backward<T: Real, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    shape: Shape,
    features: &[T],
    weight: &[T],
    labels: &[L],
) -> Result<StepOutput<T>> {
    let p = Pass::run(cfg, state, shape, features, weight, labels, None, None)?;
    let (grad_features, grad_weight) = p.backward();
    Ok(StepOutput {
        loss: p.loss,
        grad_features,
        grad_weight,
        diagnostics: p.diagnostics,
        stats: p.stats,
    })
}

/// The mean loss as a function of `x` and `W` alone, with the per-row
/// margin scalers held at `scalers` (one per row, used as given).
///
/// This is the function the analytic gradient differentiates: nothing flows
/// through the scaler, the norm clip or the batch statistics. Finite
/// differences of it check [`forward_backward`]'s gradients. CurricularFace's
/// `t` is held at the config's initial state's (see [`detached_loss_at`]);
/// MagFace's norm is not detached (its margin and regulariser depend on it).
pub fn detached_loss<T: Real, L: Label>(
    cfg: &AdaFaceConfig,
    shape: Shape,
    features: &[T],
    weight: &[T],
    labels: &[L],
    scalers: &[T],
) -> Result<T> {
    let t = cfg.initial_state().curricular_t;
    detached_loss_at(cfg, shape, features, weight, labels, scalers, t)
}

/// [`detached_loss`] with CurricularFace's `t` held at `curricular_t` (the
/// value a step uses, `stats.state_after.curricular_t`, is the one its
/// gradient holds fixed). Other policies ignore `curricular_t`.
pub fn detached_loss_at<T: Real, L: Label>(
    cfg: &AdaFaceConfig,
    shape: Shape,
    features: &[T],
    weight: &[T],
    labels: &[L],
    scalers: &[T],
    curricular_t: f64,
) -> Result<T> {
    let state = cfg.initial_state();
    let p = Pass::run(
        cfg,
        &state,
        shape,
        features,
        weight,
        labels,
        Some(scalers),
        Some(curricular_t),
    )?;
    Ok(p.loss)
}

/// Everything the forward computes that the backward reuses.
struct Pass<T> {
    shape: Shape,
    labels: Vec<usize>,
    /// `||x_i||` and `x_i / ||x_i||`.
    x_norm: Vec<T>,
    x_hat: Vec<T>,
    /// `||w_j||` and `w_j / ||w_j||`.
    w_norm: Vec<T>,
    w_hat: Vec<T>,
    /// `d logit / d (clamped cosine)` including `s`, times the clamp
    /// indicator, `B x C`.
    dlogit: Vec<T>,
    logits: Vec<T>,
    lse: Vec<T>,
    /// `d target logit / d ||x_i||` and `d reg_i / d ||x_i||` (MagFace).
    dtarget_dnorm: Vec<T>,
    dreg_dnorm: Vec<T>,
    loss: T,
    diagnostics: Diagnostics<T>,
    stats: BatchStats<T>,
}

impl<T: Real> Pass<T> {
    #[allow(clippy::too_many_arguments)]
    fn run<L: Label>(
        cfg: &AdaFaceConfig,
        state: &EmaState,
        shape: Shape,
        features: &[T],
        weight: &[T],
        labels: &[L],
        scalers: Option<&[T]>,
        fixed_t: Option<f64>,
    ) -> Result<Self> {
        validate_inputs(&shape, features, weight, labels)?;
        if let Some(z) = scalers {
            shape.check_len(Tensor::MarginScaler, z.len())?;
        }
        state.validate()?;
        let Shape {
            batch: b,
            dim: d,
            classes: c,
        } = shape;
        let k = MarginConsts::<T>::new(cfg);
        let policy = cfg.margin();
        let labels: Vec<usize> = labels.iter().map(|l| l.to_i64() as usize).collect();

        let (x_norm, x_hat) = normalize_rows(features, d);
        let (w_norm, w_hat) = normalize_rows(weight, d);

        let (mut stats, computed) = batch_scalers(&x_norm, state, cfg, &k);
        let z = scalers.map_or(computed, <[T]>::to_vec);

        // CurricularFace: t moves towards this batch's mean target cosine
        // before it is used (detached: a constant of the step).
        let curricular_t = match policy {
            MarginPolicy::CurricularFace { .. } => {
                let t = match fixed_t {
                    Some(t) => T::from_f64(t),
                    None => {
                        let tc: Vec<T> = (0..b)
                            .map(|i| {
                                let y = labels[i];
                                let xi = &x_hat[i * d..(i + 1) * d];
                                clamp_cosine(dot(xi, &w_hat[y * d..(y + 1) * d]), k.eps).0
                            })
                            .collect();
                        crate::state::curricular_t_update(state.curricular_t, &tc, cfg.t_alpha())
                    }
                };
                stats.state_after.curricular_t = t.to_f64();
                Some(t)
            }
            _ => None,
        };

        let mut logits = vec![T::ZERO; b * c];
        let mut dlogit = vec![T::ZERO; b * c];
        let mut target_cosine = vec![T::ZERO; b];
        let mut dtarget_dnorm = vec![T::ZERO; b];
        let mut dreg_dnorm = vec![T::ZERO; b];
        let mut reg = vec![T::ZERO; b];
        logits
            .par_chunks_mut(c)
            .zip(dlogit.par_chunks_mut(c))
            .zip(target_cosine.par_iter_mut())
            .zip(dtarget_dnorm.par_iter_mut())
            .zip(dreg_dnorm.par_iter_mut())
            .zip(reg.par_iter_mut())
            .enumerate()
            .for_each(|(i, (((((logit_row, dlogit_row), tc), dtn), drn), rg))| {
                let xi = &x_hat[i * d..(i + 1) * d];
                let y = labels[i];
                let (cos_y, passes_y) = clamp_cosine(dot(xi, &w_hat[y * d..(y + 1) * d]), k.eps);
                let target = row_target(&policy, cos_y, z[i], x_norm[i], &k);
                for j in 0..c {
                    if j == y {
                        logit_row[j] = target.logit;
                        let gate = if passes_y { T::ONE } else { T::ZERO };
                        dlogit_row[j] = target.dlogit * gate;
                        continue;
                    }
                    let dot = dot(xi, &w_hat[j * d..(j + 1) * d]);
                    let (cos, passes) = clamp_cosine(dot, k.eps);
                    let gate = if passes { T::ONE } else { T::ZERO };
                    match curricular_t {
                        Some(t) if cos > target.threshold => {
                            let (l, dl) = curricular_negative(cos, t, k.s);
                            logit_row[j] = l;
                            dlogit_row[j] = dl * gate;
                        }
                        _ => {
                            logit_row[j] = k.s * cos;
                            dlogit_row[j] = k.s * gate;
                        }
                    }
                }
                *tc = cos_y;
                *dtn = target.dlogit_dnorm;
                *drn = target.dreg_dnorm;
                *rg = target.reg;
            });

        let lse: Vec<T> = logits.par_chunks(c).map(logsumexp).collect();
        let sample_loss: Vec<T> = if matches!(policy, MarginPolicy::MagFace { .. }) {
            (0..b)
                .map(|i| lse[i] - logits[i * c + labels[i]] + reg[i])
                .collect()
        } else {
            (0..b).map(|i| lse[i] - logits[i * c + labels[i]]).collect()
        };
        let loss = sample_loss.iter().copied().sum::<T>() / T::from_f64(b as f64);

        Ok(Pass {
            shape,
            labels,
            diagnostics: Diagnostics {
                norms: x_norm.clone(),
                margin_scaler: z,
                target_cosine,
                sample_loss,
            },
            x_norm,
            x_hat,
            w_norm,
            w_hat,
            dlogit,
            logits,
            lse,
            dtarget_dnorm,
            dreg_dnorm,
            loss,
            stats,
        })
    }

    /// `(dL/dx, dL/dW)` through the softmax, the margin, the clamp and both
    /// normalisations.
    fn backward(&self) -> (Vec<T>, Vec<T>) {
        let Shape {
            batch: b,
            dim: d,
            classes: c,
        } = self.shape;
        let inv_b = T::ONE / T::from_f64(b as f64);

        // A_ij = dL/dc_ij = (softmax_ij - [j = y_i]) / B * dlogit_ij.
        let mut a = vec![T::ZERO; b * c];
        a.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                let p = (self.logits[i * c + j] - self.lse[i]).exp();
                let onehot = if j == self.labels[i] { T::ONE } else { T::ZERO };
                *v = (p - onehot) * inv_b * self.dlogit[i * c + j];
            }
        });

        let mut grad_x = vec![T::ZERO; b * d];
        grad_x.par_chunks_mut(d).enumerate().for_each(|(i, out)| {
            for j in 0..c {
                axpy(a[i * c + j], &self.w_hat[j * d..(j + 1) * d], out);
            }
            let xi = &self.x_hat[i * d..(i + 1) * d];
            project_out(out, xi, self.x_norm[i]);
            // MagFace: the loss depends on ||x_i|| itself, whose gradient
            // is x_hat_i.
            let p_target = (self.logits[i * c + self.labels[i]] - self.lse[i]).exp();
            let dnorm = ((p_target - T::ONE) * self.dtarget_dnorm[i] + self.dreg_dnorm[i]) * inv_b;
            if dnorm != T::ZERO {
                axpy(dnorm, xi, out);
            }
        });

        let mut grad_w = vec![T::ZERO; c * d];
        grad_w.par_chunks_mut(d).enumerate().for_each(|(j, out)| {
            for i in 0..b {
                axpy(a[i * c + j], &self.x_hat[i * d..(i + 1) * d], out);
            }
            project_out(out, &self.w_hat[j * d..(j + 1) * d], self.w_norm[j]);
        });
        (grad_x, grad_w)
    }
}

/// Row norms and the rows divided by them.
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

/// The Jacobian of `v -> v / ||v||` applied to `g`: `(g - u (u . g)) / n`.
fn project_out<T: Real>(g: &mut [T], u: &[T], n: T) {
    let along = dot(u, g);
    for (gv, &uv) in g.iter_mut().zip(u) {
        *gv = (*gv - uv * along) / n;
    }
}

fn logsumexp<T: Real>(row: &[T]) -> T {
    let max = row.iter().copied().fold(row[0], T::max);
    let sum: T = row.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}
