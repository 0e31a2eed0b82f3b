//! Naive baselines, named as such: what a straightforward implementation
//! does, kept in the crate so that the fused kernels are measured and
//! checked against it.
//!
//! * CPU ([`cpu`]): the materialising path a user would write with a GEMM
//!   library: `B x C` logits, softmax and gradient, then two more GEMMs.
//! * GPU ([`cuda`], feature `cuda` + cuBLAS at run time): three cuBLAS GEMMs
//!   around simple row kernels (`kernels/naive.cu`) that
//!   materialise the `B x C` logits, the normalised copies of `x` and `W`,
//!   and the logit gradient. Its extra memory is [`NaiveLayout::extra_bytes`].
//! * The same pipeline on the simulator (`sim::forward_backward`, feature `sim`), with
//!   the GEMMs done on the CPU from the very [`GemmSpec`]s given to cuBLAS,
//!   so the layout reasoning of the GPU path is tested without a GPU.
//!
//! A step: `adaface_stats` (norms, EMA, margins) -> `normalize` -> GEMM
//! `cos = xn . wn^T` -> `softmax` (loss per row, then `dL/dcos` over the
//! logits) -> `loss` (mean, EMA commit) -> GEMMs `gx = G . wn`,
//! `gw = G^T . xn` -> `norm_backward` (Jacobians of the normalisations).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "sim")]
pub mod sim;

#[cfg(any(feature = "cuda", feature = "sim"))]
use crate::config::AdaFaceConfig;
use crate::error::{Error, Result};
#[cfg(any(feature = "cuda", feature = "sim"))]
use crate::kernel_params::AdafaceStatsParams;
use crate::shape::Shape;

/// Parameters of the naive kernels: `AdafaceNaiveParams` of
/// `kernels/adaface_params.h` (addresses are device pointers on the GPU,
/// host pointers in the simulator).
pub use crate::kernel_params::AdafaceNaiveParams as NaiveParams;

/// One GEMM as cuBLAS sees it (column-major): `C (m x n, ldc) = op(A) .
/// op(B)`, alpha 1, beta 0, f32 output and f32 accumulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmSpec {
    /// `op(A) = A^T`.
    pub trans_a: bool,
    /// `op(B) = B^T`.
    pub trans_b: bool,
    /// Rows of `C`.
    pub m: usize,
    /// Columns of `C`.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// Leading dimension of `A`.
    pub lda: usize,
    /// Leading dimension of `B`.
    pub ldb: usize,
    /// Leading dimension of `C`.
    pub ldc: usize,
}

/// The three GEMMs of a naive step on row-major buffers (a row-major
/// `R x K` matrix is a column-major `K x R` one with leading dimension K).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NaiveGemms {
    /// `logits[B x C] = xn . wn^T`: A = `wn`, B = `xn`, C = logits.
    pub cos: GemmSpec,
    /// `dx[B x D] = G . wn`: A = `wn`, B = G, C = `dx`.
    pub dx: GemmSpec,
    /// `dw[C x D] = G^T . xn`: A = `xn`, B = G, C = `dw`.
    pub dw: GemmSpec,
}

impl NaiveGemms {
    /// The GEMMs of `shape`; cuBLAS takes 32-bit sizes, so larger ones are
    /// a typed error.
    pub fn new(shape: Shape) -> Result<Self> {
        let (b, d, c) = (shape.batch, shape.dim, shape.classes);
        let limit = i32::MAX as usize;
        if b > limit || d > limit || c > limit {
            return Err(Error::Backend {
                message: format!("naive cuBLAS path: a dimension of {shape:?} exceeds i32"),
            });
        }
        Ok(NaiveGemms {
            cos: GemmSpec {
                trans_a: true,
                trans_b: false,
                m: c,
                n: b,
                k: d,
                lda: d,
                ldb: d,
                ldc: c,
            },
            dx: GemmSpec {
                trans_a: false,
                trans_b: false,
                m: d,
                n: b,
                k: c,
                lda: d,
                ldb: c,
                ldc: d,
            },
            dw: GemmSpec {
                trans_a: false,
                trans_b: true,
                m: d,
                n: c,
                k: b,
                lda: d,
                ldb: c,
                ldc: d,
            },
        })
    }
}

