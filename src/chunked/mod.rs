//! The class-chunked cuBLAS path: the naive pipeline ([`crate::naive`]) run
//! one chunk of `Cc` classes at a time, so that its workspace is
//! `O(B x Cc)` rather than `O(B x C)` ([`ChunkedLayout::extra_bytes`]).
//!
//! A step (kernels of `kernels/naive.cu` and
//! `kernels/chunked.cu`):
//!
//! 1. `adaface_stats` (norms, EMA, margins), `normalize` on the rows of `x`.
//! 2. Per chunk: `normalize` the chunk's rows of `W`, GEMM
//!    `cos_c = xn . wn_c^T` (`B x Cc`, f32), `chunked_stats` merges the
//!    chunk's max and sum-exp into per-row running statistics.
//! 3. Per chunk again: `normalize`, the same GEMM (recomputed, not stored),
//!    `chunked_grad` (`dL/dcos_c` with the row's global log-sum-exp and the
//!    AdaFace target margin; the chunk holding the label writes the row's
//!    loss), GEMMs `dXn += G_c . wn_c` (beta 0 on the first chunk, 1 after)
//!    and `dWn_c = G_c^T . xn`, and `norm_backward` on the chunk's rows of
//!    `dW`.
//! 4. `loss` (mean, EMA commit) and `norm_backward` on the rows of `dX`.
//!
//! Every reduction has a fixed order and the chunks run in order, so two
//! runs are bit-identical. The CUDA implementation is [`cuda`] (feature
//! `cuda`), the same plan on the simulator with CPU GEMMs standing in for
//! cuBLAS is `sim` (feature `sim`).

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "sim")]
pub mod sim;

#[cfg(any(feature = "cuda", feature = "sim"))]
use crate::config::AdaFaceConfig;
use crate::error::{Error, Result};
use crate::naive::{GemmSpec, NaiveParams};
use crate::shape::Shape;

/// The default number of classes per chunk: `B x 16384` f32 logits are
/// 32 MiB at `B = 512`.
pub const DEFAULT_CHUNK: usize = 16384;

/// Parameters of the chunk kernels: `AdafaceChunkedParams` of
/// `kernels/chunked.cu` (addresses are device pointers on the GPU,
/// host pointers in the simulator).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ChunkedParams {
    /// The naive parameters, with `logits` and `grad16` pointing at the
    /// chunk's `B x Cc` buffers.
    pub naive: NaiveParams,
    /// `float[B]`: running max of each row's logits.
    pub row_max: u64,
    /// `float[B]`: running sum of `exp(logit - row_max)`.
    pub row_sum: u64,
    /// First class of the chunk.
    pub chunk_start: i64,
    /// Classes in the chunk (the row stride of the chunk buffers).
    pub chunk_len: i64,
}

const _: () = assert!(std::mem::size_of::<ChunkedParams>() == 168 + 32);

/// The chunks of `classes` classes, `chunk` at a time: `(start, len)`, the
/// last one partial. A zero `chunk` is a typed error.
pub fn chunks(classes: usize, chunk: usize) -> Result<Vec<(usize, usize)>> {
    if chunk == 0 || chunk > i32::MAX as usize {
        return Err(Error::InvalidConfig {
            parameter: "chunk",
            value: chunk as f64,
            requirement: "1 <= chunk <= i32::MAX classes",
        });
    }
    Ok((0..classes)
        .step_by(chunk)
        .map(|start| (start, chunk.min(classes - start)))
        .collect())
}

/// The three GEMMs of one chunk of `len` classes on row-major buffers, as
/// cuBLAS sees them (column-major). `dx` has beta 0 on the first chunk and
/// 1 after (accumulation into `dX`); the others have beta 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkGemms {
    /// `cos_c[B x Cc] = xn . wn_c^T`: A = `wn_c`, B = `xn`, C = chunk logits.
    pub cos: GemmSpec,
    /// `dXn[B x D] (+)= G_c . wn_c`: A = `wn_c`, B = `G_c`, C = `dx`.
    pub dx: GemmSpec,
    /// `dWn_c[Cc x D] = G_c^T . xn`: A = `xn`, B = `G_c`, C = the chunk's rows of `dw`.
    pub dw: GemmSpec,
}

impl ChunkGemms {
    /// The GEMMs of a chunk of `len` classes of `shape`; sizes beyond i32
    /// (cuBLAS's) are a typed error.
    pub fn new(shape: Shape, len: usize) -> Result<Self> {
        let (b, d) = (shape.batch, shape.dim);
        let limit = i32::MAX as usize;
        if b > limit || d > limit || len > limit {
            return Err(Error::Backend {
                message: format!("chunked cuBLAS path: a dimension of {shape:?} exceeds i32"),
            });
        }
        let spec = |trans_a, trans_b, m, n, k, lda, ldb, ldc| GemmSpec {
            trans_a,
            trans_b,
            m,
            n,
            k,
            lda,
            ldb,
            ldc,
        };
        Ok(ChunkGemms {
            cos: spec(true, false, len, b, d, d, d, len),
            dx: spec(false, false, d, b, len, d, len, d),
            dw: spec(false, true, d, len, b, d, len, d),
        })
    }
}

