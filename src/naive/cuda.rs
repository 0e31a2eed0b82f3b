//! The naive GPU baseline: cuBLAS GEMMs (through cudarc, loaded at run
//! time) that materialise the `B x C` logits, and the simple row kernels
//! of `kernels/naive.cu` (compiled by NVRTC with the fused ones).
//!
//! It exists to be measured against [`crate::cuda::CudaAdaFace`]: same
//! inputs, same outputs (loss, f32 `dX` and `dW`, EMA state), but
//! [`NaiveLayout::extra_bytes`] of device workspace (gigabytes at a million
//! classes) and three GEMMs plus several passes over the logits.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::{result::gemm_ex, CudaBlas};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg,
};

use super::{naive_params, stats_params, GemmSpec, NaiveGemms, NaiveLayout, NaiveParams};
use crate::config::AdaFaceConfig;
use crate::cuda::{backend, checked_function, probe};
use crate::error::{Error, Result};
use crate::kernel_params::{AdafaceStepRecord, ADAFACE_THREADS};
use crate::launch::{check_call, KernelElement, KernelId, KernelLabel, StepSummary};

/// Threads per block of every naive row kernel.
use crate::shape::Shape;

// SAFETY: #[repr(C)] integers and floats, the layout the kernels declare.
unsafe impl DeviceRepr for NaiveParams {}

/// Checks that cuBLAS can be loaded (after [`probe`]).
pub fn probe_cublas() -> Result<()> {
    probe()?;
    if !crate::cuda::library_present!(cublas) {
        return Err(Error::DeviceUnavailable {
            reason: "libcublas cannot be loaded (set LD_LIBRARY_PATH to CUDA's lib directory)"
                .into(),
        });
    }
    Ok(())
}

/// The naive AdaFace step on one stream: owns a cuBLAS handle, the EMA
/// state and the (large) workspace, reused across calls of the same size.
pub struct NaiveCuda {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    module: Arc<CudaModule>,
    cfg: AdaFaceConfig,
    state: CudaSlice<f64>,
    ws32: Option<CudaSlice<f32>>,
    ws_typed: Option<CudaSlice<u8>>,
    peak_extra: usize,
}

/// A launched naive step; reading it synchronises with the stream.
pub struct NaiveStep {
    stream: Arc<CudaStream>,
    record: CudaSlice<AdafaceStepRecord>,
    shape: Shape,
    /// Device bytes this step's workspace occupies (see [`NaiveLayout::extra_bytes`]).
    pub extra_bytes: usize,
}

impl NaiveStep {
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
}

fn data_type<E: KernelElement>() -> cudaDataType {
    match E::SUFFIX {
        "bf16" => cudaDataType::CUDA_R_16BF,
        "f16" => cudaDataType::CUDA_R_16F,
        _ => cudaDataType::CUDA_R_32F,
    }
}

