//! The chunked pipeline on the simulator: the naive and chunk kernels run
//! simulated, and the GEMMs run on the CPU from the very [`GemmSpec`]s (and
//! betas) the CUDA path hands to cuBLAS, so a wrong leading dimension,
//! chunk offset or accumulation fails a test here, without a GPU.

use std::ffi::c_int;

use super::{base_params, chunk_params, chunks, ChunkGemms, ChunkedLayout, ChunkedParams};
use crate::config::AdaFaceConfig;
use crate::error::{Error, Result};
use crate::kernel_params::{AdafaceStatsParams, AdafaceStepRecord};
use crate::launch::{check_call, KernelElement, KernelLabel, StepSummary};
use crate::naive::{stats_params, GemmSpec, NaiveParams};
use crate::shape::Shape;
use crate::sim::{launch, SimEntry, SimLaunch};
use crate::state::EmaState;

macro_rules! declare {
    ($params:ty => $($name:ident),* $(,)?) => {
        extern "C" {
            $(fn $name(launch: *const SimLaunch, params: *const $params) -> c_int;)*
        }
    };
}

declare!(NaiveParams =>
    adaface_naive_normalize_f32_sim, adaface_naive_normalize_bf16_sim, adaface_naive_normalize_f16_sim,
    adaface_naive_loss_sim,
    adaface_naive_norm_backward_f32_sim, adaface_naive_norm_backward_bf16_sim,
    adaface_naive_norm_backward_f16_sim);
declare!(AdafaceStatsParams =>
    adaface_stats_f32_i32_sim, adaface_stats_f32_i64_sim,
    adaface_stats_bf16_i32_sim, adaface_stats_bf16_i64_sim,
    adaface_stats_f16_i32_sim, adaface_stats_f16_i64_sim);
declare!(ChunkedParams =>
    adaface_chunked_stats_i32_sim, adaface_chunked_stats_i64_sim,
    adaface_chunked_grad_f32_i32_sim, adaface_chunked_grad_f32_i64_sim,
    adaface_chunked_grad_bf16_i32_sim, adaface_chunked_grad_bf16_i64_sim,
    adaface_chunked_grad_f16_i32_sim, adaface_chunked_grad_f16_i64_sim);

struct Entries {
    stats: SimEntry<AdafaceStatsParams>,
    normalize: SimEntry<NaiveParams>,
    norm_backward: SimEntry<NaiveParams>,
    chunk_stats: SimEntry<ChunkedParams>,
    chunk_grad: SimEntry<ChunkedParams>,
}

fn entries<E: KernelElement, L: KernelLabel>() -> Result<Entries> {
    let (normalize, norm_backward): (SimEntry<NaiveParams>, SimEntry<NaiveParams>) = match E::SUFFIX
    {
        "f32" => (
            adaface_naive_normalize_f32_sim,
            adaface_naive_norm_backward_f32_sim,
        ),
        "bf16" => (
            adaface_naive_normalize_bf16_sim,
            adaface_naive_norm_backward_bf16_sim,
        ),
        "f16" => (
            adaface_naive_normalize_f16_sim,
            adaface_naive_norm_backward_f16_sim,
        ),
        other => {
            return Err(Error::DtypeMismatch {
                expected: "f32, bf16 or f16 elements",
                actual: other,
            })
        }
    };
    let (stats, chunk_stats, chunk_grad): (
        SimEntry<AdafaceStatsParams>,
        SimEntry<ChunkedParams>,
        SimEntry<ChunkedParams>,
    ) = match (E::SUFFIX, L::SUFFIX) {
        ("f32", "i32") => (
            adaface_stats_f32_i32_sim,
            adaface_chunked_stats_i32_sim,
            adaface_chunked_grad_f32_i32_sim,
        ),
        ("f32", "i64") => (
            adaface_stats_f32_i64_sim,
            adaface_chunked_stats_i64_sim,
            adaface_chunked_grad_f32_i64_sim,
        ),
        ("bf16", "i32") => (
            adaface_stats_bf16_i32_sim,
            adaface_chunked_stats_i32_sim,
            adaface_chunked_grad_bf16_i32_sim,
        ),
        ("bf16", "i64") => (
            adaface_stats_bf16_i64_sim,
            adaface_chunked_stats_i64_sim,
            adaface_chunked_grad_bf16_i64_sim,
        ),
        ("f16", "i32") => (
            adaface_stats_f16_i32_sim,
            adaface_chunked_stats_i32_sim,
            adaface_chunked_grad_f16_i32_sim,
        ),
        ("f16", "i64") => (
            adaface_stats_f16_i64_sim,
            adaface_chunked_stats_i64_sim,
            adaface_chunked_grad_f16_i64_sim,
        ),
        _ => {
            return Err(Error::DtypeMismatch {
                expected: "i32 or i64 labels",
                actual: L::SUFFIX,
            })
        }
    };
    Ok(Entries {
        stats,
        normalize,
        norm_backward,
        chunk_stats,
        chunk_grad,
    })
}

/// `C = op(A) . op(B) + beta C` exactly as cuBLAS reads `spec`
/// (column-major), accumulating in f64 and rounding once to f32. Operand
/// slices must cover what `spec` addresses.
pub fn gemm_cpu_beta(spec: &GemmSpec, beta: f32, a: &[f32], b: &[f32], c: &mut [f32]) {
    for j in 0..spec.n {
        for i in 0..spec.m {
            let mut acc = 0.0f64;
            for p in 0..spec.k {
                let av = if spec.trans_a {
                    a[p + i * spec.lda]
                } else {
                    a[i + p * spec.lda]
                };
                let bv = if spec.trans_b {
                    b[j + p * spec.ldb]
                } else {
                    b[p + j * spec.ldb]
                };
                acc += f64::from(av) * f64::from(bv);
            }
            let out = &mut c[i + j * spec.ldc];
            *out = if beta == 0.0 {
                acc as f32
            } else {
                acc as f32 + beta * *out
            };
        }
    }
}

