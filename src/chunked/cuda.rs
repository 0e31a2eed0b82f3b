//! The chunked cuBLAS path on the GPU: cuBLAS GEMMs (through cudarc,
//! loaded at run time) on one chunk of classes at a time, the naive row
//! kernels (`kernels/naive.cu`) and the chunk kernels
//! (`kernels/chunked.cu`), compiled by NVRTC with the fused ones.
//!
//! Same inputs and outputs as [`crate::naive::cuda::NaiveCuda`] (loss, f32
//! `dX` and `dW`, EMA state), with [`ChunkedLayout::extra_bytes`] of device
//! workspace (about 68 MB at `B = 512`, `D = 512`, 16k-class chunks, bf16,
//! whatever `C`). The step is deterministic: fixed-order reductions, chunks
//! in order on one stream, and cuBLAS's default (deterministic) algorithms.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::{result::gemm_ex, CudaBlas};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg,
};

use super::{base_params, chunk_params, chunks, ChunkGemms, ChunkedLayout, ChunkedParams};
use crate::config::AdaFaceConfig;
use crate::cuda::{backend, checked_function};
use crate::error::{Error, Result};
use crate::kernel_params::{AdafaceStepRecord, ADAFACE_THREADS};
use crate::launch::{check_call, KernelElement, KernelId, KernelLabel, StepSummary};
use crate::naive::{stats_params, GemmSpec};
use crate::shape::Shape;

// SAFETY: #[repr(C)] integers and floats (and the naive parameters, also
// DeviceRepr), the layout the kernels declare.
unsafe impl DeviceRepr for ChunkedParams {}

/// The chunked AdaFace step on one stream: owns a cuBLAS handle, the EMA
/// state and the workspace (`O(B x chunk)`), reused across calls.
pub struct ChunkedCuda {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    module: Arc<CudaModule>,
    cfg: AdaFaceConfig,
    chunk: usize,
    state: CudaSlice<f64>,
    ws32: Option<CudaSlice<f32>>,
    ws_typed: Option<CudaSlice<u8>>,
    peak_extra: usize,
}

/// A launched chunked step; reading it synchronises with the stream.
pub struct ChunkedStep {
    stream: Arc<CudaStream>,
    record: CudaSlice<AdafaceStepRecord>,
    shape: Shape,
    /// Device bytes this step's workspace occupies (see [`ChunkedLayout::extra_bytes`]).
    pub extra_bytes: usize,
}