fn op(trans: bool) -> cublasOperation_t {
    if trans {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl NaiveCuda {
    /// A cuBLAS handle on `stream`, the kernels for its device, and the
    /// config's initial EMA state on the device.
    pub fn new(stream: Arc<CudaStream>, cfg: AdaFaceConfig) -> Result<Self> {
        probe_cublas()?;
        let module = crate::cuda::module_for(stream.context())?;
        let blas = CudaBlas::new(stream.clone()).map_err(backend("cuBLAS handle"))?;
        let init = cfg.initial_state();
        let state = stream
            .clone_htod(&[init.batch_mean, init.batch_std])
            .map_err(backend("upload EMA state"))?;
        Ok(NaiveCuda {
            stream,
            blas,
            module,
            cfg,
            state,
            ws32: None,
            ws_typed: None,
            peak_extra: 0,
        })
    }

    /// Sets the device EMA state (validated first), e.g. to repeat a step.
    pub fn set_state(&mut self, state: crate::state::EmaState) -> Result<()> {
        state.validate()?;
        self.stream
            .memcpy_htod(&[state.batch_mean, state.batch_std], &mut self.state)
            .map_err(backend("write EMA state"))
    }

    /// The most workspace bytes any step so far has held.
    pub fn peak_extra_bytes(&self) -> usize {
        self.peak_extra
    }

    /// The kernel `name`, refused when the device's JIT compiled it with
    /// spills or too many registers for [`ADAFACE_THREADS`] threads.
    fn function(&self, name: &str) -> Result<CudaFunction> {
        checked_function(&self.module, name, ADAFACE_THREADS)
    }

    /// One step through cuBLAS: loss, `dX` (`B x D`), `dW` (`C x D`), EMA
    /// update. Asynchronous; [`NaiveStep::summary`] reports device errors.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        x: &CudaSlice<E>,
        w: &CudaSlice<E>,
        labels: &CudaSlice<L>,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<NaiveStep> {
        check_call(
            &shape,
            x.len(),
            w.len(),
            labels.len(),
            Some((dx.len(), dw.len())),
        )?;
        self.run(shape, x, w, labels, Some((dx, dw)))
    }

    /// The loss only (and the EMA update, as every naive step commits it):
    /// the step up to the loss kernel, without the gradient GEMMs and the
    /// normalisation backward. Its softmax kernel still writes `dL/dcos`
    /// over the logits (one pass, as a framework's stored softmax would),
    /// and it uses the same workspace as a training step.
    pub fn forward<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        x: &CudaSlice<E>,
        w: &CudaSlice<E>,
        labels: &CudaSlice<L>,
    ) -> Result<NaiveStep> {
        check_call(&shape, x.len(), w.len(), labels.len(), None)?;
        self.run(shape, x, w, labels, None)
    }

    fn run<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        x: &CudaSlice<E>,
        w: &CudaSlice<E>,
        labels: &CudaSlice<L>,
        grads: Option<(&mut CudaSlice<f32>, &mut CudaSlice<f32>)>,
    ) -> Result<NaiveStep> {
        self.cfg.margin().require_affine("naive cuda")?;
        let gemms = NaiveGemms::new(shape)?;
        let layout = NaiveLayout::new(shape, std::mem::size_of::<E>())?;
        let (e, l) = (E::SUFFIX, L::SUFFIX);
        let f_stats = self.function(KernelId::find("adaface_stats", &[e, l])?.name())?;
        let f_norm = self.function(KernelId::find("adaface_naive_normalize", &[e])?.name())?;
        let f_soft = self.function(KernelId::find("adaface_naive_softmax", &[e, l])?.name())?;
        let f_loss = self.function(KernelId::find("adaface_naive_loss", &[])?.name())?;
        let f_back = self.function(KernelId::find("adaface_naive_norm_backward", &[e])?.name())?;

        let typed_bytes = layout.typed_len * layout.elem_bytes;
        self.peak_extra = self.peak_extra.max(layout.extra_bytes());
        let mut record = self
            .stream
            .alloc_zeros::<AdafaceStepRecord>(1)
            .map_err(backend("alloc step record"))?;
        let stream = self.stream.clone();
        let (ws32, wst) = ensure_workspaces(
            &stream,
            &mut self.ws32,
            &mut self.ws_typed,
            layout.f32_len,
            typed_bytes,
            "alloc naive workspace",
        )?;
        let (ws32_ptr, _g1) = ws32.device_ptr_mut(&stream);
        let (wst_ptr, _g2) = wst.device_ptr_mut(&stream);
        let (x_ptr, _g3) = x.device_ptr(&stream);
        let (w_ptr, _g4) = w.device_ptr(&stream);
        let (l_ptr, _g5) = labels.device_ptr(&stream);
        let (s_ptr, _g6) = self.state.device_ptr_mut(&stream);
        let (r_ptr, _g7) = record.device_ptr_mut(&stream);
        let backward = grads.is_some();
        let mut grad_guards = Vec::new();
        let (mut dx_ptr, mut dw_ptr) = (0, 0);
        if let Some((dx, dw)) = grads {
            let (p1, g8) = dx.device_ptr_mut(&stream);
            let (p2, g9) = dw.device_ptr_mut(&stream);
            (dx_ptr, dw_ptr) = (p1, p2);
            grad_guards.push(g8);
            grad_guards.push(g9);
        }
        let mut p = naive_params(&self.cfg, shape, &layout, ws32_ptr, wst_ptr);
        p.x = x_ptr;
        p.w = w_ptr;
        p.labels = l_ptr;
        p.record = r_ptr;
        p.state = s_ptr;
        p.dx = dx_ptr;
        p.dw = dw_ptr;
        let sp = stats_params(&self.cfg, shape, &p, ws32_ptr + 4 * layout.row_z as u64);
        let rows = (shape.batch + shape.classes) as u32;
        let cfg = |grid: u32| LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (ADAFACE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let grad = p.grad16;
        let dt = data_type::<E>();
        // SAFETY: every address points into a live buffer sized by the
        // layout or checked by check_call; the kernels bound every index
        // by the shape; the GEMM specs address exactly the row-major
        // buffers they name (tested on the simulator by gemm_cpu).
        unsafe {
            stream
                .launch_builder(&f_stats)
                .arg(&sp)
                .launch(cfg(1))
                .map_err(backend("launch stats"))?;
            stream
                .launch_builder(&f_norm)
                .arg(&p)
                .launch(cfg(rows))
                .map_err(backend("launch normalize"))?;
            gemm(&self.blas, &gemms.cos, p.wn, dt, p.xn, dt, p.logits)?;
            stream
                .launch_builder(&f_soft)
                .arg(&p)
                .launch(cfg(shape.batch as u32))
                .map_err(backend("launch softmax"))?;
            stream
                .launch_builder(&f_loss)
                .arg(&p)
                .launch(cfg(1))
                .map_err(backend("launch loss"))?;
            if backward {
                // The GEMMs do not read the record: on a device-detected error
                // they still write dX and dW (the naive path's known limit).
                gemm(&self.blas, &gemms.dx, p.wn, dt, grad, dt, p.dx)?;
                gemm(&self.blas, &gemms.dw, p.xn, dt, grad, dt, p.dw)?;
                stream
                    .launch_builder(&f_back)
                    .arg(&p)
                    .launch(cfg(rows))
                    .map_err(backend("launch norm_backward"))?;
            }
        }
        drop(grad_guards);
        drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7));
        Ok(NaiveStep {
            stream,
            record,
            shape,
            extra_bytes: layout.extra_bytes(),
        })
    }
}

