//! The loss object of the CUDA backend.

use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};

use super::{backend, compile::module_for, probe, resources::checked_function};
use crate::config::AdaFaceConfig;
use crate::error::{Error, Result};
use crate::kernel_params::{
    AdafaceCombineParams, AdafaceDxParams, AdafaceShardParams, AdafaceStatsParams,
    AdafaceStepRecord, AdafaceTileParams,
};
use crate::launch::{
    check_call, flash_aligned, KernelElement, KernelLabel, KernelLaunch, LaunchDims, LaunchParams,
    Pass, PlanLimits, StepBuffers, StepPlan, StepSummary,
};
use crate::shape::Shape;
use crate::state::EmaState;

// SAFETY: plain #[repr(C)] structs of integers and floats (bindgen output),
// laid out as the kernels declare them.
unsafe impl DeviceRepr for AdafaceStatsParams {}
unsafe impl DeviceRepr for AdafaceTileParams {}
unsafe impl DeviceRepr for AdafaceCombineParams {}
unsafe impl DeviceRepr for AdafaceDxParams {}
unsafe impl DeviceRepr for AdafaceStepRecord {}
unsafe impl DeviceRepr for AdafaceShardParams {}
// SAFETY: all-zero bits are a valid record (integers and floats).
unsafe impl ValidAsZeroBits for AdafaceStepRecord {}

/// The AdaFace loss on one CUDA stream: owns the device EMA state and a
/// reusable workspace; every call is asynchronous on the stream.
pub struct CudaAdaFace {
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    cfg: AdaFaceConfig,
    limits: PlanLimits,
    /// Compute capability 9.0: the module has the wgmma kernels.
    wgmma_capable: bool,
    /// `[batch_mean, batch_std, curricular_t]`.
    state: CudaSlice<f64>,
    workspace: Option<CudaSlice<f32>>,
    last_plan: Option<StepPlan>,
    /// A device copy of the latest step's record: a rejected step has no
    /// diagnostics.
    last_record: Option<CudaSlice<AdafaceStepRecord>>,
}

/// A launched step: its record stays on the device until the host asks for
/// it. Reading it synchronises with the stream and reports any error the
/// kernels detected (label out of range, non-finite input, zero norm).
pub struct CudaStep {
    stream: Arc<CudaStream>,
    record: CudaSlice<AdafaceStepRecord>,
    shape: Shape,
}

impl CudaStep {
    /// A step whose record the kernels write on `stream`.
    pub(super) fn from_parts(
        stream: Arc<CudaStream>,
        record: CudaSlice<AdafaceStepRecord>,
        shape: Shape,
    ) -> Self {
        CudaStep {
            stream,
            record,
            shape,
        }
    }

    /// Loss, batch statistics and EMA state after the step (synchronises).
    pub fn summary(&self) -> Result<StepSummary> {
        let rec = self
            .stream
            .clone_dtoh(&self.record)
            .map_err(backend("read step record"))?;
        let rec = rec.first().ok_or(Error::Backend {
            message: "empty step record".into(),
        })?;
        StepSummary::from_record(rec, &self.shape)
    }

    /// The mean loss (synchronises; reports device-detected errors).
    pub fn loss(&self) -> Result<f64> {
        Ok(self.summary()?.loss)
    }

    /// The mean loss copied into a one-element device buffer, without a
    /// sync (for frameworks that keep the loss on the GPU). It is NaN when
    /// the kernels detected an error; [`summary`](Self::summary) says which.
    pub fn loss_on_device(&self) -> Result<CudaSlice<f64>> {
        // SAFETY: the record is #[repr(C)] with `loss: f64` at LOSS_OFFSET,
        // 8-aligned (the layout checks in kernel_params.rs).
        let loss = unsafe { self.record.transmute::<f64>(RECORD_F64S) }.ok_or(Error::Backend {
            message: "step record smaller than its f64 fields".into(),
        })?;
        self.stream
            .clone_dtod(&loss.slice(LOSS_OFFSET / 8..LOSS_OFFSET / 8 + 1))
            .map_err(backend("copy loss"))
    }
}

/// The step record as `f64` words, and the byte offset of its loss.
const RECORD_F64S: usize = std::mem::size_of::<AdafaceStepRecord>() / 8;
const LOSS_OFFSET: usize = std::mem::offset_of!(AdafaceStepRecord, loss);

