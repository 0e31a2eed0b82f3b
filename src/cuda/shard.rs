//! The class-sharded step on CUDA: the kernels and launch parameters of
//! [`crate::shard::kernels`] (the simulator runs the same), with the row
//! statistics reduced in place on the device through a
//! [`DeviceCommunicator`] (NCCL: `crate::shard::nccl::NcclComm`), so a step
//! queues everything on the stream and never waits for the GPU.

use std::sync::Arc;

use cudarc::driver::{
    CudaModule, CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr,
};

use super::backend;
use super::loss::{bounded_limits, launch_all, mark_loss_unset, CudaStep, DeviceStart};
use crate::config::AdaFaceConfig;
use crate::error::{Error, Result};
use crate::kernel_params::AdafaceStepRecord;
use crate::launch::{
    check_call, flash_aligned, KernelElement, KernelLabel, PlanLimits, StepBuffers,
};
use crate::shape::Shape;
use crate::shard::kernels::{partials_from_rows, rows_from_global, RowsMode, ShardPlan};
use crate::shard::{Communicator, GlobalRows, PartialFc, ReduceOp, RowPartials, ShardSpec};
use crate::state::EmaState;

/// The collectives of the CUDA sharded step, on device buffers.
///
/// Every rank must make the same calls in the same order with buffers of
/// the same length, and get the same bits back (NCCL's all-reduce does).
pub trait DeviceCommunicator {
    /// In-place all-reduce of `f32` device values, ordered after the work
    /// already queued on `stream` and before the work queued after it.
    fn all_reduce_device(
        &self,
        stream: &Arc<CudaStream>,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
    ) -> Result<()>;
}

/// Any host [`Communicator`] (e.g. [`crate::shard::ThreadComm`]) as a
/// [`DeviceCommunicator`]: each collective copies the values to the host,
/// synchronising with the stream, reduces them there and copies them back.
/// For tests and single-machine runs; NCCL reduces on the device.
#[derive(Debug, Clone)]
pub struct HostStaged<C>(pub C);

impl<C: Communicator> DeviceCommunicator for HostStaged<C> {
    fn all_reduce_device(
        &self,
        stream: &Arc<CudaStream>,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
    ) -> Result<()> {
        let mut host = stream
            .clone_dtoh(&*buf)
            .map_err(backend("copy to the host for a collective"))?;
        self.0.all_reduce_f32(&mut host, op)?;
        stream
            .memcpy_htod(&host, buf)
            .map_err(backend("copy back from a collective"))?;
        // The host buffer is dropped on return: wait for the copy.
        stream.synchronize().map_err(backend("synchronise"))
    }
}

/// One shard of the loss on a CUDA stream: owns its copy of the EMA state
/// on the device (the same on every shard: see [`crate::shard`]), a
/// workspace and the `5 B` row-statistics buffer the collectives reduce in
/// place.
pub struct ShardedCudaAdaFace {
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    cfg: AdaFaceConfig,
    limits: PlanLimits,
    /// Compute capability 9.0: the module has the wgmma kernels.
    wgmma_capable: bool,
    spec: ShardSpec,
    state: CudaSlice<f64>,
    workspace: Option<CudaSlice<f32>>,
    rows: Option<CudaSlice<f32>>,
    record: Option<CudaSlice<AdafaceStepRecord>>,
    epoch: u64,
}

/// What phase 1 leaves for phase 2 (the per-row data stay in the shard's
/// workspace on the device).
#[derive(Debug)]
pub struct CudaShardPending {
    epoch: u64,
    plan: ShardPlan,
    inputs: [u64; 3],
    label: &'static str,
}

impl ShardedCudaAdaFace {
    /// Shard `spec` on `stream`: compiles (or takes from the cache) the
    /// kernels and uploads the config's initial EMA state.
    pub fn new(stream: Arc<CudaStream>, cfg: AdaFaceConfig, spec: ShardSpec) -> Result<Self> {
        let start = DeviceStart::new(&stream, &cfg)?;
        Ok(ShardedCudaAdaFace {
            stream,
            module: start.module,
            cfg,
            limits: start.limits,
            wgmma_capable: start.wgmma_capable,
            spec,
            state: start.state,
            workspace: None,
            rows: None,
            record: None,
            epoch: 0,
        })
    }

