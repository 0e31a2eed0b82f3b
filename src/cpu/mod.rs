//! The fast CPU backend: fused, logits-free, blocked, multi-threaded.
//!
//! Same algorithm shape as the GPU kernels, so one mental model covers both:
//!
//! 1. per row, once: norms, `x_hat`, the EMA update, the margin scaler and
//!    the target logit (one dot product per row);
//! 2. pass 1, per (row block, class tile): the tile of cosines on a SIMD
//!    matrix-multiply microkernel (the `gemm` crate), then an epilogue that
//!    applies the clamp, the scale and the target's margin and folds the
//!    tile into each row's running maximum and sum of exponentials;
//! 3. pass 2 (training only): the tile again, turned into the softmax
//!    gradient, then two more tile products give this class tile's rows of
//!    `dW` (owned by one task: no races) and a contribution to `dX`.
//!
//! The `B x C` logits never exist: extra memory is `O(threads x tile)` plus
//! `O(B x D)` per class partition for `dX`, see [`CpuOptions::workspace_bytes`].
//! Inputs are `f32`, `bf16` or `f16` ([`CpuElement`]); everything is
//! accumulated in `f32`; gradients are `f32`. Results are deterministic for
//! given [`CpuOptions`] and shape: work is split into a fixed number of class
//! partitions reduced in a fixed order, whatever the thread count or
//! scheduling (the default partitioning does not follow the thread count).
//!
//! ```
//! use adaface::cpu::CpuAdaFace;
//! use adaface::{AdaFaceConfig, Shape};
//!
//! let shape = Shape::new(2, 3, 4);
//! let x = [0.5f32, 1.0, -0.2, 2.0, 0.1, 0.3];
//! let w = [1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
//! let labels = [1i64, 3];
//! let mut loss = CpuAdaFace::new(AdaFaceConfig::default());
//! let (mut dx, mut dw) = (vec![0.0; 6], vec![0.0; 12]);
//! let step = loss.forward_backward(shape, &x, &w, &labels, &mut dx, &mut dw)?;
//! assert!(step.loss.is_finite());
//! assert_eq!(loss.state(), step.stats.state_after);
//! # Ok::<(), adaface::Error>(())
//! ```

mod epilogue;
mod fastexp;
mod input;
mod matmul;
mod passes;
mod rows;
mod shard;

pub use input::CpuElement;
pub use shard::{CpuPending, CpuShardStep, ShardedCpuAdaFace};

use crate::config::AdaFaceConfig;
use crate::element::Label;
use crate::error::{Error, Result, Tensor};
use crate::output::{Diagnostics, ForwardOutput, StepOutput};
use crate::shape::{validate_inputs, Shape};
use crate::state::{BatchStats, EmaState};
use epilogue::Consts;
use passes::Plan;
use rayon::prelude::*;

/// Block sizes and the class partitioning of the fast CPU backend.
///
/// The defaults suit `D` in the hundreds on cores with 1-2 MB of L2: a
/// `256 x 128` tile of `f32` is 128 KB and a `128 x 512` weight tile 256 KB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOptions {
    /// Classes per tile.
    pub class_tile: usize,
    /// Rows per block.
    pub row_tile: usize,
    /// Class partitions processed in parallel, each with its own `dX`
    /// partial (at most one per class tile). Results are bit-identical for
    /// equal options and shapes, whatever the number of threads.
    pub partitions: usize,
}

impl Default for CpuOptions {
    /// Tiles of 256 rows by 128 classes in [`DEFAULT_PARTITIONS`]
    /// partitions: a constant, not the thread count, so that results do not
    /// change with the machine or `RAYON_NUM_THREADS`. Machines with more
    /// cores than that can raise `partitions` (results then follow it).
    fn default() -> Self {
        CpuOptions {
            class_tile: 128,
            row_tile: 256,
            partitions: DEFAULT_PARTITIONS,
        }
    }
}

/// The default number of class partitions: enough parallel tasks for the
/// core counts of common training hosts' loss threads, while the `dX`
/// partials (`partitions - 1` times `B x D` floats, 1.75 MiB at B = 128,
/// D = 512) stay small beside the `B x C` logits that a materialising loss
/// holds.
pub const DEFAULT_PARTITIONS: usize = 8;

impl CpuOptions {
    fn validate(&self) -> Result<()> {
        for (parameter, v) in [
            ("class_tile", self.class_tile),
            ("row_tile", self.row_tile),
            ("partitions", self.partitions),
        ] {
            if v == 0 {
                return Err(Error::InvalidConfig {
                    parameter,
                    value: 0.0,
                    requirement: ">= 1",
                });
            }
        }
        Ok(())
    }