/// Sets the record's loss to NaN (all bits set) on the stream: the combine
/// kernel overwrites it on success only, so a failed step's loss reads NaN
/// to anyone who looks at it without reading the record.
pub(super) fn mark_loss_unset(
    stream: &CudaStream,
    record: &mut CudaSlice<AdafaceStepRecord>,
) -> Result<()> {
    let (ptr, _guard) = record.device_ptr_mut(stream);
    // SAFETY: 8 bytes inside the live one-record allocation, on its stream.
    unsafe {
        cudarc::driver::result::memset_d8_async(
            ptr + LOSS_OFFSET as u64,
            0xff,
            8,
            stream.cu_stream(),
        )
    }
    .map_err(backend("mark loss"))
}

pub(super) fn to_cfg(d: &LaunchDims) -> LaunchConfig {
    LaunchConfig {
        grid_dim: d.grid,
        block_dim: d.block,
        shared_mem_bytes: d.shared_bytes,
    }
}

/// Launches `launches` in order on `stream`, the kernels taken from
/// `module`. Every kernel is looked up first, refused when the device's JIT
/// compiled it with spills or too many registers for its block
/// ([`checked_function`]), and opted in to the dynamic shared memory it
/// asks for, so nothing is launched when one of them cannot run.
///
/// # Safety
///
/// Every address in the launches' parameters must point at device memory
/// valid for every access the kernel makes with its geometry.
pub(super) unsafe fn launch_all(
    stream: &Arc<CudaStream>,
    module: &Arc<CudaModule>,
    launches: &[KernelLaunch],
) -> Result<()> {
    let mut functions = Vec::with_capacity(launches.len());
    for l in launches {
        let (x, y, z) = l.dims.block;
        let f = checked_function(module, l.kernel.name(), x * y * z)?;
        if l.dims.shared_bytes > 0 {
            // Above 48 KiB of dynamic shared memory a kernel must opt in.
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                l.dims.shared_bytes as i32,
            )
            .map_err(backend("opt in to dynamic shared memory"))?;
        }
        functions.push(f);
    }
    for (l, f) in launches.iter().zip(&functions) {
        let mut builder = stream.launch_builder(f);
        match &l.params {
            LaunchParams::Stats(p) => builder.arg(p),
            LaunchParams::Tile(p) => builder.arg(p),
            LaunchParams::Combine(p) => builder.arg(p),
            LaunchParams::Dx(p) => builder.arg(p),
            LaunchParams::Shard(p) => builder.arg(p),
        };
        let what = format!("launch {}", l.kernel);
        // SAFETY: the parameters match the kernel's struct (the table's);
        // the caller vouches for the addresses.
        unsafe { builder.launch(to_cfg(&l.dims)) }.map_err(backend(&what))?;
    }
    Ok(())
}

impl CudaAdaFace {
    /// Compiles (or takes from the cache) the kernels for the stream's
    /// device and uploads the config's initial EMA state.
    pub fn new(stream: Arc<CudaStream>, cfg: AdaFaceConfig) -> Result<Self> {
        let start = DeviceStart::new(&stream, &cfg)?;
        Ok(CudaAdaFace {
            stream,
            module: start.module,
            cfg,
            limits: start.limits,
            wgmma_capable: start.wgmma_capable,
            state: start.state,
            workspace: None,
            last_plan: None,
            last_record: None,
        })
    }

    /// Replaces the planning limits (tests use small ones). On a device
    /// older than sm_80 the flash family stays off, and on one other than
    /// compute capability 9.0 the wgmma kernels, whatever `limits` say.
    pub fn with_limits(mut self, limits: PlanLimits) -> Self {
        self.limits = bounded_limits(self.limits, self.wgmma_capable, limits);
        self
    }

    /// The planning limits in use (from the device: SM count, and whether
    /// the flash kernels can run).
    pub fn limits(&self) -> PlanLimits {
        self.limits
    }

    /// The plan a call of this shape and element type would launch: which
    /// kernel family, grids, and the workspace it needs
    /// ([`StepPlan::workspace_bytes`]).
    pub fn plan<E: KernelElement>(&self, shape: Shape, pass: Pass) -> Result<StepPlan> {
        StepPlan::new(shape, pass, E::DTYPE, self.limits)
    }

    /// The config.
    pub fn config(&self) -> &AdaFaceConfig {
        &self.cfg
    }

    /// The stream every call runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Reads the EMA state (synchronises), e.g. for a checkpoint.
    pub fn state(&self) -> Result<EmaState> {
        let v = self
            .stream
            .clone_dtoh(&self.state)
            .map_err(backend("read EMA state"))?;
        Ok(EmaState {
            batch_mean: v[0],
            batch_std: v[1],
            curricular_t: v[2],
        })
    }

