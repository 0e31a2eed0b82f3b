//! The loss object of the simulated backend, the twin of `cuda::CudaAdaFace`.

use super::ffi::{launch, SimLaunch};
use crate::config::AdaFaceConfig;
use crate::error::Result;
use crate::kernel_params::AdafaceStepRecord;
use crate::launch::{
    check_call, flash_aligned, KernelElement, KernelLabel, KernelLaunch, LaunchDims, LaunchParams,
    Pass, PlanLimits, StepBuffers, StepPlan, StepSummary,
};
use crate::shape::Shape;
use crate::state::EmaState;

/// The AdaFace loss on the simulator: owns the EMA state (a host buffer the
/// kernels update, as the device buffer on a GPU) and a reusable workspace.
#[derive(Debug, Clone)]
pub struct SimAdaFace {
    cfg: AdaFaceConfig,
    limits: PlanLimits,
    /// `[batch_mean, batch_std, curricular_t]`, as the CUDA loss keeps it.
    state: [f64; 3],
    workspace: Vec<f32>,
    last_plan: Option<StepPlan>,
    /// The latest step's record: a rejected step has no diagnostics.
    last_record: Option<AdafaceStepRecord>,
}

/// A finished simulated step: the same accessors as [`crate::cuda::CudaStep`].
#[derive(Debug, Clone, Copy)]
pub struct SimStep {
    record: AdafaceStepRecord,
    shape: Shape,
}

impl SimStep {
    /// Loss, batch statistics and EMA state after the step, or the error
    /// the kernels detected.
    pub fn summary(&self) -> Result<StepSummary> {
        StepSummary::from_record(&self.record, &self.shape)
    }

    /// The mean loss, or the error the kernels detected.
    pub fn loss(&self) -> Result<f64> {
        Ok(self.summary()?.loss)
    }
}

pub(super) fn sim_launch(d: &LaunchDims) -> SimLaunch {
    SimLaunch::new(d.grid, d.block, d.shared_bytes)
}

/// Runs `launches` in order on the simulator, each kernel's `_sim` entry
/// taken from the kernel table with the parameter struct it declares.
///
/// # Safety
///
/// Every address in the launches' parameters must be valid for every
/// access the kernel makes with its geometry, as for [`launch`].
pub(super) unsafe fn run_launches(launches: &[KernelLaunch]) -> Result<()> {
    for l in launches {
        let dims = sim_launch(&l.dims);
        let k = l.kernel;
        // SAFETY: the entry takes the struct it is given (checked by
        // sim_entry); the caller vouches for the addresses.
        unsafe {
            match &l.params {
                LaunchParams::Stats(p) => launch(k.sim_entry()?, &dims, p)?,
                LaunchParams::Tile(p) => launch(k.sim_entry()?, &dims, p)?,
                LaunchParams::Combine(p) => launch(k.sim_entry()?, &dims, p)?,
                LaunchParams::Dx(p) => launch(k.sim_entry()?, &dims, p)?,
                LaunchParams::Shard(p) => launch(k.sim_entry()?, &dims, p)?,
            }
        }
    }
    Ok(())
}

impl SimAdaFace {
    /// A loss with the config's initial EMA state.
    pub fn new(cfg: AdaFaceConfig) -> Self {
        let init = cfg.initial_state();
        SimAdaFace {
            cfg,
            limits: PlanLimits::default(),
            state: [init.batch_mean, init.batch_std, init.curricular_t],
            workspace: Vec::new(),
            last_plan: None,
            last_record: None,
        }
    }

    /// Replaces the planning limits (tests force several tiles per split).
    pub fn with_limits(mut self, limits: PlanLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The config.
    pub fn config(&self) -> &AdaFaceConfig {
        &self.cfg
    }

    /// The EMA state.
    pub fn state(&self) -> Result<EmaState> {
        Ok(EmaState {
            batch_mean: self.state[0],
            batch_std: self.state[1],
            curricular_t: self.state[2],
        })
    }

    /// Restores the EMA state (validated first).
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        state.validate()?;
        self.state = [state.batch_mean, state.batch_std, state.curricular_t];
        Ok(())
    }

    /// Evaluation: the loss only; `update_state` chooses whether the EMA moves.
    pub fn forward<E: KernelElement, L: KernelLabel>(
        &mut self,
        shape: Shape,
        x: &[E],
        w: &[E],
        labels: &[L],
        update_state: bool,
    ) -> Result<SimStep> {
        check_call(&shape, x.len(), w.len(), labels.len(), None)?;
        self.run(shape, Pass::Forward, x, w, labels, None, update_state)
    }

