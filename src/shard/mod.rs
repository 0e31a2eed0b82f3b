//! Class-parallel sharding: a split-phase training step over `K` shards of
//! the classes, the communicator it runs over, and Partial FC sampling.
//!
//! Each of `K` shards holds the classes `[offset, offset + C_k)` of a global
//! `C` ([`ShardSpec`]) and sees the whole global batch (`B x D` features and
//! `B` global labels, all-gathered by the caller). A step is:
//!
//! 1. **phase 1** (per shard): the per-row norm data and EMA update (from
//!    the global batch, so identical on every shard), then this shard's
//!    partial softmax statistics of the margin-adjusted logits
//!    ([`RowPartials`]: running max, sum of exponentials, and the target
//!    logit and cosine where the row's label falls in this shard);
//! 2. **reduce** (the caller, over its transport): an all-reduce `MAX` of
//!    the row maxima, then one all-reduce `SUM` of `4 B` values
//!    ([`RowPartials::sums_for`]) giving [`GlobalRows`]: the global
//!    log-sum-exp and target logit of every row; [`reduce_partials`] does
//!    both over a [`Communicator`];
//! 3. **phase 2** (per shard): the loss (the mean over the global batch,
//!    the same on every shard), this shard's `dW` (`C_k x D`, local, never
//!    communicated) and its partial `dX` (`B x D`), which the caller sums
//!    across shards (all-reduce `SUM`).
//!
//! Only `O(B)` row statistics and the `O(B x D)` gradient of the features
//! cross the wire; nothing `B x C`. `docs/SCALING.md` gives the volumes.
//!
//! **The EMA state stays identical on every shard without communication**:
//! the norm statistics are computed from the global batch, which every
//! shard holds in full, by the same deterministic code (row norms, then the
//! batch mean and unbiased std summed in row order), so every shard computes
//! the same bits and commits the same state in phase 2. A checkpoint needs
//! the state of one shard only. (Each shard's features must be the same
//! bits: all-gather them, do not recompute them per shard.)
//!
//! Backends: [`reference::ShardedReference`] (`f32`, `f64`) and
//! [`crate::cpu::ShardedCpuAdaFace`] (`f32`, `bf16`, `f16` inputs), both with
//! [`PartialFc`] sampling; on the kernels (`kernels` module, feature `cuda`
//! or `sim`): `sim::ShardedSimAdaFace` (with Partial FC) and
//! `cuda::ShardedCudaAdaFace` (device-side reduction through
//! `cuda::DeviceCommunicator`; Partial FC in `step_sampled`). [`ThreadComm`] runs `K`
//! shards as threads of one process (tests, single-machine runs); `NcclComm`
//! (feature `nccl`) runs them on GPUs.
//!
//! ```
//! use adaface::shard::{reference::ShardedReference, ShardSpec, ThreadComm};
//! use adaface::{AdaFaceConfig, Shape};
//!
//! let (b, d, c) = (3, 4, 5);
//! let x: Vec<f64> = (0..b * d).map(|i| (i as f64 * 0.37).sin() * 3.0).collect();
//! let w: Vec<f64> = (0..c * d).map(|i| (i as f64 * 0.91).cos()).collect();
//! let labels = [0i64, 3, 4];
//! let specs = ShardSpec::split(&[2, 3])?; // classes 0..2 and 2..5
//! let comms = ThreadComm::group(specs.len());
//! let losses: Vec<f64> = std::thread::scope(|s| {
//!     let handles: Vec<_> = specs.iter().zip(comms).map(|(spec, comm)| {
//!         let (x, w, labels) = (&x, &w, &labels);
//!         s.spawn(move || {
//!             let mut shard = ShardedReference::new(AdaFaceConfig::default(), *spec);
//!             let rows = spec.offset * d..(spec.offset + spec.classes) * d;
//!             let shape = Shape::new(b, d, spec.classes);
//!             let out = shard.step(&comm, shape, x, &w[rows], labels, None)?;
//!             Ok::<f64, adaface::Error>(out.loss)
//!         })
//!     }).collect();
//!     handles.into_iter().map(|h| h.join().unwrap()).collect::<Result<_, _>>()
//! })?;
//! assert_eq!(losses[0], losses[1]);
//! # Ok::<(), adaface::Error>(())
//! ```