    /// Restores the EMA state (validated first), e.g. from a checkpoint.
    pub fn set_state(&mut self, state: EmaState) -> Result<()> {
        state.validate()?;
        self.stream
            .memcpy_htod(
                &[state.batch_mean, state.batch_std, state.curricular_t],
                &mut self.state,
            )
            .map_err(backend("write EMA state"))?;
        Ok(())
    }

    /// The device buffer of the EMA state, `[batch_mean, batch_std,
    /// curricular_t]` in `f64`, for frameworks that keep the state in their own device tensors
    /// (the PyTorch package): copy their values in before a step and out
    /// after it, on [`stream`](Self::stream), and no step waits for the GPU.
    /// Unlike [`set_state`](Self::set_state), values written here are not
    /// validated; the caller writes a state that passed
    /// [`EmaState::validate`].
    pub fn state_buffer_mut(&mut self) -> &mut CudaSlice<f64> {
        &mut self.state
    }

    /// Evaluation: the loss only. `update_state` chooses whether the EMA
    /// state moves (the official head updates it on every forward).
    pub fn forward<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        x: &impl DevicePtr<E>,
        w: &impl DevicePtr<E>,
        labels: &impl DevicePtr<L>,
        update_state: bool,
    ) -> Result<CudaStep> {
        check_call(&shape, x.len(), w.len(), labels.len(), None)?;
        self.run::<E, L>(shape, Pass::Forward, x, w, labels, None, update_state)
    }

    /// A training step: loss, `dX` (`B x D`, f32) and `dW` (`C x D`, f32),
    /// and the EMA update. On a device-detected error `dX`, `dW` and the
    /// state are left untouched and [`CudaStep::summary`] reports it.
    /// Inputs may be slices or views (e.g. a framework tensor's storage at
    /// an offset).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        x: &impl DevicePtr<E>,
        w: &impl DevicePtr<E>,
        labels: &impl DevicePtr<L>,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<CudaStep> {
        check_call(
            &shape,
            x.len(),
            w.len(),
            labels.len(),
            Some((dx.len(), dw.len())),
        )?;
        self.run::<E, L>(
            shape,
            Pass::ForwardBackward,
            x,
            w,
            labels,
            Some((dx, dw)),
            true,
        )
    }

    /// Per-row `||x_i||` and margin scaler `z_i` of the latest step
    /// (synchronises; empty before the first). After a step the kernels
    /// rejected: that step's error, never its partial values.
    pub fn row_diagnostics(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (Some(plan), Some(ws)) = (self.last_plan.as_ref(), self.workspace.as_ref()) else {
            return Ok((Vec::new(), Vec::new()));
        };
        if let Some(record) = &self.last_record {
            let rec = self
                .stream
                .clone_dtoh(record)
                .map_err(backend("read step record"))?;
            if let Some(rec) = rec.first() {
                crate::launch::check_record(rec, &plan.shape)?;
            }
        }
        let b = plan.shape.batch;
        let l = &plan.workspace;
        let read = |start: usize| {
            self.stream
                .clone_dtoh(&ws.slice(start..start + b))
                .map_err(backend("read row diagnostics"))
        };
        Ok((read(l.row_norm)?, read(l.row_z)?))
    }

    #[allow(clippy::too_many_arguments)]
    fn run<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        pass: Pass,
        x: &impl DevicePtr<E>,
        w: &impl DevicePtr<E>,
        labels: &impl DevicePtr<L>,
        grads: Option<(&mut CudaSlice<f32>, &mut CudaSlice<f32>)>,
        commit_state: bool,
    ) -> Result<CudaStep> {
        let stream = self.stream.clone();
        let (x_ptr, _gx) = x.device_ptr(&stream);
        let (w_ptr, _gw) = w.device_ptr(&stream);
        let limits = PlanLimits {
            flash: self.limits.flash && flash_aligned(x_ptr, w_ptr),
            ..self.limits
        };
        let plan = StepPlan::new(shape, pass, E::DTYPE, limits)?;

        let need = plan.workspace.len.max(1);
        if self.workspace.as_ref().map_or(true, |ws| ws.len() < need) {
            // SAFETY: every region is written by a kernel before it is read.
            self.workspace = Some(
                unsafe { self.stream.alloc::<f32>(need) }.map_err(backend("alloc workspace"))?,
            );
        }
        let mut record = self
            .stream
            .alloc_zeros::<AdafaceStepRecord>(1)
            .map_err(backend("alloc step record"))?;
        mark_loss_unset(&self.stream, &mut record)?;
        let ws = self.workspace.as_mut().ok_or(Error::Backend {
            message: "workspace".into(),
        })?;

        let (l_ptr, _gl) = labels.device_ptr(&stream);
        let (s_ptr, _gs) = self.state.device_ptr_mut(&stream);
        let (r_ptr, _gr) = record.device_ptr_mut(&stream);
        let (ws_ptr, _gws) = ws.device_ptr_mut(&stream);
        let mut bufs = StepBuffers {
            x: x_ptr,
            w: w_ptr,
            labels: l_ptr,
            state: s_ptr,
            curricular_t: s_ptr + 16,
            record: r_ptr,
            workspace: ws_ptr,
            dx: 0,
            dw: 0,
        };
        let mut guards = Vec::new();
        if let Some((dx, dw)) = grads {
            let (dx_ptr, g1) = dx.device_ptr_mut(&stream);
            let (dw_ptr, g2) = dw.device_ptr_mut(&stream);
            bufs.dx = dx_ptr;
            bufs.dw = dw_ptr;
            guards.push(g1);
            guards.push(g2);
        }

        let launches = plan.launches::<E, L>(&self.cfg, &bufs, commit_state)?;
        // SAFETY: the parameter structs point at live buffers whose lengths
        // check_call and the plan verified; the kernels bound every index.
        unsafe { launch_all(&stream, &self.module, &launches)? };
        drop(guards);
        drop((_gx, _gw, _gl, _gs, _gr, _gws));
        self.last_plan = Some(plan);
        self.last_record = Some(
            self.stream
                .clone_dtod(&record)
                .map_err(backend("copy step record"))?,
        );
        Ok(CudaStep {
            stream,
            record,
            shape,
        })
    }
}