    /// The bytes a training step allocates itself besides inputs and
    /// gradients (a forward needs less: no `dX` partials). Declared, not
    /// measured, and without the `gemm` crate's packing buffers (a 2 MB
    /// slab per thread, kept by the thread, plus up to `k x n` floats per
    /// product): the bench tool measures everything.
    pub fn workspace_bytes(&self, shape: Shape, narrow_inputs: bool) -> usize {
        let plan = Plan::new(shape.batch.max(1), shape.dim, shape.classes.max(1), self);
        let (b, d, c) = (plan.batch, plan.dim, plan.classes);
        let per_task_tile = plan.row_tile * plan.class_tile
            + if narrow_inputs {
                plan.class_tile * d
            } else {
                0
            }
            + 2 * b;
        let floats = b * d                         // x_hat
            + c                                    // 1 / ||w_j||
            + 8 * b                                // per-row values and the lse
            + (plan.chunks - 1) * b * d            // dX partials
            + plan.chunks * per_task_tile;
        floats * std::mem::size_of::<f32>()
    }
}

/// Result of a fused training step; the gradients went to the caller's
/// buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuStep {
    /// Mean loss over the batch.
    pub loss: f32,
    /// Per-row values.
    pub diagnostics: Diagnostics<f32>,
    /// This batch's norm statistics and the EMA state after it.
    pub stats: BatchStats<f32>,
}

/// The AdaFace loss on the fast CPU backend, owning its EMA state.
///
/// Mirrors the CUDA loss object: made from an [`AdaFaceConfig`], the EMA
/// state is read with [`state`](Self::state) and restored with
/// [`set_state`](Self::set_state) (checkpoints). A call that returns an error
/// changes neither the state nor any output buffer.
#[derive(Debug, Clone)]
pub struct CpuAdaFace {
    cfg: AdaFaceConfig,
    state: EmaState,
    options: CpuOptions,
}

impl CpuAdaFace {
    /// A loss with default [`CpuOptions`], starting from the config's
    /// initial EMA state.
    pub fn new(cfg: AdaFaceConfig) -> Self {
        CpuAdaFace {
            state: cfg.initial_state(),
            cfg,
            options: CpuOptions::default(),
        }
    }

    /// A loss with explicit block sizes and partitioning.
    pub fn with_options(cfg: AdaFaceConfig, options: CpuOptions) -> Result<Self> {
        options.validate()?;
        Ok(CpuAdaFace {
            state: cfg.initial_state(),
            cfg,
            options,
        })
    }

    /// The config.
    pub fn config(&self) -> &AdaFaceConfig {
        &self.cfg
    }

    /// The block sizes in use.
    pub fn options(&self) -> &CpuOptions {
        &self.options
    }

    /// The current EMA state (store it in a checkpoint).
    pub fn state(&self) -> EmaState {
        self.state
    }

    /// Restores an EMA state (from a checkpoint); rejected if invalid.
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        state.validate()?;
        self.state = state;
        Ok(())
    }

    /// Evaluation: the loss only (pass 1; no gradients, and the returned
    /// `logits` is empty: the fused backend never forms them).
    /// `update_state` chooses whether the stored EMA state moves (the
    /// official head updates it on every forward); either way the loss is
    /// computed against this batch's updated statistics, as the official
    /// head computes it. Same signature shape as the CUDA loss.
    pub fn forward<E: CpuElement, L: Label>(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
        update_state: bool,
    ) -> Result<ForwardOutput<f32>> {
        let out = forward(
            &self.cfg,
            &self.state,
            &self.options,
            shape,
            features,
            weight,
            labels,
        )?;
        if update_state {
            self.state = out.stats.state_after;
        }
        Ok(out)
    }

    /// A training step: the loss, `dX` (`B x D`) into `grad_features` and
    /// `dW` (`C x D`) into `grad_weight`, both `f32` row-major and fully
    /// overwritten; the EMA state advances.
    pub fn forward_backward<E: CpuElement, L: Label>(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<CpuStep> {
        let out = forward_backward(
            &self.cfg,
            &self.state,
            &self.options,
            shape,
            features,
            weight,
            labels,
            grad_features,
            grad_weight,
        )?;
        self.state = out.stats.state_after;
        Ok(out)
    }

    /// [`forward_backward`](Self::forward_backward) into fresh buffers, for
    /// callers that do not keep gradient buffers between steps.
    pub fn forward_backward_alloc<E: CpuElement, L: Label>(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
    ) -> Result<StepOutput<f32>> {
        let out = forward_backward_alloc(
            &self.cfg,
            &self.state,
            &self.options,
            shape,
            features,
            weight,
            labels,
        )?;
        self.state = out.stats.state_after;
        Ok(out)
    }
}

/// Stateless forward: like [`reference::forward`](crate::reference::forward)
/// but fused (no logits returned). The EMA state after the batch is in the
/// result; nothing is stored.
pub fn forward<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    options: &CpuOptions,
    shape: Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
) -> Result<ForwardOutput<f32>> {
    let core = Core::new(cfg, state, options, shape, features, weight, labels)?;
    let (loss, diagnostics, stats) = core.finish();
    Ok(ForwardOutput {
        loss,
        logits: Vec::new(),
        diagnostics,
        stats,
    })
}