/// One chunked training step on the simulator, `chunk` classes at a time:
/// loss, `dX` and `dW` (f32), starting from EMA `state`; the summary
/// carries the state after it. Bad input is rejected with the same typed
/// errors as the other backends before anything is written.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward<E: KernelElement, L: KernelLabel>(
    cfg: &AdaFaceConfig,
    state: EmaState,
    shape: Shape,
    chunk: usize,
    x: &[E],
    w: &[E],
    labels: &[L],
    dx: &mut [f32],
    dw: &mut [f32],
) -> Result<StepSummary> {
    cfg.margin().require_affine("chunked sim")?;
    check_call(
        &shape,
        x.len(),
        w.len(),
        labels.len(),
        Some((dx.len(), dw.len())),
    )?;
    // As the naive path: the row kernels check nothing themselves, so the
    // host checks what the CPU backends check, with the same errors.
    crate::shape::validate_inputs(&shape, x, w, labels)?;
    state.validate()?;
    let plan = chunks(shape.classes, chunk)?;
    let k = entries::<E, L>()?;
    let eb = std::mem::size_of::<E>();
    let layout = ChunkedLayout::new(shape, eb, chunk)?;
    let mut ws32 = vec![0.0f32; layout.f32_len];
    let mut typed = vec![E::from_f32(0.0); layout.typed_len];
    let mut st = [state.batch_mean, state.batch_std];
    let mut record = AdafaceStepRecord::default();
    let mut base = base_params(
        cfg,
        shape,
        &layout,
        ws32.as_mut_ptr() as u64,
        typed.as_mut_ptr() as u64,
    );
    base.naive.x = x.as_ptr() as u64;
    base.naive.w = w.as_ptr() as u64;
    base.naive.labels = labels.as_ptr() as u64;
    base.naive.record = &mut record as *mut AdafaceStepRecord as u64;
    base.naive.state = st.as_mut_ptr() as u64;
    base.naive.dx = dx.as_mut_ptr() as u64;
    base.naive.dw = dw.as_mut_ptr() as u64;
    let row_z = ws32.as_mut_ptr() as u64 + 4 * layout.row_z as u64;
    let sp = stats_params(cfg, shape, &base.naive, row_z);
    let (b, d) = (shape.batch, shape.dim);
    let one = SimLaunch::linear(1, 256, 0);
    let rows = SimLaunch::linear(b as u32, 256, 0);
    let widen = |v: &[E]| v.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
    // SAFETY: every address in the parameters points into a buffer of this
    // function (or a borrowed argument checked by check_call) sized by the
    // layout; the chunk offsets stay below C (chunks()); the simulated
    // kernels bound every index by the shape and chunk length. The CPU
    // GEMMs run between launches and touch the buffers only through fresh
    // borrows taken after the previous launch returned.
    unsafe {
        launch(k.stats, &one, &sp)?;
        launch(k.normalize, &rows, &base.naive)?;
        let xn = widen(&typed[layout.xn..layout.xn + b * d]);
        // The chunk's cosines from its normalised rows of W (after the
        // normalize launch); returns those rows widened.
        let cosines = |ws32: &mut [f32], typed: &[E], len: usize, g: &ChunkGemms| -> Vec<f32> {
            let wn = widen(&typed[layout.wn..layout.wn + len * d]);
            gemm_cpu_beta(
                &g.cos,
                0.0,
                &wn,
                &xn,
                &mut ws32[layout.logits..layout.logits + b * len],
            );
            wn
        };
        for &(start, len) in &plan {
            let g = ChunkGemms::new(shape, len)?;
            let (cp, rows_p) = chunk_params(&base, start, len, eb);
            launch(k.normalize, &SimLaunch::linear(len as u32, 256, 0), &rows_p)?;
            cosines(&mut ws32, &typed, len, &g);
            launch(k.chunk_stats, &rows, &cp)?;
        }
        let ok = |r: &AdafaceStepRecord| r.error_key == crate::launch::NO_ERROR;
        for (n, &(start, len)) in plan.iter().enumerate() {
            let g = ChunkGemms::new(shape, len)?;
            let (cp, rows_p) = chunk_params(&base, start, len, eb);
            launch(k.normalize, &SimLaunch::linear(len as u32, 256, 0), &rows_p)?;
            let wn = cosines(&mut ws32, &typed, len, &g);
            launch(k.chunk_grad, &rows, &cp)?;
            let grad = match layout.grad16 {
                Some(at) => widen(&typed[at..at + b * len]),
                None => ws32[layout.logits..layout.logits + b * len].to_vec(),
            };
            if ok(&record) {
                let beta = if n == 0 { 0.0 } else { 1.0 };
                gemm_cpu_beta(&g.dx, beta, &wn, &grad, dx);
                gemm_cpu_beta(
                    &g.dw,
                    0.0,
                    &xn,
                    &grad,
                    &mut dw[start * d..(start + len) * d],
                );
            }
            launch(
                k.norm_backward,
                &SimLaunch::linear(len as u32, 256, 0),
                &rows_p,
            )?;
        }
        launch(adaface_naive_loss_sim, &one, &base.naive)?;
        launch(k.norm_backward, &rows, &base.naive)?;
    }
    StepSummary::from_record(&record, &shape)
}
