//! The element-wise work on each `(row block, class tile)` of dot products:
//! pass 1 turns them into logits and folds them into each row's running
//! maximum and sum of exponentials; pass 2 turns them into the softmax
//! gradient that both backward products consume.
//!
//! The loops are written so the compiler vectorises them; on x86-64 they are
//! compiled a second time with AVX2 and FMA enabled and picked at run time,
//! so the crate still runs on any x86-64 (and elsewhere) without
//! `-C target-cpu`.

use super::fastexp;

/// Constants of the epilogue that do not change within a step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Consts {
    /// Logit scale `s`.
    pub s: f32,
    /// Clamp bounds `-1 + eps` and `1 - eps`.
    pub lo: f32,
    /// See `lo`.
    pub hi: f32,
    /// `1 / B`.
    pub inv_b: f32,
    /// CurricularFace's `t` of this step (`None` for the other policies).
    pub curricular_t: Option<f32>,
}

/// The rows of one block, as the epilogues need them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowBlock<'a> {
    /// Label of each row.
    pub labels: &'a [usize],
    /// Target logit of each row (margin applied), computed once per step.
    pub target_logit: &'a [f32],
    /// `d target_logit / d c` times the clamp gate.
    pub target_dlogit: &'a [f32],
    /// CurricularFace's hard-negative threshold of each row (empty for the
    /// other policies).
    pub threshold: &'a [f32],
}

/// One tile of dot products `x_hat_i . w_j` (not yet divided by `||w_j||`),
/// `rows x cols` with row stride `ld`, for classes `first_class..`.
#[derive(Debug)]
pub(crate) struct Tile<'a> {
    /// The values, overwritten by the epilogue.
    pub data: &'a mut [f32],
    /// Row stride.
    pub ld: usize,
    /// Valid columns (classes in this tile).
    pub cols: usize,
    /// Global index of the tile's first class.
    pub first_class: usize,
    /// `1 / ||w_j||` of the tile's classes.
    pub inv_r: &'a [f32],
}

/// Pass 1: logits, then per row `max <- max(max, max_j l_ij)` and
/// `sum <- sum e^(old max - max) + sum_j e^(l_ij - max)`.
pub(crate) fn pass1(
    k: &Consts,
    tile: Tile<'_>,
    rows: RowBlock<'_>,
    run_max: &mut [f32],
    run_sum: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports the features this copy is compiled for.
        return unsafe { pass1_avx2(k, tile, rows, run_max, run_sum) };
    }
    pass1_body(k, tile, rows, run_max, run_sum)
}

/// Pass 2: `A'_ij = (p_ij - [j = y_i]) / B * dlogit_ij / ||w_j||`, written
/// over the tile, with `p_ij = e^(l_ij - lse_i)`.
pub(crate) fn pass2(k: &Consts, tile: Tile<'_>, rows: RowBlock<'_>, lse: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as above.
        return unsafe { pass2_avx2(k, tile, rows, lse) };
    }
    pass2_body(k, tile, rows, lse)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pass1_avx2(
    k: &Consts,
    tile: Tile<'_>,
    rows: RowBlock<'_>,
    run_max: &mut [f32],
    run_sum: &mut [f32],
) {
    pass1_body(k, tile, rows, run_max, run_sum)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pass2_avx2(k: &Consts, tile: Tile<'_>, rows: RowBlock<'_>, lse: &[f32]) {
    pass2_body(k, tile, rows, lse)
}

/// Lanes of the partial reductions: enough for AVX-512 and a multiple of
/// every narrower vector.
const LANES: usize = 16;

#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// The target's column in this tile, if the row's label falls in it.
#[inline(always)]
fn target_col(label: usize, first: usize, cols: usize) -> Option<usize> {
    label.checked_sub(first).filter(|&c| c < cols)
}

#[inline(always)]
fn pass1_body(
    k: &Consts,
    tile: Tile<'_>,
    rows: RowBlock<'_>,
    run_max: &mut [f32],
    run_sum: &mut [f32],
) {
    let inv_r = &tile.inv_r[..tile.cols];
    for (i, label) in rows.labels.iter().enumerate() {
        let row = &mut tile.data[i * tile.ld..i * tile.ld + tile.cols];
        match k.curricular_t {
            None => {
                for (v, &ir) in row.iter_mut().zip(inv_r) {
                    *v = k.s * clamp(*v * ir, k.lo, k.hi);
                }
            }
            Some(t) => {
                // CurricularFace: hard negatives (above the row's threshold)
                // become c (t + c).
                let th = rows.threshold[i];
                for (v, &ir) in row.iter_mut().zip(inv_r) {
                    let c = clamp(*v * ir, k.lo, k.hi);
                    *v = if c > th { k.s * c * (t + c) } else { k.s * c };
                }
            }
        }
        if let Some(t) = target_col(*label, tile.first_class, tile.cols) {
            row[t] = rows.target_logit[i];
        }
        let row_max = max_of(row);
        let new_max = if row_max > run_max[i] {
            row_max
        } else {
            run_max[i]
        };
        let tile_sum = sum_exp(row, new_max);
        // Rescale what came before (empty at the start: its max is -inf).
        let carried = if run_sum[i] == 0.0 {
            0.0
        } else {
            run_sum[i] * (run_max[i] - new_max).exp()
        };
        run_max[i] = new_max;
        run_sum[i] = carried + tile_sum;
    }
}

#[inline(always)]
fn pass2_body(k: &Consts, tile: Tile<'_>, rows: RowBlock<'_>, lse: &[f32]) {
    let inv_r = &tile.inv_r[..tile.cols];
    let coef = k.s * k.inv_b;
    for (i, label) in rows.labels.iter().enumerate() {
        let row = &mut tile.data[i * tile.ld..i * tile.ld + tile.cols];
        let l = lse[i];
        match k.curricular_t {
            None => {
                for (v, &ir) in row.iter_mut().zip(inv_r) {
                    let d = *v * ir;
                    let p = fastexp::exp(k.s * clamp(d, k.lo, k.hi) - l);
                    // The clamp passes the gradient only inside its bounds.
                    let gate = if k.lo <= d && d <= k.hi {
                        coef * ir
                    } else {
                        0.0
                    };
                    *v = p * gate;
                }
            }
            Some(t) => {
                // CurricularFace: a hard negative's logit s c (t + c) has
                // derivative s (t + 2c); t and the mask are detached.
                let th = rows.threshold[i];
                for (v, &ir) in row.iter_mut().zip(inv_r) {
                    let d = *v * ir;
                    let c = clamp(d, k.lo, k.hi);
                    let (logit, slope) = if c > th {
                        (k.s * c * (t + c), t + c + c)
                    } else {
                        (k.s * c, 1.0)
                    };
                    let p = fastexp::exp(logit - l);
                    let gate = if k.lo <= d && d <= k.hi {
                        coef * ir * slope
                    } else {
                        0.0
                    };
                    *v = p * gate;
                }
            }
        }
        if let Some(t) = target_col(*label, tile.first_class, tile.cols) {
            let p = (rows.target_logit[i] - l).exp();
            row[t] = (p - 1.0) * k.inv_b * rows.target_dlogit[i] * inv_r[t];
        }
    }
}

#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &v in rest {
        m = m.max(v);
    }
    m
}

#[inline(always)]
fn sum_exp(row: &[f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += fastexp::exp(v - shift);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &v in rest {
        s += fastexp::exp(v - shift);
    }
    s
}