/// Stateless training step into caller buffers (`grad_features`: `B x D`,
/// `grad_weight`: `C x D`, `f32`, overwritten). Checks everything before
/// writing anything.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    options: &CpuOptions,
    shape: Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
    grad_features: &mut [f32],
    grad_weight: &mut [f32],
) -> Result<CpuStep> {
    crate::shape::check_sizes(
        &shape,
        features.len(),
        weight.len(),
        labels.len(),
        Some((grad_features.len(), grad_weight.len())),
    )?;
    let core = Core::new(cfg, state, options, shape, features, weight, labels)?;
    passes::gradients(
        &core.plan,
        &core.consts,
        &core.rows,
        &core.lse,
        weight,
        &core.inv_r,
        grad_features,
        grad_weight,
    );
    core.add_norm_gradient(shape.dim, grad_features);
    let (loss, diagnostics, stats) = core.finish();
    Ok(CpuStep {
        loss,
        diagnostics,
        stats,
    })
}

/// Stateless training step returning freshly allocated gradients, like
/// [`reference::forward_backward`](crate::reference::forward_backward).
pub fn forward_backward_alloc<E: CpuElement, L: Label>(
    cfg: &AdaFaceConfig,
    state: &EmaState,
    options: &CpuOptions,
    shape: Shape,
    features: &[E],
    weight: &[E],
    labels: &[L],
) -> Result<StepOutput<f32>> {
    // Sizes are checked against the inputs before allocating, so a wrong
    // shape is reported as such, never a huge allocation.
    shape.check_nonempty()?;
    shape.check_len(Tensor::Features, features.len())?;
    shape.check_len(Tensor::Weight, weight.len())?;
    let mut gx = vec![0.0; features.len()];
    let mut gw = vec![0.0; weight.len()];
    let step = forward_backward(
        cfg, state, options, shape, features, weight, labels, &mut gx, &mut gw,
    )?;
    Ok(StepOutput {
        loss: step.loss,
        grad_features: gx,
        grad_weight: gw,
        diagnostics: step.diagnostics,
        stats: step.stats,
    })
}

/// Validation, per-row preparation and pass 1: what both entry points share.
struct Core {
    plan: Plan,
    consts: Consts,
    rows: rows::Rows,
    lse: Vec<f32>,
    inv_r: Vec<f32>,
}

impl Core {
    fn new<E: CpuElement, L: Label>(
        cfg: &AdaFaceConfig,
        state: &EmaState,
        options: &CpuOptions,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
    ) -> Result<Core> {
        options.validate()?;
        validate_inputs(&shape, features, weight, labels)?;
        state.validate()?;
        let Shape {
            batch,
            dim,
            classes,
        } = shape;
        let plan = Plan::new(batch, dim, classes, options);
        let labels = labels.iter().map(|l| l.to_i64() as usize).collect();
        let rows = rows::prepare(cfg, state, dim, features, weight, labels);
        let consts = Consts {
            s: cfg.s() as f32,
            lo: -1.0 + cfg.eps() as f32,
            hi: 1.0 - cfg.eps() as f32,
            inv_b: 1.0 / batch as f32,
            curricular_t: rows.curricular_t,
        };
        let mut inv_r = vec![0.0f32; classes];
        let lse = passes::log_sum_exp(&plan, &consts, &rows, weight, &mut inv_r);
        Ok(Core {
            plan,
            consts,
            rows,
            lse,
            inv_r,
        })
    }

    /// MagFace: the loss depends on `||x_i||` itself (margin and
    /// regulariser), whose gradient is `x_hat_i`. Nothing for the others.
    fn add_norm_gradient(&self, dim: usize, grad_features: &mut [f32]) {
        let r = &self.rows;
        if r.dtarget_dnorm.is_empty() {
            return;
        }
        let inv_b = self.consts.inv_b;
        grad_features
            .par_chunks_mut(dim)
            .zip(r.x_hat.par_chunks(dim))
            .enumerate()
            .for_each(|(i, (g, xh))| {
                let p = (r.target_logit[i] - self.lse[i]).exp();
                let dnorm = ((p - 1.0) * r.dtarget_dnorm[i] + r.dreg_dnorm[i]) * inv_b;
                g.iter_mut().zip(xh).for_each(|(gv, &x)| *gv += dnorm * x);
            });
    }

    fn finish(self) -> (f32, Diagnostics<f32>, BatchStats<f32>) {
        let mut sample_loss: Vec<f32> = self
            .lse
            .iter()
            .zip(&self.rows.target_logit)
            .map(|(&l, &t)| l - t)
            .collect();
        // MagFace's regulariser is part of each row's loss.
        sample_loss
            .iter_mut()
            .zip(&self.rows.reg)
            .for_each(|(v, &g)| *v += g);
        let loss =
            (sample_loss.iter().map(|&v| v as f64).sum::<f64>() / sample_loss.len() as f64) as f32;
        let r = self.rows;
        (
            loss,
            Diagnostics {
                norms: r.norms,
                margin_scaler: r.scaler,
                target_cosine: r.target_cosine,
                sample_loss,
            },
            r.stats,
        )
    }
}
