//! The class-sharded step on the simulator: the kernels and launch
//! parameters of the CUDA sharded step ([`crate::shard::kernels`]) over
//! host buffers, with the collectives of any [`Communicator`].

use super::loss::run_launches;
use crate::config::AdaFaceConfig;
use crate::error::{Error, Result};
use crate::kernel_params::AdafaceStepRecord;
use crate::launch::{
    check_grads, check_record, flash_aligned, KernelElement, KernelLabel, PlanLimits, StepBuffers,
    StepSummary,
};
use crate::shape::{check_labels, Shape};
use crate::shard::kernels::{partials_from_rows, rows_from_global, RowsMode, ShardPlan};
use crate::shard::{Communicator, GlobalRows, PartialFc, ReduceOp, RowPartials, ShardSpec};
use crate::state::EmaState;

/// One shard of the loss on the simulator, owning its copy of the EMA
/// state (the same on every shard: see [`crate::shard`]), a workspace and
/// the `5 B` row-statistics buffer the collectives reduce in place.
#[derive(Debug, Clone)]
pub struct ShardedSimAdaFace {
    cfg: AdaFaceConfig,
    limits: PlanLimits,
    spec: ShardSpec,
    state: [f64; 2],
    workspace: Vec<f32>,
    rows: Vec<f32>,
    record: AdafaceStepRecord,
    /// Bumped by every phase 1, phase 2 and state change: a pending step
    /// from another epoch is refused.
    epoch: u64,
}

/// What phase 1 leaves for phase 2 (the per-row data stay in the shard's
/// workspace). With Partial FC: the gathered weight of the sampled classes
/// and the labels as indices into it.
#[derive(Debug)]
pub struct SimShardPending<E> {
    epoch: u64,
    plan: ShardPlan,
    inputs: [usize; 3],
    /// The sampled classes (with Partial FC, all of them included).
    classes: Option<Vec<usize>>,
    /// The gathered weight when Partial FC dropped some class.
    sampled: Option<Sampled<E>>,
}

#[derive(Debug)]
struct Sampled<E> {
    classes: Vec<usize>,
    weight: Vec<E>,
    labels: Vec<i64>,
}

/// Result of one shard's phase 2 on the simulator; the gradients went to
/// the caller's buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct SimShardStep {
    /// Loss over the global batch, its norm statistics and the EMA state
    /// after the step (the same on every shard).
    pub summary: StepSummary,
    /// The sampled shard-local class indices (sorted) with Partial FC.
    pub sampled: Option<Vec<usize>>,
}

impl ShardedSimAdaFace {
    /// Shard `spec`, from the config's initial state.
    pub fn new(cfg: AdaFaceConfig, spec: ShardSpec) -> Self {
        let init = cfg.initial_state();
        ShardedSimAdaFace {
            cfg,
            limits: PlanLimits::default(),
            spec,
            state: [init.batch_mean, init.batch_std],
            workspace: Vec::new(),
            rows: Vec::new(),
            record: AdafaceStepRecord::default(),
            epoch: 0,
        }
    }

    /// Replaces the planning limits (tests force several splits per shard).
    pub fn with_limits(mut self, limits: PlanLimits) -> Self {
        self.limits = limits;
        self
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
        EmaState::new(self.state[0], self.state[1])
    }

