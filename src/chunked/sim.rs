//! The chunked pipeline on the simulator: the naive and chunk kernels run
//! simulated, and the GEMMs run on the CPU from the very [`GemmSpec`](crate::naive::GemmSpec)s (and
//! betas) the CUDA path hands to cuBLAS, so a wrong leading dimension,
//! chunk offset or accumulation fails a test here, without a GPU.

use super::{base_params, chunk_params, chunks, ChunkGemms, ChunkedLayout, ChunkedParams};
use crate::config::AdaFaceConfig;
use crate::error::Result;
use crate::kernel_params::{AdafaceStatsParams, AdafaceStepRecord};
use crate::launch::{KernelElement, KernelId, KernelLabel, StepSummary};
use crate::naive::{stats_params, NaiveParams};
use crate::shape::Shape;
use crate::sim::{launch, SimEntry, SimLaunch};
use crate::state::EmaState;

struct Entries {
    stats: SimEntry<AdafaceStatsParams>,
    normalize: SimEntry<NaiveParams>,
    norm_backward: SimEntry<NaiveParams>,
    chunk_stats: SimEntry<ChunkedParams>,
    chunk_grad: SimEntry<ChunkedParams>,
}

/// The `_sim` entries of the chunked step for element `E` and label `L`,
/// from the kernel table.
fn entries<E: KernelElement, L: KernelLabel>() -> Result<Entries> {
    let (e, l) = (E::SUFFIX, L::SUFFIX);
    Ok(Entries {
        stats: KernelId::find("adaface_stats", &[e, l])?.sim_entry()?,
        normalize: KernelId::find("adaface_naive_normalize", &[e])?.sim_entry()?,
        norm_backward: KernelId::find("adaface_naive_norm_backward", &[e])?.sim_entry()?,
        chunk_stats: KernelId::find("adaface_chunked_stats", &[l])?.sim_entry()?,
        chunk_grad: KernelId::find("adaface_chunked_grad", &[e, l])?.sim_entry()?,
    })
}

pub use crate::naive::sim::gemm_cpu_beta;

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
    crate::naive::sim::check_host_step(
        cfg,
        "chunked sim",
        &state,
        &shape,
        (x, w, labels),
        (dx.len(), dw.len()),
    )?;
    let plan = chunks(shape.classes, chunk)?;
    let k = entries::<E, L>()?;
    let loss = KernelId::find("adaface_naive_loss", &[])?.sim_entry()?;
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
        launch(loss, &one, &base.naive)?;
        launch(k.norm_backward, &rows, &base.naive)?;
    }
    StepSummary::from_record(&record, &shape)
}