    /// Replaces the planning limits (tests use small ones); the device's
    /// own limits on the flash and wgmma kernels still apply.
    pub fn with_limits(mut self, limits: PlanLimits) -> Self {
        self.limits = bounded_limits(self.limits, self.wgmma_capable, limits);
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

    /// The stream every call runs on (an NCCL communicator must use it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Reads the EMA state (synchronises).
    pub fn state(&self) -> Result<EmaState> {
        let v = self
            .stream
            .clone_dtoh(&self.state)
            .map_err(backend("read EMA state"))?;
        Ok(EmaState::new(v[0], v[1]))
    }

    /// Restores the EMA state (validated first); a pending phase 1 is void.
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        state.validate()?;
        self.epoch += 1;
        self.stream
            .memcpy_htod(
                &[state.batch_mean, state.batch_std],
                &mut self.state.slice_mut(0..2),
            )
            .map_err(backend("write EMA state"))
    }

    /// The device buffer of the EMA state, `[batch_mean, batch_std]` in
    /// `f64` (and a third value the sharded step never reads: the buffer is
    /// laid out as [`crate::cuda::CudaAdaFace`]'s), for frameworks that keep the state in their own device tensors
    /// (as [`crate::cuda::CudaAdaFace::state_buffer_mut`]); not validated. A
    /// pending phase 1 is void (as after [`set_state`](Self::set_state)).
    pub fn state_buffer_mut(&mut self) -> &mut CudaSlice<f64> {
        self.epoch += 1;
        &mut self.state
    }

    /// The `5 B` row statistics on the device, `[max | sumexp | target
    /// logit | target cosine | owned]` ([`RowPartials`] concatenated), for
    /// a caller reducing them over its own transport: all-reduce `MAX` of
    /// the first `B`, [`rescale`](Self::rescale), all-reduce `SUM` of the
    /// other `4 B`. `None` before the first phase 1.
    pub fn row_stats_mut(&mut self) -> Option<&mut CudaSlice<f32>> {
        self.rows.as_mut()
    }

    fn buffers(&mut self, x: u64, w: u64, labels: u64) -> Result<(StepBuffers, u64)> {
        let stream = self.stream.clone();
        let missing = || Error::Backend {
            message: "sharded step buffers".into(),
        };
        let (s_ptr, _gs) = self.state.device_ptr_mut(&stream);
        let (r_ptr, _gr) = self
            .record
            .as_mut()
            .ok_or_else(missing)?
            .device_ptr_mut(&stream);
        let (ws_ptr, _gws) = self
            .workspace
            .as_mut()
            .ok_or_else(missing)?
            .device_ptr_mut(&stream);
        let (rows_ptr, _grows) = self
            .rows
            .as_mut()
            .ok_or_else(missing)?
            .device_ptr_mut(&stream);
        Ok((
            StepBuffers {
                x,
                w,
                labels,
                state: s_ptr,
                // The sharded step takes the affine policies only.
                curricular_t: 0,
                record: r_ptr,
                workspace: ws_ptr,
                dx: 0,
                dw: 0,
            },
            rows_ptr,
        ))
    }