    /// Restores an EMA state (validated first); a pending phase 1 is void.
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        state.validate()?;
        self.state = [state.batch_mean, state.batch_std];
        self.epoch += 1;
        Ok(())
    }

    /// Phase 1: `shape` is `(B, D, C_k)`, `features` the global `B x D`
    /// batch, `weight` this shard's `C_k x D` rows, `labels` global (in
    /// `0..C`). With `sampling = Some((partial_fc, step))` only the sampled
    /// classes take part. Kernel-detected errors (labels, non-finite or
    /// zero rows) are returned here; the EMA state does not move.
    pub fn phase1<E: KernelElement, L: KernelLabel>(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
        sampling: Option<(&PartialFc, u64)>,
    ) -> Result<(RowPartials<f32>, SimShardPending<E>)> {
        self.cfg.margin().require_affine("sharded sim")?;
        let pending = self.phase1_kernels(shape, features, weight, labels, sampling)?;
        check_record(&self.record, &self.global_shape(shape))?;
        let b = shape.batch;
        Ok((partials_from_rows(&self.rows[..5 * b], b), pending))
    }

    /// Phase 2: given the reduced row statistics, writes this shard's `dW`
    /// (`C_k x D`, exactly zero on unsampled classes) into `grad_weight` and
    /// its partial `dX` (`B x D`, to be summed over shards) into
    /// `grad_features`, and commits the EMA state. `features`, `weight` and
    /// `labels` must be the buffers phase 1 saw. Checks everything before
    /// writing anything.
    #[allow(clippy::too_many_arguments)]
    pub fn phase2<E: KernelElement, L: KernelLabel>(
        &mut self,
        pending: &SimShardPending<E>,
        features: &[E],
        weight: &[E],
        labels: &[L],
        global: &GlobalRows<f32>,
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<SimShardStep> {
        self.check_pending(pending, features, weight, labels)?;
        global.validate(pending.plan.batch())?;
        self.check_grads(pending, grad_features, grad_weight)?;
        self.rows = rows_from_global(global);
        self.phase2_kernels(
            pending,
            features,
            weight,
            labels,
            grad_features,
            grad_weight,
        )
    }

    /// The whole step over `comm`, as on GPUs: phase 1, the in-place
    /// reduction of the row statistics (all-reduce `MAX`, rescale, all-reduce
    /// `SUM`, ownership check: the kernels of [`crate::shard::kernels`]),
    /// phase 2 and the all-reduce of `dX`, so `grad_features` ends as the
    /// full `dX`. Every rank must call it with the same global features and
    /// labels (see [`crate::cpu::ShardedCpuAdaFace::step`]).
    #[allow(clippy::too_many_arguments)]
    pub fn step<E: KernelElement, L: KernelLabel, C: Communicator + ?Sized>(
        &mut self,
        comm: &C,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
        sampling: Option<(&PartialFc, u64)>,
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<SimShardStep> {
        // As on GPUs, nothing is read back before the reductions: a shard
        // whose kernels found an error reduces NaN statistics, so every
        // rank fails the ownership check below (kernels/shard.cu).
        let pending = self.phase1_kernels(shape, features, weight, labels, sampling)?;
        self.check_grads(&pending, grad_features, grad_weight)?;
        let b = shape.batch;
        comm.all_reduce_f32(&mut self.rows[..b], ReduceOp::Max)?;
        self.rows_kernel(&pending, features, weight, labels, RowsMode::Rescale)?;
        comm.all_reduce_f32(&mut self.rows[b..5 * b], ReduceOp::Sum)?;
        self.rows_kernel(&pending, features, weight, labels, RowsMode::Check)?;
        // The same sums on every rank: all fail here alike (a shard's own
        // error first, with the global class count a label is checked
        // against).
        check_record(&self.record, &self.global_shape(shape))?;
        let out = self.phase2_kernels(
            &pending,
            features,
            weight,
            labels,
            grad_features,
            grad_weight,
        )?;
        comm.all_reduce_f32(grad_features, ReduceOp::Sum)?;
        Ok(out)
    }

    fn phase1_kernels<E: KernelElement, L: KernelLabel>(
        &mut self,
        shape: Shape,
        features: &[E],
        weight: &[E],
        labels: &[L],
        sampling: Option<(&PartialFc, u64)>,
    ) -> Result<SimShardPending<E>> {
        self.epoch += 1;
        if shape.classes != self.spec.classes {
            return Err(Error::InvalidShard {
                reason: format!(
                    "shape has {} classes, the shard holds {}",
                    shape.classes, self.spec.classes
                ),
            });
        }
        crate::launch::check_call(&shape, features.len(), weight.len(), labels.len(), None)?;
        let inputs = [
            features.as_ptr() as usize,
            weight.as_ptr() as usize,
            labels.as_ptr() as usize,
        ];
        let classes = match sampling {
            Some((p, step)) => Some(p.sample(&self.spec, labels, step)?),
            None => None,
        };
        // Every class kept (sample_rate = 1, or a shard all positives): the
        // unsampled step, bit for bit.
        let sampled = classes
            .as_ref()
            .filter(|c| c.len() < self.spec.classes)
            .map(|c| gather(&self.spec, c.clone(), weight, labels, shape.dim));
        let (plan, pending_sampled) = match sampled {
            None => {
                let plan = self.plan::<E>(self.spec, shape, features, weight)?;
                self.run_phase1(&plan, features, weight, labels)?;
                (plan, None)
            }
            Some(s) => {
                // The sampled classes as a shard of their own at offset 0;
                // rows whose label is not sampled here point past them.
                check_labels(labels, self.spec.total_classes)?;
                let spec = ShardSpec::new(0, s.classes.len(), self.spec.total_classes)?;
                let compact = Shape::new(shape.batch, shape.dim, s.classes.len());
                let plan = self.plan::<E>(spec, compact, features, &s.weight)?;
                self.run_phase1(&plan, features, &s.weight, &s.labels)?;
                (plan, Some(s))
            }
        };
        Ok(SimShardPending {
            epoch: self.epoch,
            plan,
            inputs,
            classes,
            sampled: pending_sampled,
        })
    }

    fn plan<E: KernelElement>(
        &self,
        spec: ShardSpec,
        shape: Shape,
        x: &[E],
        w: &[E],
    ) -> Result<ShardPlan> {
        let limits = PlanLimits {
            flash: self.limits.flash && flash_aligned(x.as_ptr() as u64, w.as_ptr() as u64),
            ..self.limits
        };
        ShardPlan::new(spec, shape, E::DTYPE, limits)
    }

    fn buffers<E, L>(&mut self, x: &[E], w: &[E], labels: &[L]) -> StepBuffers {
        StepBuffers {
            x: x.as_ptr() as u64,
            w: w.as_ptr() as u64,
            labels: labels.as_ptr() as u64,
            state: self.state.as_mut_ptr() as u64,
            // The sharded step takes the affine policies only.
            curricular_t: 0,
            record: &mut self.record as *mut AdafaceStepRecord as u64,
            workspace: self.workspace.as_mut_ptr() as u64,
            dx: 0,
            dw: 0,
        }
    }

    fn run_phase1<E: KernelElement, L: KernelLabel>(
        &mut self,
        plan: &ShardPlan,
        x: &[E],
        w: &[E],
        labels: &[L],
    ) -> Result<()> {
        let p = &plan.plan;
        if self.workspace.len() < p.workspace.len {
            self.workspace.resize(p.workspace.len, 0.0);
        }
        self.rows.resize(plan.rows_len(), 0.0);
        self.record = AdafaceStepRecord::default();
        let bufs = self.buffers(x, w, labels);
        let rows = self.rows.as_mut_ptr() as u64;
        let launches = plan.phase1_launches::<E, L>(&self.cfg, &bufs, rows)?;
        // SAFETY: every address points into a buffer borrowed for this call
        // (x, w, labels of the lengths check_call verified) or owned by the
        // shard (the workspace of the plan's length, the rows buffer of
        // 5 B, the state and the record); the kernels bound every index by
        // the shape.
        unsafe { run_launches(&launches) }
    }

    /// `shape` with the global class count, which a recorded label error
    /// names.
    fn global_shape(&self, shape: Shape) -> Shape {
        Shape::new(shape.batch, shape.dim, self.spec.total_classes)
    }

    fn rows_kernel<E: KernelElement, L: KernelLabel>(
        &mut self,
        pending: &SimShardPending<E>,
        x: &[E],
        w: &[E],
        labels: &[L],
        mode: RowsMode,
    ) -> Result<()> {
        let plan = &pending.plan;
        let rows = self.rows.as_mut_ptr() as u64;
        let launch = match &pending.sampled {
            None => {
                let bufs = self.buffers(x, w, labels);
                plan.rows_kernel_launch(L::SUFFIX, &bufs, rows, mode)?
            }
            Some(s) => {
                // The shard's own remapped labels.
                let bufs = self.buffers(x, &s.weight, &s.labels);
                plan.rows_kernel_launch(i64::SUFFIX, &bufs, rows, mode)?
            }
        };
        // SAFETY: labels (B), the workspace, the rows buffer (5 B) and the
        // record, all live for the call.
        unsafe { run_launches(&[launch]) }
    }

    fn check_pending<E: KernelElement, L: KernelLabel>(
        &self,
        pending: &SimShardPending<E>,
        x: &[E],
        w: &[E],
        labels: &[L],
    ) -> Result<()> {
        if pending.epoch != self.epoch {
            return Err(Error::InvalidShard {
                reason: "phase 2 of another phase 1 (or the EMA state changed since)".into(),
            });
        }
        let inputs = [
            x.as_ptr() as usize,
            w.as_ptr() as usize,
            labels.as_ptr() as usize,
        ];
        if inputs != pending.inputs {
            return Err(Error::InvalidShard {
                reason: "phase 2 must see the features, weight and labels phase 1 saw".into(),
            });
        }
        Ok(())
    }

    fn check_grads<E>(
        &self,
        pending: &SimShardPending<E>,
        grad_features: &[f32],
        grad_weight: &[f32],
    ) -> Result<()> {
        let shape = pending.plan.plan.shape;
        let shard = Shape::new(shape.batch, shape.dim, self.spec.classes);
        check_grads(&shard, grad_features.len(), grad_weight.len())
    }

    fn phase2_kernels<E: KernelElement, L: KernelLabel>(
        &mut self,
        pending: &SimShardPending<E>,
        x: &[E],
        w: &[E],
        labels: &[L],
        grad_features: &mut [f32],
        grad_weight: &mut [f32],
    ) -> Result<SimShardStep> {
        self.epoch += 1;
        match &pending.sampled {
            None => {
                self.run_phase2(&pending.plan, x, w, labels, grad_features, grad_weight)?;
            }
            Some(s) => {
                let d = pending.plan.plan.shape.dim;
                let mut compact = vec![0.0f32; s.classes.len() * d];
                self.run_phase2(
                    &pending.plan,
                    x,
                    &s.weight,
                    &s.labels,
                    grad_features,
                    &mut compact,
                )?;
                grad_weight.fill(0.0);
                for (k, &j) in s.classes.iter().enumerate() {
                    grad_weight[j * d..(j + 1) * d].copy_from_slice(&compact[k * d..(k + 1) * d]);
                }
            }
        }
        let shape = pending.plan.plan.shape;
        let global = Shape::new(shape.batch, shape.dim, self.spec.total_classes);
        Ok(SimShardStep {
            summary: StepSummary::from_record(&self.record, &global)?,
            sampled: pending.classes.clone(),
        })
    }

    fn run_phase2<E: KernelElement, L: KernelLabel>(
        &mut self,
        plan: &ShardPlan,
        x: &[E],
        w: &[E],
        labels: &[L],
        dx: &mut [f32],
        dw: &mut [f32],
    ) -> Result<()> {
        let mut bufs = self.buffers(x, w, labels);
        bufs.dx = dx.as_mut_ptr() as u64;
        bufs.dw = dw.as_mut_ptr() as u64;
        let rows = self.rows.as_mut_ptr() as u64;
        let launches = plan.phase2_launches::<E, L>(&self.cfg, &bufs, rows)?;
        // SAFETY: as in phase 1, plus dx (B x D) and dw (C_k x D) whose
        // lengths check_grads verified (dw: the compact buffer when
        // sampling); the workspace still holds phase 1's per-row data.
        unsafe { run_launches(&launches) }
    }
}

/// The sampled classes' weight rows, and the labels as indices into them
/// (`classes.len()`, past them, where the label is not sampled here).
fn gather<E: KernelElement, L: KernelLabel>(
    spec: &ShardSpec,
    classes: Vec<usize>,
    weight: &[E],
    labels: &[L],
    dim: usize,
) -> Sampled<E> {
    let weight = classes
        .iter()
        .flat_map(|&j| weight[j * dim..(j + 1) * dim].iter().copied())
        .collect();
    let n = classes.len() as i64;
    let labels = labels
        .iter()
        .map(|l| {
            spec.local(l.to_i64())
                .and_then(|j| classes.binary_search(&j).ok())
                .map_or(n, |k| k as i64)
        })
        .collect();
    Sampled {
        classes,
        weight,
        labels,
    }
}