    /// A training step: loss, `dX` and `dW` (f32), and the EMA update. On a
    /// device-detected error `dX`, `dW` and the state are untouched.
    pub fn forward_backward<E: KernelElement, L: KernelLabel>(
        &mut self,
        shape: Shape,
        x: &[E],
        w: &[E],
        labels: &[L],
        dx: &mut [f32],
        dw: &mut [f32],
    ) -> Result<SimStep> {
        check_call(
            &shape,
            x.len(),
            w.len(),
            labels.len(),
            Some((dx.len(), dw.len())),
        )?;
        self.run(
            shape,
            Pass::ForwardBackward,
            x,
            w,
            labels,
            Some((dx, dw)),
            true,
        )
    }

    /// Per-row `||x_i||` and margin scaler `z_i` of the latest step (empty
    /// before the first). After a step the kernels rejected: that step's
    /// error, never its partial values.
    pub fn row_diagnostics(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let Some(plan) = self.last_plan.as_ref() else {
            return Ok((Vec::new(), Vec::new()));
        };
        if let Some(record) = &self.last_record {
            crate::launch::check_record(record, &plan.shape)?;
        }
        let b = plan.shape.batch;
        let l = &plan.workspace;
        Ok((
            self.workspace[l.row_norm..l.row_norm + b].to_vec(),
            self.workspace[l.row_z..l.row_z + b].to_vec(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn run<E: KernelElement, L: KernelLabel>(
        &mut self,
        shape: Shape,
        pass: Pass,
        x: &[E],
        w: &[E],
        labels: &[L],
        grads: Option<(&mut [f32], &mut [f32])>,
        commit_state: bool,
    ) -> Result<SimStep> {
        let limits = PlanLimits {
            flash: self.limits.flash && flash_aligned(x.as_ptr() as u64, w.as_ptr() as u64),
            ..self.limits
        };
        let plan = StepPlan::new(shape, pass, E::DTYPE, limits)?;
        if self.workspace.len() < plan.workspace.len {
            self.workspace.resize(plan.workspace.len, 0.0);
        }
        let mut record = AdafaceStepRecord::default();
        let state = self.state.as_mut_ptr();
        let mut bufs = StepBuffers {
            x: x.as_ptr() as u64,
            w: w.as_ptr() as u64,
            labels: labels.as_ptr() as u64,
            state: state as u64,
            curricular_t: state.wrapping_add(2) as u64,
            record: &mut record as *mut AdafaceStepRecord as u64,
            workspace: self.workspace.as_mut_ptr() as u64,
            dx: 0,
            dw: 0,
        };
        if let Some((dx, dw)) = grads {
            bufs.dx = dx.as_mut_ptr() as u64;
            bufs.dw = dw.as_mut_ptr() as u64;
        }
        let launches = plan.launches::<E, L>(&self.cfg, &bufs, commit_state)?;
        // SAFETY: every address points into a buffer borrowed for this call
        // whose length check_call and the plan verified (x, w, labels, dx,
        // dw, the workspace of plan.workspace.len elements, the state and
        // the record); the kernels bound every index by the shape.
        unsafe { run_launches(&launches)? };
        self.last_plan = Some(plan);
        self.last_record = Some(record);
        Ok(SimStep { record, shape })
    }
}

/// Runs every step of a case file on the simulator with inputs rounded to
/// `E` (the eval tool's `--device sim`), carrying the EMA state.
pub fn eval_case<E: KernelElement>(
    case: &crate::golden::Case,
) -> Result<Vec<crate::golden::EvalStep>> {
    let shape = case.shape;
    // Sizes against the data before anything is allocated from them.
    shape.check_nonempty()?;
    shape.check_len(crate::Tensor::Weight, case.weight.len())?;
    let weight: Vec<E> = case.weight.iter().map(|&v| E::from_f64(v)).collect();
    let mut loss = SimAdaFace::new(case.config);
    let mut out = Vec::with_capacity(case.steps.len());
    for step in &case.steps {
        shape.check_len(crate::Tensor::Features, step.features.len())?;
        shape.check_len(crate::Tensor::Labels, step.labels.len())?;
        let features: Vec<E> = step.features.iter().map(|&v| E::from_f64(v)).collect();
        let mut dx = vec![0.0f32; shape.features_len()?];
        let mut dw = vec![0.0f32; shape.weight_len()?];
        let summary = loss
            .forward_backward(shape, &features, &weight, &step.labels, &mut dx, &mut dw)?
            .summary()?;
        let (norms, z) = loss.row_diagnostics()?;
        out.push(crate::golden::EvalStep {
            loss: summary.loss,
            norms: norms.iter().map(|&v| v as f64).collect(),
            margin_scaler: z.iter().map(|&v| v as f64).collect(),
            grad_features: dx.iter().map(|&v| v as f64).collect(),
            grad_weight: dw.iter().map(|&v| v as f64).collect(),
            state_after: summary.state_after,
            logits: None,
        });
    }
    Ok(out)
}