/// Where the naive step's buffers live: f32 regions (in f32 elements) and
/// element-typed regions (in elements of the input type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NaiveLayout {
    /// `||x_i||`, `[B]`.
    pub row_norm: usize,
    /// Angular margin offsets, `[B]`.
    pub row_a: usize,
    /// Additive margin offsets, `[B]`.
    pub row_b: usize,
    /// Margin scalers, `[B]`.
    pub row_z: usize,
    /// `||W_j||`, `[C]`.
    pub class_norm: usize,
    /// Per-row loss, `[B]`.
    pub sample_loss: usize,
    /// The materialised logits (cosines, then their gradient), `[B x C]`.
    pub logits: usize,
    /// f32 elements in all.
    pub f32_len: usize,
    /// `x / ||x||` in the input type, `[B x D]` (offset into the typed region).
    pub xn: usize,
    /// `W / ||W||`, `[C x D]`.
    pub wn: usize,
    /// The logit gradient in the input type, `[B x C]` (16-bit inputs only;
    /// f32 inputs use the logits buffer).
    pub grad16: Option<usize>,
    /// Typed elements in all.
    pub typed_len: usize,
    /// Bytes per typed element.
    pub elem_bytes: usize,
}

impl NaiveLayout {
    /// The layout for `shape` and an input type of `elem_bytes` bytes.
    pub fn new(shape: Shape, elem_bytes: usize) -> Result<Self> {
        let (b, d, c) = (shape.batch, shape.dim, shape.classes);
        let too_big = || Error::Backend {
            message: format!("naive path: buffers of {shape:?} overflow usize"),
        };
        let bc = b.checked_mul(c).ok_or_else(too_big)?;
        let logits = 5 * b + c;
        let f32_len = logits.checked_add(bc).ok_or_else(too_big)?;
        let wn = b.checked_mul(d).ok_or_else(too_big)?;
        let cd = c.checked_mul(d).ok_or_else(too_big)?;
        let mut typed_len = wn.checked_add(cd).ok_or_else(too_big)?;
        let grad16 = if elem_bytes == 4 {
            None
        } else {
            let at = typed_len;
            typed_len = typed_len.checked_add(bc).ok_or_else(too_big)?;
            Some(at)
        };
        Ok(NaiveLayout {
            row_norm: 0,
            row_a: b,
            row_b: 2 * b,
            row_z: 3 * b,
            class_norm: 4 * b,
            sample_loss: 4 * b + c,
            logits,
            f32_len,
            xn: 0,
            wn,
            grad16,
            typed_len,
            elem_bytes,
        })
    }

    /// Device bytes the naive step allocates beyond its inputs and the
    /// gradients (workspaces, EMA state and step record; cuBLAS's own
    /// workspace not counted).
    pub fn extra_bytes(&self) -> usize {
        4 * self.f32_len
            + self.elem_bytes * self.typed_len
            + 16
            + std::mem::size_of::<crate::kernel_params::AdafaceStepRecord>()
    }
}

/// The stats kernel's parameters for a naive step (same kernel, and the
/// same filling, as the fused path).
#[cfg(any(feature = "cuda", feature = "sim"))]
pub(crate) fn stats_params(
    cfg: &AdaFaceConfig,
    shape: Shape,
    p: &NaiveParams,
    row_z: u64,
) -> AdafaceStatsParams {
    crate::launch::stats_params(
        cfg,
        shape,
        crate::launch::StatsBuffers {
            x: p.x,
            labels: p.labels,
            state: p.state,
            record: p.record,
            row_norm: p.row_norm,
            row_a: p.row_a,
            row_b: p.row_b,
            row_z,
            // The affine policies only (the naive paths reject the others).
            ..Default::default()
        },
    )
}

/// The naive kernels' parameters with every address filled in from the
/// base addresses of the f32 and typed workspaces; the caller sets x, w, labels, record, state, dx, dw.
#[cfg(any(feature = "cuda", feature = "sim"))]
pub(crate) fn naive_params(
    cfg: &AdaFaceConfig,
    shape: Shape,
    l: &NaiveLayout,
    ws32: u64,
    ws_typed: u64,
) -> NaiveParams {
    let f = |off: usize| ws32 + 4 * off as u64;
    let t = |off: usize| ws_typed + (l.elem_bytes * off) as u64;
    NaiveParams {
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
    }
}