mod comm;
#[cfg(any(feature = "cuda", feature = "sim"))]
pub mod kernels;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod reference;
mod sampling;

pub use comm::{CommReal, Communicator, ReduceOp, ThreadComm};
pub use sampling::PartialFc;

use crate::error::{Error, Result};
use crate::output::Diagnostics;
use crate::real::Real;
use crate::state::BatchStats;

/// The classes one shard holds: `[offset, offset + classes)` of
/// `total_classes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardSpec {
    /// Global index of the shard's first class.
    pub offset: usize,
    /// Classes in this shard, `C_k` (at least one).
    pub classes: usize,
    /// Classes over all shards, `C`.
    pub total_classes: usize,
}

impl ShardSpec {
    /// A shard; rejects an empty shard or one reaching past `total_classes`.
    pub fn new(offset: usize, classes: usize, total_classes: usize) -> Result<Self> {
        if classes == 0 {
            return Err(Error::InvalidShard {
                reason: "a shard must hold at least one class".into(),
            });
        }
        match offset.checked_add(classes) {
            Some(end) if end <= total_classes => Ok(ShardSpec {
                offset,
                classes,
                total_classes,
            }),
            _ => Err(Error::InvalidShard {
                reason: format!(
                    "classes {offset}..{offset}+{classes} do not fit in {total_classes} classes"
                ),
            }),
        }
    }

    /// Consecutive shards of the given sizes (each at least one), covering
    /// `0..sum(sizes)`.
    pub fn split(sizes: &[usize]) -> Result<Vec<ShardSpec>> {
        let total = sizes
            .iter()
            .try_fold(0usize, |a, &s| a.checked_add(s))
            .ok_or(Error::TooLarge { what: "classes" })?;
        let mut offset = 0;
        sizes
            .iter()
            .map(|&s| {
                let spec = ShardSpec::new(offset, s, total)?;
                offset += s;
                Ok(spec)
            })
            .collect()
    }

    /// `K` consecutive shards as even as possible (the first `C mod K` get
    /// one class more), as insightface splits classes over ranks.
    pub fn even(total_classes: usize, shards: usize) -> Result<Vec<ShardSpec>> {
        if shards == 0 || shards > total_classes {
            return Err(Error::InvalidShard {
                reason: format!("cannot split {total_classes} classes into {shards} shards"),
            });
        }
        let (q, r) = (total_classes / shards, total_classes % shards);
        let sizes: Vec<usize> = (0..shards).map(|k| q + usize::from(k < r)).collect();
        Self::split(&sizes)
    }

    /// The shard-local index of a global label, if this shard holds it.
    pub fn local(&self, label: i64) -> Option<usize> {
        let l = usize::try_from(label).ok()?;
        l.checked_sub(self.offset).filter(|&j| j < self.classes)
    }

    /// Rows `offset..offset + classes` of a global `C x dim` weight.
    pub fn slice<'a, E>(&self, global_weight: &'a [E], dim: usize) -> &'a [E] {
        &global_weight[self.offset * dim..(self.offset + self.classes) * dim]
    }
}

/// Phase-1 output of one shard: per row of the global batch, `O(B)` plain
/// arrays, ready for a collective.
#[derive(Debug, Clone, PartialEq)]
pub struct RowPartials<T> {
    /// Maximum over this shard's classes of the margin-adjusted logits.
    pub max: Vec<T>,
    /// `sum_j exp(logit_ij - max_i)` over this shard's classes.
    pub sumexp: Vec<T>,
    /// The margin-adjusted target logit where the row's label falls in this
    /// shard (and, when sampling, is sampled: positives always are), else 0.
    pub target_logit: Vec<T>,
    /// The clamped target cosine where the label falls in this shard, else 0.
    pub target_cosine: Vec<T>,
    /// 1 where the label falls in this shard, else 0.
    pub owned: Vec<T>,
}

/// The reduced row statistics phase 2 needs, the same on every shard.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalRows<T> {
    /// Global log-sum-exp of each row's margin-adjusted logits.
    pub lse: Vec<T>,
    /// Global target logit of each row.
    pub target_logit: Vec<T>,
    /// Global clamped target cosine of each row.
    pub target_cosine: Vec<T>,
}

impl<T: Real> RowPartials<T> {
    /// Rows of the batch.
    pub fn rows(&self) -> usize {
        self.max.len()
    }