/// `C = op(A) . op(B)` in f32 on the handle's stream (`a`, `b` of type `at`, `bt`).
///
/// # Safety
/// The addresses must be live device buffers covering what `spec` addresses.
unsafe fn gemm(
    blas: &CudaBlas,
    spec: &GemmSpec,
    a: u64,
    at: cudaDataType,
    b: u64,
    bt: cudaDataType,
    c: u64,
) -> Result<()> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the caller's contract; alpha and beta are host f32s, as
    // cuBLAS expects for CUBLAS_COMPUTE_32F in host pointer mode.
    unsafe {
        gemm_ex(
            *blas.handle(),
            op(spec.trans_a),
            op(spec.trans_b),
            spec.m as i32,
            spec.n as i32,
            spec.k as i32,
            (&alpha) as *const f32 as *const c_void,
            a as *const c_void,
            at,
            spec.lda as i32,
            b as *const c_void,
            bt,
            spec.ldb as i32,
            (&beta) as *const f32 as *const c_void,
            c as *mut c_void,
            cudaDataType::CUDA_R_32F,
            spec.ldc as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(backend("cuBLAS GEMM"))
}

/// Grows the naive-style workspaces (an `f32` one of `f32_len` elements and
/// a typed one of `typed_bytes` bytes) when the step needs more than they
/// hold, and hands both back. Shared by the naive and the chunked CUDA
/// paths; `what` names the path in allocation errors.
pub(crate) fn ensure_workspaces<'a>(
    stream: &Arc<CudaStream>,
    ws32: &'a mut Option<CudaSlice<f32>>,
    ws_typed: &'a mut Option<CudaSlice<u8>>,
    f32_len: usize,
    typed_bytes: usize,
    what: &'static str,
) -> Result<(&'a mut CudaSlice<f32>, &'a mut CudaSlice<u8>)> {
    if ws32.as_ref().map_or(true, |b| b.len() < f32_len) {
        *ws32 = None;
        // SAFETY: every region is written by a kernel or GEMM before it is read.
        *ws32 = Some(unsafe { stream.alloc::<f32>(f32_len) }.map_err(backend(what))?);
    }
    if ws_typed.as_ref().map_or(true, |b| b.len() < typed_bytes) {
        *ws_typed = None;
        // SAFETY: as above.
        *ws_typed = Some(unsafe { stream.alloc::<u8>(typed_bytes) }.map_err(backend(what))?);
    }
    match (ws32.as_mut(), ws_typed.as_mut()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(Error::Backend {
            message: what.into(),
        }),
    }
}