/// What every loss object of the CUDA backend starts from: the kernel
/// module for the stream's device, the config's initial EMA state uploaded,
/// and the device's planning limits.
pub(super) struct DeviceStart {
    pub module: Arc<CudaModule>,
    pub state: CudaSlice<f64>,
    pub limits: PlanLimits,
    /// Compute capability 9.0: the module has the wgmma kernels.
    pub wgmma_capable: bool,
}

impl DeviceStart {
    /// Compiles (or takes from the cache) the kernels for the stream's
    /// device and uploads the config's initial EMA state.
    pub(super) fn new(stream: &Arc<CudaStream>, cfg: &AdaFaceConfig) -> Result<Self> {
        probe()?;
        let module = module_for(stream.context())?;
        let init = cfg.initial_state();
        let state = stream
            .clone_htod(&[init.batch_mean, init.batch_std, init.curricular_t])
            .map_err(backend("upload EMA state"))?;
        let limits = device_limits(stream)?;
        let wgmma_capable = stream
            .context()
            .compute_capability()
            .map_err(backend("compute capability"))?
            == (9, 0);
        Ok(DeviceStart {
            module,
            state,
            limits: PlanLimits {
                wgmma: wgmma_capable && limits.wgmma,
                ..limits
            },
            wgmma_capable,
        })
    }
}

/// `limits` within what the device allows: the flash family only where
/// `current` (the device's) has it, the wgmma kernels only on compute
/// capability 9.0.
pub(super) fn bounded_limits(
    current: PlanLimits,
    wgmma_capable: bool,
    limits: PlanLimits,
) -> PlanLimits {
    PlanLimits {
        flash: current.flash && limits.flash,
        wgmma: wgmma_capable && limits.wgmma,
        ..limits
    }
}

/// Planning limits for the stream's device: the flash family needs sm_80
/// (mma.m16n8k16 with bf16, cp.async) and aims at one block per SM.
pub(super) fn device_limits(stream: &Arc<CudaStream>) -> Result<PlanLimits> {
    let ctx = stream.context();
    let attr = |a| ctx.attribute(a).map_err(backend("query device attribute"));
    let major = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let sms = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let smem_optin =
        attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
    let defaults = PlanLimits::default();
    Ok(PlanLimits {
        // 215 KiB at D = 512: sm_80 (163 KiB) and sm_86/89 (99 KiB) take the
        // flash kernels only at depths whose tiles fit.
        flash: major >= 8 && smem_optin > 0,
        flash_blocks: usize::try_from(sms).unwrap_or(defaults.flash_blocks).max(1),
        flash_max_shared: usize::try_from(smem_optin).unwrap_or(0),
        ..defaults
    })
}
