//! The naive GPU pipeline on the simulator: the naive kernels run
//! simulated, and the three GEMMs run on the CPU from the very
//! [`GemmSpec`]s the CUDA path hands to cuBLAS (column-major, f32 output),
//! so a wrong leading dimension or transpose fails a test here, without a GPU.

use super::{naive_params, stats_params, GemmSpec, NaiveGemms, NaiveLayout, NaiveParams};
use crate::config::AdaFaceConfig;
use crate::error::Result;
use crate::kernel_params::{AdafaceStatsParams, AdafaceStepRecord};
use crate::launch::{check_call, KernelElement, KernelId, KernelLabel, StepSummary};
use crate::shape::Shape;
use crate::sim::{launch, SimEntry, SimLaunch};
use crate::state::EmaState;

type Entries = (
    SimEntry<AdafaceStatsParams>,
    SimEntry<NaiveParams>,
    SimEntry<NaiveParams>,
    SimEntry<NaiveParams>,
);

/// The `_sim` entries of the stats, normalize, softmax and norm-backward
/// kernels for element `E` and label `L`, from the kernel table.
fn entries<E: KernelElement, L: KernelLabel>() -> Result<Entries> {
    let (e, l) = (E::SUFFIX, L::SUFFIX);
    Ok((
        KernelId::find("adaface_stats", &[e, l])?.sim_entry()?,
        KernelId::find("adaface_naive_normalize", &[e])?.sim_entry()?,
        KernelId::find("adaface_naive_softmax", &[e, l])?.sim_entry()?,
        KernelId::find("adaface_naive_norm_backward", &[e])?.sim_entry()?,
    ))
}

/// `C = op(A) . op(B)` exactly as cuBLAS reads `spec` (column-major), with
/// f64 accumulation. Operand slices must cover what `spec` addresses.
pub fn gemm_cpu(spec: &GemmSpec, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_cpu_beta(spec, 0.0, a, b, c);
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

/// The host-side checks of a naive-style step on the simulator (the naive
/// and the chunked pipelines): the margin, every length, then what the CPU
/// backends check (labels, non-finite values, zero norms) with the same
/// errors, since the row kernels check nothing themselves; then the state.
pub(crate) fn check_host_step<E: KernelElement, L: KernelLabel>(
    cfg: &AdaFaceConfig,
    backend: &'static str,
    state: &EmaState,
    shape: &Shape,
    (x, w, labels): (&[E], &[E], &[L]),
    (dx_len, dw_len): (usize, usize),
) -> Result<()> {
    cfg.margin().require_affine(backend)?;
    check_call(
        shape,
        x.len(),
        w.len(),
        labels.len(),
        Some((dx_len, dw_len)),
    )?;
    crate::shape::validate_inputs(shape, x, w, labels)?;
    state.validate()
}

/// One naive training step on the simulator: loss, `dX` and `dW` (f32),
/// starting from EMA `state`; the summary carries the state after it.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward<E: KernelElement, L: KernelLabel>(
    cfg: &AdaFaceConfig,
    state: EmaState,
    shape: Shape,
    x: &[E],
    w: &[E],
    labels: &[L],
    dx: &mut [f32],
    dw: &mut [f32],
) -> Result<StepSummary> {
    check_host_step(
        cfg,
        "naive sim",
        &state,
        &shape,
        (x, w, labels),
        (dx.len(), dw.len()),
    )?;
    let (stats, normalize, softmax, norm_backward) = entries::<E, L>()?;
    let loss = KernelId::find("adaface_naive_loss", &[])?.sim_entry()?;
    let gemms = NaiveGemms::new(shape)?;
    let layout = NaiveLayout::new(shape, std::mem::size_of::<E>())?;
    let mut ws32 = vec![0.0f32; layout.f32_len];
    let mut typed = vec![E::from_f32(0.0); layout.typed_len];
    let mut st = [state.batch_mean, state.batch_std];
    let mut record = AdafaceStepRecord::default();
    let mut p: NaiveParams = naive_params(
        cfg,
        shape,
        &layout,
        ws32.as_mut_ptr() as u64,
        typed.as_mut_ptr() as u64,
    );
    p.x = x.as_ptr() as u64;
    p.w = w.as_ptr() as u64;
    p.labels = labels.as_ptr() as u64;
    p.record = &mut record as *mut AdafaceStepRecord as u64;
    p.state = st.as_mut_ptr() as u64;
    p.dx = dx.as_mut_ptr() as u64;
    p.dw = dw.as_mut_ptr() as u64;
    let row_z = ws32.as_mut_ptr() as u64 + 4 * layout.row_z as u64;
    let sp = stats_params(cfg, shape, &p, row_z);
    let (b, c) = (shape.batch as u32, shape.classes as u32);
    let one = SimLaunch::linear(1, 256, 0);
    let rows = SimLaunch::linear(b + c, 256, 0);
    let widen = |v: &[E]| v.iter().map(|e| e.to_f32()).collect::<Vec<f32>>();
    // SAFETY: every address in p and sp points into a buffer of this
    // function (or a borrowed argument checked by check_call) sized by the
    // layout; the simulated kernels bound every index by the shape. The
    // CPU GEMMs run between launches and touch the buffers only through
    // fresh borrows taken after the previous launch returned.
    unsafe {
        launch(stats, &one, &sp)?;
        launch(normalize, &rows, &p)?;
        let wn = widen(&typed[layout.wn..layout.wn + shape.classes * shape.dim]);
        let xn = widen(&typed[layout.xn..layout.xn + shape.batch * shape.dim]);
        let bc = shape.batch * shape.classes;
        gemm_cpu(
            &gemms.cos,
            &wn,
            &xn,
            &mut ws32[layout.logits..layout.logits + bc],
        );
        launch(softmax, &SimLaunch::linear(b, 256, 0), &p)?;
        launch(loss, &one, &p)?;
        let g = match layout.grad16 {
            Some(at) => widen(&typed[at..at + bc]),
            None => ws32[layout.logits..layout.logits + bc].to_vec(),
        };
        if record.error_key == crate::launch::NO_ERROR {
            gemm_cpu(&gemms.dx, &wn, &g, dx);
            gemm_cpu(&gemms.dw, &xn, &g, dw);
        }
        launch(norm_backward, &rows, &p)?;
    }
    StepSummary::from_record(&record, &shape)
}