/// Where the chunked step's buffers live: f32 regions (in f32 elements)
/// and element-typed regions (in elements of the input type). Every region
/// is `O(B)`, `O(Cc)` or `O(B x Cc)`: none grows with `C`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedLayout {
    /// Classes per chunk (at most `C`).
    pub chunk: usize,
    /// `||x_i||`, `[B]`.
    pub row_norm: usize,
    /// Angular margin offsets, `[B]`.
    pub row_a: usize,
    /// Additive margin offsets, `[B]`.
    pub row_b: usize,
    /// Margin scalers, `[B]`.
    pub row_z: usize,
    /// Per-row loss, `[B]`.
    pub sample_loss: usize,
    /// Running max of the logits, `[B]`.
    pub row_max: usize,
    /// Running sum-exp, `[B]`.
    pub row_sum: usize,
    /// `||W_j||` of the chunk's classes, `[Cc]`.
    pub class_norm: usize,
    /// The chunk's logits (cosines, then their gradient), `[B x Cc]`.
    pub logits: usize,
    /// f32 elements in all.
    pub f32_len: usize,
    /// `x / ||x||` in the input type, `[B x D]` (typed region).
    pub xn: usize,
    /// The chunk's `W / ||W||`, `[Cc x D]`.
    pub wn: usize,
    /// The chunk's logit gradient in the input type, `[B x Cc]` (16-bit
    /// inputs only; f32 inputs use the logits buffer).
    pub grad16: Option<usize>,
    /// Typed elements in all.
    pub typed_len: usize,
    /// Bytes per typed element.
    pub elem_bytes: usize,
}

impl ChunkedLayout {
    /// The layout for `shape`, an input type of `elem_bytes` bytes and
    /// chunks of `chunk` classes (clamped to `C`; zero is a typed error).
    pub fn new(shape: Shape, elem_bytes: usize, chunk: usize) -> Result<Self> {
        chunks(shape.classes, chunk)?;
        let cc = chunk.min(shape.classes).max(1);
        let (b, d) = (shape.batch, shape.dim);
        let too_big = || Error::Backend {
            message: format!("chunked path: buffers of {shape:?} overflow usize"),
        };
        let bc = b.checked_mul(cc).ok_or_else(too_big)?;
        let class_norm = 7 * b;
        let logits = class_norm + cc;
        let f32_len = logits.checked_add(bc).ok_or_else(too_big)?;
        let wn = b.checked_mul(d).ok_or_else(too_big)?;
        let ccd = cc.checked_mul(d).ok_or_else(too_big)?;
        let mut typed_len = wn.checked_add(ccd).ok_or_else(too_big)?;
        let grad16 = if elem_bytes == 4 {
            None
        } else {
            let at = typed_len;
            typed_len = typed_len.checked_add(bc).ok_or_else(too_big)?;
            Some(at)
        };
        Ok(ChunkedLayout {
            chunk: cc,
            row_norm: 0,
            row_a: b,
            row_b: 2 * b,
            row_z: 3 * b,
            sample_loss: 4 * b,
            row_max: 5 * b,
            row_sum: 6 * b,
            class_norm,
            logits,
            f32_len,
            xn: 0,
            wn,
            grad16,
            typed_len,
            elem_bytes,
        })
    }

    /// Device bytes the chunked step allocates beyond its inputs and the
    /// gradients (workspaces, EMA state and step record; cuBLAS's own
    /// workspace not counted): `4 (7 B + Cc + B Cc) + e (B D + Cc D) + e B Cc`
    /// (the last term for 16-bit inputs of `e` bytes only), plus 16 + the record.
    pub fn extra_bytes(&self) -> usize {
        4 * self.f32_len
            + self.elem_bytes * self.typed_len
            + 16
            + std::mem::size_of::<crate::kernel_params::AdafaceStepRecord>()
    }
}

/// The naive kernels' parameters over the chunked workspace (the chunk
/// buffers at their start); the caller sets x, w, labels, record, state,
/// dx, dw.
#[cfg(any(feature = "cuda", feature = "sim"))]
pub(crate) fn base_params(
    cfg: &AdaFaceConfig,
    shape: Shape,
    l: &ChunkedLayout,
    ws32: u64,
    ws_typed: u64,
) -> ChunkedParams {
    let f = |off: usize| ws32 + 4 * off as u64;
    let t = |off: usize| ws_typed + (l.elem_bytes * off) as u64;
    ChunkedParams {
        naive: NaiveParams {
            row_norm: f(l.row_norm),
            row_a: f(l.row_a),
            row_b: f(l.row_b),
            class_norm: f(l.class_norm),
            sample_loss: f(l.sample_loss),
            logits: f(l.logits),
            xn: t(l.xn),
            wn: t(l.wn),
            grad16: l.grad16.map_or(f(l.logits), t),
            batch: shape.batch as i64,
            dim: shape.dim as i64,
            classes: shape.classes as i64,
            s: cfg.s() as f32,
            eps: cfg.eps() as f32,
            m1: crate::launch::kernel_margin(cfg).m1 as f32,
            inv_batch: (1.0 / shape.batch as f64) as f32,
            ..Default::default()
        },
        row_max: f(l.row_max),
        row_sum: f(l.row_sum),
        chunk_start: 0,
        chunk_len: l.chunk as i64,
    }
}

/// The parameters of chunk `(start, len)`: for the chunk kernels, and (the
/// `naive` part) for `normalize` / `norm_backward` on the chunk's rows of
/// `W` and `dW` (batch 0, so that every block is a class row, the class
/// pointers shifted to the chunk). `elem_bytes` is the input's element size.
#[cfg(any(feature = "cuda", feature = "sim"))]
pub(crate) fn chunk_params(
    base: &ChunkedParams,
    start: usize,
    len: usize,
    elem_bytes: usize,
) -> (ChunkedParams, NaiveParams) {
    let mut cp = *base;
    cp.chunk_start = start as i64;
    cp.chunk_len = len as i64;
    let mut rows = base.naive;
    rows.batch = 0;
    rows.w = base.naive.w + (start * base.naive.dim as usize * elem_bytes) as u64;
    rows.dw = base.naive.dw + (start * base.naive.dim as usize * 4) as u64;
    (cp, rows)
}
