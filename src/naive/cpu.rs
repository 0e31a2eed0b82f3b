//! The straightforward materialising CPU implementation, as one would write
//! it with a BLAS at hand (and as the official PyTorch head runs): normalised
//! copies of `X` and `W`, then the `B x C` cosines, logits, softmax and
//! softmax gradient as full arrays, with multi-threaded matrix products (the
//! same `gemm` crate as the fused backend, so the comparison isolates
//! fusion). Scalar formulas come from [`crate::math`], as everywhere.

use rayon::prelude::*;

use crate::config::AdaFaceConfig;
use crate::cpu::CpuElement;
use crate::element::Label;
use crate::error::Result;
use crate::math::{batch_scalers, clamp_cosine, target_logit, MarginConsts};
use crate::output::{Diagnostics, ForwardOutput, StepOutput};
use crate::shape::{validate_inputs, Shape};
use crate::state::{BatchStats, EmaState};

/// Naive forward: materialises and returns the `B x C` logits.
pub fn forward<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    shape: Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
) -> Result<ForwardOutput<f32>> {
    let m = Materialised::new(cfg, state, shape, features, weight, labels)?;
    Ok(ForwardOutput {
        loss: m.loss,
        logits: m.logits,
        diagnostics: m.diagnostics,
        stats: m.stats,
    })
}

/// Naive training step: returns freshly allocated gradients.
pub fn forward_backward<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    shape: Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
) -> Result<StepOutput<f32>> {
    let m = Materialised::new(cfg, state, shape, features, weight, labels)?;
    let Shape {
        batch: b,
        dim: d,
        classes: c,
    } = shape;
    // G_ij = (p_ij - [j = y_i]) / B * dlogit_ij, a full B x C array.
    let inv_b = 1.0 / b as f32;
    let mut g = vec![0.0f32; b * c];
    g.par_chunks_mut(c).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            let p = (m.logits[i * c + j] - m.lse[i]).exp();
            let onehot = if j == m.labels[i] { 1.0 } else { 0.0 };
            *v = (p - onehot) * inv_b * m.dlogit[i * c + j];
        }
    });
    let mut grad_features = vec![0.0f32; b * d];
    let mut grad_weight = vec![0.0f32; c * d];
    gemm_rows(&mut grad_features, &g, false, b, c, &m.w_hat, false, d);
    gemm_rows(&mut grad_weight, &g, true, c, b, &m.x_hat, false, d);
    project(&mut grad_features, &m.x_hat, &m.x_norm, d);
    project(&mut grad_weight, &m.w_hat, &m.w_norm, d);
    Ok(StepOutput {
        loss: m.loss,
        grad_features,
        grad_weight,
        diagnostics: m.diagnostics,
        stats: m.stats,
    })
}

struct Materialised {
    labels: Vec<usize>,
    x_norm: Vec<f32>,
    x_hat: Vec<f32>,
    w_norm: Vec<f32>,
    w_hat: Vec<f32>,
    logits: Vec<f32>,
    dlogit: Vec<f32>,
    lse: Vec<f32>,
    loss: f32,
    diagnostics: Diagnostics<f32>,
    stats: BatchStats<f32>,
}

impl Materialised {
    fn new<E: CpuElement, L: Label>(
        cfg: &AdaFaceConfig,
        state: &EmaState,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
    ) -> Result<Self> {
        cfg.margin().require_affine("naive cpu")?;
        validate_inputs(&shape, features, weight, labels)?;
        state.validate()?;
        let Shape {
            batch: b,
            dim: d,
            classes: c,
        } = shape;
        let k = MarginConsts::<f32>::new(cfg);
        let labels: Vec<usize> = labels.iter().map(|l| l.to_i64() as usize).collect();
        let (x_norm, x_hat) = normalise(features, d);
        let (w_norm, w_hat) = normalise(weight, d);
        let (stats, z) = batch_scalers(&x_norm, state, cfg, &k);

        // cos = X_hat . W_hat^T, then logits and their derivatives, B x C each.
        let mut logits = vec![0.0f32; b * c];
        gemm_rows(&mut logits, &x_hat, false, b, d, &w_hat, true, c);
        let mut dlogit = vec![0.0f32; b * c];
        let mut target_cosine = vec![0.0f32; b];
        let policy = cfg.margin();
        logits
            .par_chunks_mut(c)
            .zip(dlogit.par_chunks_mut(c))
            .zip(target_cosine.par_iter_mut())
            .enumerate()
            .for_each(|(i, ((l_row, d_row), tc))| {
                let y = labels[i];
                let raw_target = l_row[y];
                for (l, dl) in l_row.iter_mut().zip(d_row.iter_mut()) {
                    let (cos, passes) = clamp_cosine(*l, k.eps);
                    *l = k.s * cos;
                    *dl = if passes { k.s } else { 0.0 };
                }
                let (cos, passes) = clamp_cosine(raw_target, k.eps);
                let (a, bb) = policy.row_offsets(z[i] as f64);
                let (l, dl) = target_logit(cos, a as f32, bb as f32, &k);
                l_row[y] = l;
                d_row[y] = if passes { dl } else { 0.0 };
                *tc = cos;
            });
        let lse: Vec<f32> = logits
            .par_chunks(c)
            .map(|row| {
                let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                m + row.iter().map(|&v| (v - m).exp()).sum::<f32>().ln()
            })
            .collect();
        let sample_loss: Vec<f32> = (0..b).map(|i| lse[i] - logits[i * c + labels[i]]).collect();
        let loss = sample_loss.iter().sum::<f32>() / b as f32;
        Ok(Materialised {
            diagnostics: Diagnostics {
                norms: x_norm.clone(),
                margin_scaler: z,
                target_cosine,
                sample_loss,
            },
            labels,
            x_norm,
            x_hat,
            w_norm,
            w_hat,
            logits,
            dlogit,
            lse,
            loss,
            stats,
        })
    }
}

/// Row norms and a normalised `f32` copy.
fn normalise<E: CpuElement>(m: &[E], d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut hat = vec![0.0f32; m.len()];
    let mut norms = vec![0.0f32; m.len() / d];
    hat.par_chunks_mut(d)
        .zip(m.par_chunks(d))
        .zip(norms.par_iter_mut())
        .for_each(|((out, src), n)| {
            E::widen(src, out);
            *n = out.iter().map(|v| v * v).sum::<f32>().sqrt();
            out.iter_mut().for_each(|v| *v /= *n);
        });
    (norms, hat)
}

/// `dst (m x n) = op(a) . op(b)` on all cores, with `a` stored `m x k`
/// (or `k x m` when `a_t`) and `b` stored `k x n` (or `n x k` when `b_t`).
#[allow(clippy::too_many_arguments)]
fn gemm_rows(
    dst: &mut [f32],
    a: &[f32],
    a_t: bool,
    m: usize,
    k: usize,
    b: &[f32],
    b_t: bool,
    n: usize,
) {
    assert!(dst.len() == m * n && a.len() == m * k && b.len() == k * n);
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the lengths are asserted above and the strides stay inside them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    }
}

/// `g_r <- (g_r - u_r (u_r . g_r)) / n_r` for every row.
fn project(g: &mut [f32], u: &[f32], n: &[f32], d: usize) {
    g.par_chunks_mut(d)
        .zip(u.par_chunks(d))
        .zip(n.par_iter())
        .for_each(|((g, u), &n)| {
            let along: f32 = g.iter().zip(u).map(|(a, b)| a * b).sum();
            for (a, &b) in g.iter_mut().zip(u) {
                *a = (*a - b * along) / n;
            }
        });
}