    /// Phase 1, queued on the stream: `shape` is `(B, D, C_k)`, `x` the
    /// global `B x D` batch, `w` this shard's `C_k x D` rows, `labels`
    /// global (in `0..C`). Leaves the row statistics in
    /// [`row_stats_mut`](Self::row_stats_mut). Kernel-detected errors show
    /// in the step phase 2 returns; the EMA state does not move.
    pub fn phase1<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        x: &impl DevicePtr<E>,
        w: &impl DevicePtr<E>,
        labels: &impl DevicePtr<L>,
    ) -> Result<CudaShardPending> {
        self.cfg.margin().require_affine("sharded cuda")?;
        self.epoch += 1;
        check_call(&shape, x.len(), w.len(), labels.len(), None)?;
        let stream = self.stream.clone();
        let (x_ptr, _gx) = x.device_ptr(&stream);
        let (w_ptr, _gw) = w.device_ptr(&stream);
        let (l_ptr, _gl) = labels.device_ptr(&stream);
        let limits = PlanLimits {
            flash: self.limits.flash && flash_aligned(x_ptr, w_ptr),
            ..self.limits
        };
        let plan = ShardPlan::new(self.spec, shape, E::DTYPE, limits)?;
        let p = &plan.plan;
        let need = p.workspace.len.max(1);
        if self.workspace.as_ref().map_or(true, |ws| ws.len() < need) {
            // SAFETY: every region is written by a kernel before it is read.
            self.workspace =
                Some(unsafe { stream.alloc::<f32>(need) }.map_err(backend("alloc workspace"))?);
        }
        if self
            .rows
            .as_ref()
            .map_or(true, |r| r.len() != plan.rows_len())
        {
            self.rows = Some(
                stream
                    .alloc_zeros::<f32>(plan.rows_len())
                    .map_err(backend("alloc row statistics"))?,
            );
        }
        let mut record = stream
            .alloc_zeros::<AdafaceStepRecord>(1)
            .map_err(backend("alloc step record"))?;
        mark_loss_unset(&stream, &mut record)?;
        self.record = Some(record);
        let (bufs, rows) = self.buffers(x_ptr, w_ptr, l_ptr)?;
        let launches = plan.phase1_launches::<E, L>(&self.cfg, &bufs, rows)?;
        // SAFETY: the parameter structs point at live buffers whose lengths
        // check_call and the plan verified (the workspace, the 5 B rows, the
        // state and the record are the shard's own); the kernels bound
        // every index; nothing commits the state before phase 2.
        unsafe { launch_all(&stream, &self.module, &launches)? };
        Ok(CudaShardPending {
            epoch: self.epoch,
            plan,
            inputs: [x_ptr, w_ptr, l_ptr],
            label: L::SUFFIX,
        })
    }

    /// Phase 1's row statistics on the host (synchronises), for a transport
    /// that reduces host buffers ([`crate::shard::reduce_partials`]).
    pub fn row_partials(&self, pending: &CudaShardPending) -> Result<RowPartials<f32>> {
        let rows = self.rows.as_ref().ok_or(Error::InvalidShard {
            reason: "no phase 1 ran".into(),
        })?;
        let host = self
            .stream
            .clone_dtoh(rows)
            .map_err(backend("read row statistics"))?;
        Ok(partials_from_rows(&host, pending.plan.batch()))
    }

    /// Uploads host-reduced row statistics for phase 2 (instead of
    /// [`reduce`](Self::reduce)).
    pub fn set_global_rows(
        &mut self,
        pending: &CudaShardPending,
        global: &GlobalRows<f32>,
    ) -> Result<()> {
        global.validate(pending.plan.batch())?;
        let rows = self.rows.as_mut().ok_or(Error::InvalidShard {
            reason: "no phase 1 ran".into(),
        })?;
        self.stream
            .memcpy_htod(&rows_from_global(global), rows)
            .map_err(backend("upload row statistics"))
    }

    fn rows_kernel(&mut self, pending: &CudaShardPending, mode: RowsMode) -> Result<()> {
        let [x, w, l] = pending.inputs;
        let (bufs, rows) = self.buffers(x, w, l)?;
        let launch = pending
            .plan
            .rows_kernel_launch(pending.label, &bufs, rows, mode)?;
        // SAFETY: labels (B, still borrowed by the caller's step), the
        // shard's workspace, 5 B rows and record.
        unsafe { launch_all(&self.stream, &self.module, &[launch]) }
    }

    /// After the all-reduce `MAX` of the row maxima (the first `B` values
    /// of [`row_stats_mut`](Self::row_stats_mut)): rescales this shard's
    /// sums to the global maxima, before the all-reduce `SUM` of the rest.
    pub fn rescale(&mut self, pending: &CudaShardPending) -> Result<()> {
        self.check_epoch(pending)?;
        self.rows_kernel(pending, RowsMode::Rescale)
    }

    /// The whole reduction of the row statistics over `comm`, queued on the
    /// stream: all-reduce `MAX`, rescale, all-reduce `SUM`, and a check
    /// (on the device) that exactly one shard holds each row's label.
    pub fn reduce<C: DeviceCommunicator + ?Sized>(
        &mut self,
        comm: &C,
        pending: &CudaShardPending,
    ) -> Result<()> {
        self.check_epoch(pending)?;
        let b = pending.plan.batch();
        let stream = self.stream.clone();
        let rows = self.rows.as_mut().ok_or(Error::InvalidShard {
            reason: "no phase 1 ran".into(),
        })?;
        comm.all_reduce_device(&stream, &mut rows.slice_mut(..b), ReduceOp::Max)?;
        self.rows_kernel(pending, RowsMode::Rescale)?;
        let rows = self.rows.as_mut().ok_or(Error::InvalidShard {
            reason: "no phase 1 ran".into(),
        })?;
        comm.all_reduce_device(&stream, &mut rows.slice_mut(b..5 * b), ReduceOp::Sum)?;
        self.rows_kernel(pending, RowsMode::Check)
    }

    fn check_epoch(&self, pending: &CudaShardPending) -> Result<()> {
        if pending.epoch != self.epoch {
            return Err(Error::InvalidShard {
                reason: "phase 2 of another phase 1 (or the EMA state changed since)".into(),
            });
        }
        Ok(())
    }

    /// Phase 2, queued on the stream, on the reduced row statistics: writes
    /// this shard's `dW` (`C_k x D`) into `dw` and its partial `dX` (`B x
    /// D`, to be summed over shards) into `dx`, and commits the EMA state.
    /// `x`, `w` and `labels` must be the buffers phase 1 saw. On a
    /// device-detected error `dX`, `dW` and the state are left untouched
    /// and [`CudaStep::summary`] reports it.
    #[allow(clippy::too_many_arguments)]
    pub fn phase2<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        pending: &CudaShardPending,
        x: &impl DevicePtr<E>,
        w: &impl DevicePtr<E>,
        labels: &impl DevicePtr<L>,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<CudaStep> {
        self.check_epoch(pending)?;
        let p = &pending.plan.plan;
        check_call(
            &p.shape,
            x.len(),
            w.len(),
            labels.len(),
            Some((dx.len(), dw.len())),
        )?;
        let stream = self.stream.clone();
        let (x_ptr, _gx) = x.device_ptr(&stream);
        let (w_ptr, _gw) = w.device_ptr(&stream);
        let (l_ptr, _gl) = labels.device_ptr(&stream);
        if [x_ptr, w_ptr, l_ptr] != pending.inputs || L::SUFFIX != pending.label {
            return Err(Error::InvalidShard {
                reason: "phase 2 must see the features, weight and labels phase 1 saw".into(),
            });
        }
        self.epoch += 1;
        let (mut bufs, rows) = self.buffers(x_ptr, w_ptr, l_ptr)?;
        let (dx_ptr, _gdx) = dx.device_ptr_mut(&stream);
        let (dw_ptr, _gdw) = dw.device_ptr_mut(&stream);
        bufs.dx = dx_ptr;
        bufs.dw = dw_ptr;
        let plan = &pending.plan;
        let launches = plan.phase2_launches::<E, L>(&self.cfg, &bufs, rows)?;
        // SAFETY: as in phase 1, plus dx (B x D) and dw (C_k x D) whose
        // lengths check_call verified; the workspace holds phase 1's data.
        unsafe { launch_all(&stream, &self.module, &launches)? };
        let record = self
            .stream
            .clone_dtod(self.record.as_ref().ok_or(Error::Backend {
                message: "step record".into(),
            })?)
            .map_err(backend("copy step record"))?;
        let global = Shape::new(p.shape.batch, p.shape.dim, self.spec.total_classes);
        Ok(CudaStep::from_parts(self.stream.clone(), record, global))
    }

    /// The whole step over `comm`, queued on the stream with no host
    /// synchronisation of its own: phase 1, [`reduce`](Self::reduce), phase
    /// 2 and the all-reduce `SUM` of `dX`, so `dx` ends as the full `dX`.
    /// Every rank must call it with the same global `x` and `labels`. On a
    /// device-detected error the state and `dW` are untouched, `dX` holds
    /// the sum of what the ranks' buffers held, and the step's summary
    /// reports the error.
    #[allow(clippy::too_many_arguments)]
    pub fn step<E, L, C>(
        &mut self,
        comm: &C,
        shape: Shape,
        x: &impl DevicePtr<E>,
        w: &impl DevicePtr<E>,
        labels: &impl DevicePtr<L>,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<CudaStep>
    where
        E: KernelElement + DeviceRepr,
        L: KernelLabel + DeviceRepr,
        C: DeviceCommunicator + ?Sized,
    {
        check_call(
            &shape,
            x.len(),
            w.len(),
            labels.len(),
            Some((dx.len(), dw.len())),
        )?;
        let pending = self.phase1(shape, x, w, labels)?;
        self.reduce(comm, &pending)?;
        let step = self.phase2(&pending, x, w, labels, dx, dw)?;
        comm.all_reduce_device(&self.stream, &mut dx.slice_mut(..), ReduceOp::Sum)?;
        Ok(step)
    }
}