    /// The `4 B` values to all-reduce with `SUM`, given the all-reduced
    /// (`MAX`) row maxima: `[sumexp * exp(max - global_max), target_logit,
    /// target_cosine, owned]`, concatenated.
    pub fn sums_for(&self, global_max: &[T]) -> Result<Vec<T>> {
        check_rows("global_max", global_max, self.rows())?;
        let mut out = Vec::with_capacity(4 * self.rows());
        out.extend(
            self.sumexp
                .iter()
                .zip(&self.max)
                .zip(global_max)
                .map(|((&s, &m), &g)| s * (m - g).exp()),
        );
        out.extend_from_slice(&self.target_logit);
        out.extend_from_slice(&self.target_cosine);
        out.extend_from_slice(&self.owned);
        Ok(out)
    }
}

impl<T: Real> GlobalRows<T> {
    /// Finishes the reduction: `lse = global_max + ln(sum)` from the
    /// all-reduced maxima and the all-reduced [`RowPartials::sums_for`].
    /// Fails if a row's label is held by no shard or by several (shards
    /// that do not partition the classes).
    pub fn from_reduced(global_max: &[T], sums: &[T]) -> Result<Self> {
        let b = global_max.len();
        check_rows("summed row statistics", sums, 4 * b)?;
        for (row, &o) in sums[3 * b..].iter().enumerate() {
            if o != T::ONE {
                return Err(Error::InvalidShard {
                    reason: format!(
                        "the label of row {row} is held by {} shards, not exactly one",
                        o.to_f64()
                    ),
                });
            }
        }
        Ok(GlobalRows {
            lse: global_max
                .iter()
                .zip(&sums[..b])
                .map(|(&m, &s)| m + s.ln())
                .collect(),
            target_logit: sums[b..2 * b].to_vec(),
            target_cosine: sums[2 * b..3 * b].to_vec(),
        })
    }

    /// Rows of the batch.
    pub fn rows(&self) -> usize {
        self.lse.len()
    }

    /// Checks that these statistics fit a batch of `rows` rows and are
    /// finite (phase 2 calls it before writing anything).
    pub fn validate(&self, rows: usize) -> Result<()> {
        for (what, v) in [
            ("lse", &self.lse),
            ("target_logit", &self.target_logit),
            ("target_cosine", &self.target_cosine),
        ] {
            check_rows(what, v, rows)?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::InvalidShard {
                    reason: format!("{what}[{i}] is not finite"),
                });
            }
        }
        Ok(())
    }
}

fn check_rows<T>(what: &str, v: &[T], rows: usize) -> Result<()> {
    if v.len() != rows {
        return Err(Error::InvalidShard {
            reason: format!("{what} has {} values for {rows} rows", v.len()),
        });
    }
    Ok(())
}

/// Step 2 of the protocol over `comm`: all-reduce `MAX` of the maxima, then
/// all-reduce `SUM` of [`RowPartials::sums_for`]; every shard gets the same
/// [`GlobalRows`].
pub fn reduce_partials<T: CommReal, C: Communicator + ?Sized>(
    comm: &C,
    partials: &RowPartials<T>,
) -> Result<GlobalRows<T>> {
    let mut global_max = partials.max.clone();
    T::all_reduce(comm, &mut global_max, ReduceOp::Max)?;
    let mut sums = partials.sums_for(&global_max)?;
    T::all_reduce(comm, &mut sums, ReduceOp::Sum)?;
    GlobalRows::from_reduced(&global_max, &sums)
}

/// Result of one shard's phase 2.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardStepOutput<T> {
    /// Mean loss over the global batch (the same on every shard).
    pub loss: T,
    /// This shard's partial `d loss / d x`, `B x D`: sum it over shards.
    /// ([`reference::ShardedReference::step`] returns the sum.)
    pub grad_features: Vec<T>,
    /// `d loss / d W` of this shard's classes, `C_k x D`; exactly zero on
    /// classes Partial FC did not sample.
    pub grad_weight: Vec<T>,
    /// The sampled shard-local class indices (sorted) when Partial FC
    /// sampling is on; `None` when every class took part.
    pub sampled: Option<Vec<usize>>,
    /// Per-row values of the global batch (the same on every shard).
    pub diagnostics: Diagnostics<T>,
    /// The global batch's norm statistics and the EMA state after them.
    pub stats: BatchStats<T>,
}