impl ChunkedStep {
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

impl ChunkedCuda {
    /// A cuBLAS handle on `stream`, the kernels for its device, the
    /// config's initial EMA state on the device, and chunks of `chunk`
    /// classes ([`super::DEFAULT_CHUNK`] is a good start; zero is a typed
    /// error).
    pub fn new(stream: Arc<CudaStream>, cfg: AdaFaceConfig, chunk: usize) -> Result<Self> {
        chunks(1, chunk)?;
        crate::naive::cuda::probe_cublas()?;
        let module = crate::cuda::module_for(stream.context())?;
        let blas = CudaBlas::new(stream.clone()).map_err(backend("cuBLAS handle"))?;
        let init = cfg.initial_state();
        let state = stream
            .clone_htod(&[init.batch_mean, init.batch_std])
            .map_err(backend("upload EMA state"))?;
        Ok(ChunkedCuda {
            stream,
            blas,
            module,
            cfg,
            chunk,
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

    /// One step: loss, `dX` (`B x D`), `dW` (`C x D`), EMA update.
    /// Asynchronous; [`ChunkedStep::summary`] reports device errors (bad
    /// labels, non-finite or zero-norm rows, found by the stats kernel; the
    /// kernels then do nothing, but, as on the naive path, the GEMMs do
    /// not read the record and still write `dX` and `dW`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        x: &CudaSlice<E>,
        w: &CudaSlice<E>,
        labels: &CudaSlice<L>,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<ChunkedStep> {
        check_call(
            &shape,
            x.len(),
            w.len(),
            labels.len(),
            Some((dx.len(), dw.len())),
        )?;
        self.run(shape, x, w, labels, Some((dx, dw)))
    }

    /// The loss only (and the EMA update): both passes over the chunks
    /// (the second finds each row's target logit with the global
    /// log-sum-exp, as the gradient kernel writes the loss), without the
    /// gradient GEMMs and the normalisation backward.
    pub fn forward<E: KernelElement + DeviceRepr, L: KernelLabel + DeviceRepr>(
        &mut self,
        shape: Shape,
        x: &CudaSlice<E>,
        w: &CudaSlice<E>,
        labels: &CudaSlice<L>,
    ) -> Result<ChunkedStep> {
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
    ) -> Result<ChunkedStep> {
        self.cfg.margin().require_affine("chunked cuda")?;
        let plan = chunks(shape.classes, self.chunk)?;
        let eb = std::mem::size_of::<E>();
        let layout = ChunkedLayout::new(shape, eb, self.chunk)?;
        let (e, l) = (E::SUFFIX, L::SUFFIX);
        let f_stats = self.function(KernelId::find("adaface_stats", &[e, l])?.name())?;
        let f_norm = self.function(KernelId::find("adaface_naive_normalize", &[e])?.name())?;
        let f_cstats = self.function(KernelId::find("adaface_chunked_stats", &[l])?.name())?;
        let f_grad = self.function(KernelId::find("adaface_chunked_grad", &[e, l])?.name())?;
        let f_loss = self.function(KernelId::find("adaface_naive_loss", &[])?.name())?;
        let f_back = self.function(KernelId::find("adaface_naive_norm_backward", &[e])?.name())?;

        let typed_bytes = layout.typed_len * layout.elem_bytes;
        self.peak_extra = self.peak_extra.max(layout.extra_bytes());
        let mut record = self
            .stream
            .alloc_zeros::<AdafaceStepRecord>(1)
            .map_err(backend("alloc step record"))?;
        let stream = self.stream.clone();
        let (ws32, wst) = crate::naive::cuda::ensure_workspaces(
            &stream,
            &mut self.ws32,
            &mut self.ws_typed,
            layout.f32_len,
            typed_bytes,
            "alloc chunked workspace",
        )?;
        let (ws32_ptr, _g1) = ws32.device_ptr_mut(&stream);
        let (wst_ptr, _g2) = wst.device_ptr_mut(&stream);
        let (x_ptr, _g3) = x.device_ptr(&stream);
        let (w_ptr, _g4) = w.device_ptr(&stream);
        let (l_ptr, _g5) = labels.device_ptr(&stream);
        let (s_ptr, _g6) = self.state.device_ptr_mut(&stream);
        let (r_ptr, _g7) = record.device_ptr_mut(&stream);
        let with_grads = grads.is_some();
        let mut grad_guards = Vec::new();
        let (mut dx_ptr, mut dw_ptr) = (0, 0);
        if let Some((dx, dw)) = grads {
            let (p1, g8) = dx.device_ptr_mut(&stream);
            let (p2, g9) = dw.device_ptr_mut(&stream);
            (dx_ptr, dw_ptr) = (p1, p2);
            grad_guards.push(g8);
            grad_guards.push(g9);
        }
        let mut base = base_params(&self.cfg, shape, &layout, ws32_ptr, wst_ptr);
        base.naive.x = x_ptr;
        base.naive.w = w_ptr;
        base.naive.labels = l_ptr;
        base.naive.record = r_ptr;
        base.naive.state = s_ptr;
        base.naive.dx = dx_ptr;
        base.naive.dw = dw_ptr;
        let p = base.naive;
        let sp = stats_params(&self.cfg, shape, &p, ws32_ptr + 4 * layout.row_z as u64);
        let cfg = |grid: usize| LaunchConfig {
            grid_dim: (grid as u32, 1, 1),
            block_dim: (ADAFACE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let b = shape.batch;
        let dt = data_type::<E>();
        let blas = &self.blas;
        // SAFETY: every address points into a live buffer sized by the
        // layout or checked by check_call; chunk offsets stay below C; the
        // kernels bound every index by the shape and chunk length; the
        // GEMM specs address exactly the row-major buffers they name
        // (tested on the simulator by gemm_cpu_beta with the same specs).
        unsafe {
            stream
                .launch_builder(&f_stats)
                .arg(&sp)
                .launch(cfg(1))
                .map_err(backend("launch stats"))?;
            stream
                .launch_builder(&f_norm)
                .arg(&p)
                .launch(cfg(b))
                .map_err(backend("launch normalize"))?;
            for backward in [false, true] {
                for (n, &(start, len)) in plan.iter().enumerate() {
                    let g = ChunkGemms::new(shape, len)?;
                    let (cp, rows) = chunk_params(&base, start, len, eb);
                    stream
                        .launch_builder(&f_norm)
                        .arg(&rows)
                        .launch(cfg(len))
                        .map_err(backend("launch normalize"))?;
                    gemm(blas, &g.cos, 0.0, p.wn, dt, p.xn, dt, p.logits)?;
                    if !backward {
                        stream
                            .launch_builder(&f_cstats)
                            .arg(&cp)
                            .launch(cfg(b))
                            .map_err(backend("launch chunk stats"))?;
                        continue;
                    }
                    stream
                        .launch_builder(&f_grad)
                        .arg(&cp)
                        .launch(cfg(b))
                        .map_err(backend("launch chunk gradient"))?;
                    if !with_grads {
                        continue;
                    }
                    let beta = if n == 0 { 0.0 } else { 1.0 };
                    gemm(blas, &g.dx, beta, p.wn, dt, p.grad16, dt, p.dx)?;
                    gemm(blas, &g.dw, 0.0, p.xn, dt, p.grad16, dt, rows.dw)?;
                    stream
                        .launch_builder(&f_back)
                        .arg(&rows)
                        .launch(cfg(len))
                        .map_err(backend("launch norm_backward"))?;
                }
            }
            stream
                .launch_builder(&f_loss)
                .arg(&p)
                .launch(cfg(1))
                .map_err(backend("launch loss"))?;
            if with_grads {
                stream
                    .launch_builder(&f_back)
                    .arg(&p)
                    .launch(cfg(b))
                    .map_err(backend("launch norm_backward"))?;
            }
        }
        drop(grad_guards);
        drop((_g1, _g2, _g3, _g4, _g5, _g6, _g7));
        Ok(ChunkedStep {
            stream,
            record,
            shape,
            extra_bytes: layout.extra_bytes(),
        })
    }
}

/// `C = op(A) . op(B) + beta C` in f32 on the handle's stream (`a`, `b` of
/// type `at`, `bt`).
///
/// # Safety
/// The addresses must be live device buffers covering what `spec` addresses.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    blas: &CudaBlas,
    spec: &GemmSpec,
    beta: f32,
    a: u64,
    at: cudaDataType,
    b: u64,
    bt: cudaDataType,
    c: u64,
) -> Result<()> {
    let alpha = 1.0f32;
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