impl ShardedCudaAdaFace {
    /// [`step`](Self::step) with Partial FC sampling: keeps every class of
    /// this shard that is a label of the batch and a random subset of the
    /// others ([`PartialFc::sample`], from `host_labels`, the global labels
    /// on the host, and the step number), gathers the kept rows of `w` into
    /// a compact weight on the device, runs the step over them with the
    /// labels as indices into them, and scatters their `dW` back into `dw`,
    /// which is exactly zero on every other row. Returns the step and the
    /// sorted kept shard-local classes. When every class is kept it is
    /// [`step`](Self::step) itself (`sample_rate = 1` is the unsampled step
    /// bit for bit). The gather and the scatter are one device copy per
    /// kept row, queued on the stream. On a device-detected error the state
    /// is untouched and `dw` is all zeros.
    #[allow(clippy::too_many_arguments)]
    pub fn step_sampled<E, L, C>(
        &mut self,
        comm: &C,
        shape: Shape,
        x: &impl DevicePtr<E>,
        w: &CudaSlice<E>,
        labels: &impl DevicePtr<L>,
        host_labels: &[L],
        sampling: (&PartialFc, u64),
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<(CudaStep, Vec<usize>)>
    where
        E: KernelElement + DeviceRepr,
        L: KernelLabel + DeviceRepr,
        C: DeviceCommunicator + ?Sized,
    {
        check_call(
            &shape,
            x.len(),
            w.len(),
            labels.len(),
            Some((dx.len(), dw.len())),
        )?;
        if shape.classes != self.spec.classes {
            return Err(Error::InvalidShard {
                reason: format!(
                    "shape has {} classes, the shard holds {}",
                    shape.classes, self.spec.classes
                ),
            });
        }
        shape.check_len(crate::Tensor::Labels, host_labels.len())?;
        let (pfc, step) = sampling;
        let classes = pfc.sample(&self.spec, host_labels, step)?;
        if classes.len() == self.spec.classes {
            let out = self.step(comm, shape, x, w, labels, dx, dw)?;
            return Ok((out, classes));
        }
        let (n, d) = (classes.len(), shape.dim);
        let stream = self.stream.clone();
        // SAFETY: every row is written by the gather below before use.
        let mut compact_w =
            unsafe { stream.alloc::<E>(n * d) }.map_err(backend("alloc sampled weight"))?;
        for (k, &j) in classes.iter().enumerate() {
            stream
                .memcpy_dtod(
                    &w.slice(j * d..(j + 1) * d),
                    &mut compact_w.slice_mut(k * d..(k + 1) * d),
                )
                .map_err(backend("gather sampled weight"))?;
        }
        let past = n as i64;
        let remapped: Vec<i64> = host_labels
            .iter()
            .map(|l| {
                self.spec
                    .local(l.to_i64())
                    .and_then(|j| classes.binary_search(&j).ok())
                    .map_or(past, |k| k as i64)
            })
            .collect();
        let compact_labels = stream
            .clone_htod(&remapped)
            .map_err(backend("upload sampled labels"))?;
        let mut compact_dw = stream
            .alloc_zeros::<f32>(n * d)
            .map_err(backend("alloc sampled dW"))?;
        // The sampled classes as a shard of their own at offset 0.
        let spec = self.spec;
        self.spec = ShardSpec::new(0, n, spec.total_classes)?;
        let out = self.step(
            comm,
            Shape::new(shape.batch, d, n),
            x,
            &compact_w,
            &compact_labels,
            dx,
            &mut compact_dw,
        );
        self.spec = spec;
        let out = out?;
        stream.memset_zeros(dw).map_err(backend("zero dW"))?;
        for (k, &j) in classes.iter().enumerate() {
            stream
                .memcpy_dtod(
                    &compact_dw.slice(k * d..(k + 1) * d),
                    &mut dw.slice_mut(j * d..(j + 1) * d),
                )
                .map_err(backend("scatter sampled dW"))?;
        }
        Ok((out, classes))
    }
}
