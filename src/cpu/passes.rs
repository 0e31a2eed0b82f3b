//! The two passes over the classes, blocked over rows and classes.
//!
//! Classes are split into `chunks` contiguous runs of whole class tiles, one
//! rayon task each, in a fixed order, so results do not depend on
//! scheduling. Within a chunk, tile by tile:
//!
//! * pass 1: `S = X_hat . W_tile^T` for each row block, then the epilogue
//!   folds the logits into each row's running `(max, sum of exp)`; chunks'
//!   pairs are merged in chunk order into each row's log-sum-exp;
//! * pass 2: the same `S` again, the epilogue turns it into the softmax
//!   gradient `A'` (scaled by `1 / ||w_j||`), then `dW_tile (+)= A'^T . X_hat`
//!   straight into the caller's `dW` rows (a chunk owns its classes' rows:
//!   no races) and `dX_chunk (+)= A' . W_tile` into the chunk's own partial
//!   (the first chunk writes the caller's `dX` buffer directly), summed in
//!   chunk order at the end.
//!
//! Extra memory: one `row_tile x class_tile` tile per task, one widened
//! weight tile per task for `bf16` / `f16`, `chunks - 1` partial `dX`
//! (`B x D` each), `X_hat` (`B x D`), `1 / ||w_j||` (`C`) and a few values per
//! row. Never anything `B x C`.

use rayon::prelude::*;

use super::epilogue::{self, Consts, RowBlock, Tile};
use super::input::{dot, CpuElement};
use super::matmul::{matmul, MatMut, MatRef};
use super::rows::{class_norm, Rows};
use super::CpuOptions;

/// Tile and chunk sizes of one step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub batch: usize,
    pub dim: usize,
    pub classes: usize,
    pub class_tile: usize,
    pub row_tile: usize,
    /// Classes per chunk, a multiple of `class_tile`.
    pub chunk_classes: usize,
    /// Number of chunks (at least one, each non-empty).
    pub chunks: usize,
}

impl Plan {
    pub(crate) fn new(batch: usize, dim: usize, classes: usize, opts: &CpuOptions) -> Plan {
        let class_tile = opts.class_tile.min(classes);
        let row_tile = opts.row_tile.min(batch);
        let tiles = classes.div_ceil(class_tile);
        let per_chunk = tiles.div_ceil(opts.partitions.min(tiles));
        let chunk_classes = per_chunk * class_tile;
        Plan {
            batch,
            dim,
            classes,
            class_tile,
            row_tile,
            chunk_classes,
            chunks: classes.div_ceil(chunk_classes),
        }
    }

    /// `(first class, classes)` of each tile of chunk `c`.
    fn tiles(&self, c: usize) -> impl Iterator<Item = (usize, usize)> {
        let start = c * self.chunk_classes;
        let end = (start + self.chunk_classes).min(self.classes);
        let t = self.class_tile;
        (start..end).step_by(t).map(move |j| (j, t.min(end - j)))
    }

    /// `(first row, rows)` of each row block.
    fn row_blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (b, t) = (self.batch, self.row_tile);
        (0..b).step_by(t).map(move |i| (i, t.min(b - i)))
    }
}

/// Where a task reads its weight tiles from: the weight itself when it is
/// `f32`, else a buffer it is widened into once per tile.
struct TileSource<'a, E> {
    weight: &'a [E],
    dim: usize,
    buf: Vec<f32>,
}

impl<'a, E: CpuElement> TileSource<'a, E> {
    fn new(weight: &'a [E], plan: &Plan) -> Self {
        let buf = if E::as_f32(weight).is_some() {
            Vec::new()
        } else {
            vec![0.0; plan.class_tile * plan.dim]
        };
        TileSource {
            weight,
            dim: plan.dim,
            buf,
        }
    }

    /// Rows `first..first + count` of the weight as `f32`.
    fn load(&mut self, first: usize, count: usize) -> &[f32] {
        let range = first * self.dim..(first + count) * self.dim;
        match E::as_f32(self.weight) {
            Some(w) => &w[range],
            None => {
                let out = &mut self.buf[..count * self.dim];
                E::widen(&self.weight[range], out);
                out
            }
        }
    }
}

fn row_block<'a>(rows: &'a Rows, first: usize, count: usize) -> RowBlock<'a> {
    let r = first..first + count;
    RowBlock {
        labels: &rows.labels[r.clone()],
        target_logit: &rows.target_logit[r.clone()],
        target_dlogit: &rows.target_dlogit[r.clone()],
        threshold: if rows.threshold.is_empty() {
            &[]
        } else {
            &rows.threshold[r]
        },
    }
}

/// Pass 1. Returns each row's log-sum-exp and fills `inv_r` (`C`).
pub(crate) fn log_sum_exp<E: CpuElement>(
    plan: &Plan,
    k: &Consts,
    rows: &Rows,
    weight: &[E],
    inv_r: &mut [f32],
) -> Vec<f32> {
    let (max, sum) = row_max_sum(plan, k, rows, weight, inv_r);
    max.iter().zip(&sum).map(|(&m, &s)| m + s.ln()).collect()
}

/// Pass 1 without the final logarithm: each row's maximum logit and sum
/// of `exp(logit - maximum)` (the partial statistics of a class shard), and
/// fills `inv_r` (`C`).
pub(crate) fn row_max_sum<E: CpuElement>(
    plan: &Plan,
    k: &Consts,
    rows: &Rows,
    weight: &[E],
    inv_r: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let per_chunk: Vec<(Vec<f32>, Vec<f32>)> = inv_r
        .par_chunks_mut(plan.chunk_classes)
        .enumerate()
        .map(|(c, inv_r_chunk)| stats_chunk(plan, k, rows, weight, c, inv_r_chunk))
        .collect();
    (0..plan.batch)
        .map(|i| {
            let (mut m, mut s) = (f32::NEG_INFINITY, 0.0f32);
            for (cm, cs) in &per_chunk {
                let new_m = m.max(cm[i]);
                s = s * (m - new_m).exp() + cs[i] * (cm[i] - new_m).exp();
                m = new_m;
            }
            (m, s)
        })
        .unzip()
}

fn stats_chunk<E: CpuElement>(
    plan: &Plan,
    k: &Consts,
    rows: &Rows,
    weight: &[E],
    chunk: usize,
    inv_r_chunk: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = plan.dim;
    let chunk_start = chunk * plan.chunk_classes;
    let mut source = TileSource::new(weight, plan);
    let mut s = vec![0.0f32; plan.row_tile * plan.class_tile];
    let mut run_max = vec![f32::NEG_INFINITY; plan.batch];
    let mut run_sum = vec![0.0f32; plan.batch];
    for (j0, cols) in plan.tiles(chunk) {
        let w = source.load(j0, cols);
        let inv_r = &mut inv_r_chunk[j0 - chunk_start..j0 - chunk_start + cols];
        for (ir, wr) in inv_r.iter_mut().zip(w.chunks_exact(d)) {
            *ir = 1.0 / class_norm(wr);
        }
        let w_t = MatRef::rows(w, cols, d).t();
        for (r0, rb) in plan.row_blocks() {
            let x = MatRef::rows(&rows.x_hat[r0 * d..(r0 + rb) * d], rb, d);
            matmul(MatMut::new(&mut s, rb, cols, cols), x, w_t, false);
            let tile = Tile {
                data: &mut s,
                ld: cols,
                cols,
                first_class: j0,
                inv_r,
            };
            epilogue::pass1(
                k,
                tile,
                row_block(rows, r0, rb),
                &mut run_max[r0..r0 + rb],
                &mut run_sum[r0..r0 + rb],
            );
        }
    }
    (run_max, run_sum)
}

/// Pass 2: writes `dW` (`C x D`) completely and the un-projected
/// `dX` sum into `grad_features`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gradients<E: CpuElement>(
    plan: &Plan,
    k: &Consts,
    rows: &Rows,
    lse: &[f32],
    weight: &[E],
    inv_r: &[f32],
    grad_features: &mut [f32],
    grad_weight: &mut [f32],
) {
    let bd = plan.batch * plan.dim;
    let mut partials = vec![0.0f32; (plan.chunks - 1) * bd];
    let dx_parts: Vec<&mut [f32]> = std::iter::once(&mut *grad_features)
        .chain(partials.chunks_mut(bd))
        .collect();
    dx_parts
        .into_par_iter()
        .zip(inv_r.par_chunks(plan.chunk_classes))
        .zip(grad_weight.par_chunks_mut(plan.chunk_classes * plan.dim))
        .enumerate()
        .for_each(|(c, ((dx, inv_r_chunk), dw_chunk))| {
            grad_chunk(plan, k, rows, lse, weight, c, inv_r_chunk, dw_chunk, dx)
        });
    // Sum the partials in chunk order, then project out each row's radial
    // component: dx_i = (g_i - x_hat_i (x_hat_i . g_i)) / ||x_i||.
    let d = plan.dim;
    grad_features
        .par_chunks_mut(d)
        .enumerate()
        .for_each(|(i, g)| {
            for p in partials.chunks_exact(bd) {
                for (a, &b) in g.iter_mut().zip(&p[i * d..(i + 1) * d]) {
                    *a += b;
                }
            }
            let u = &rows.x_hat[i * d..(i + 1) * d];
            let along = dot(u, g);
            let inv_n = 1.0 / rows.norms[i];
            for (a, &uv) in g.iter_mut().zip(u) {
                *a = (*a - uv * along) * inv_n;
            }
        });
}

#[allow(clippy::too_many_arguments)]
fn grad_chunk<E: CpuElement>(
    plan: &Plan,
    k: &Consts,
    rows: &Rows,
    lse: &[f32],
    weight: &[E],
    chunk: usize,
    inv_r_chunk: &[f32],
    dw_chunk: &mut [f32],
    dx: &mut [f32],
) {
    let d = plan.dim;
    let chunk_start = chunk * plan.chunk_classes;
    let mut source = TileSource::new(weight, plan);
    let mut s = vec![0.0f32; plan.row_tile * plan.class_tile];
    for (t, (j0, cols)) in plan.tiles(chunk).enumerate() {
        let w = source.load(j0, cols);
        let local = j0 - chunk_start;
        let inv_r = &inv_r_chunk[local..local + cols];
        let dw = &mut dw_chunk[local * d..(local + cols) * d];
        let w_rows = MatRef::rows(w, cols, d);
        for (rbi, (r0, rb)) in plan.row_blocks().enumerate() {
            let x = MatRef::rows(&rows.x_hat[r0 * d..(r0 + rb) * d], rb, d);
            matmul(MatMut::new(&mut s, rb, cols, cols), x, w_rows.t(), false);
            let tile = Tile {
                data: &mut s,
                ld: cols,
                cols,
                first_class: j0,
                inv_r,
            };
            epilogue::pass2(k, tile, row_block(rows, r0, rb), &lse[r0..r0 + rb]);
            let a = MatRef::rows(&s, rb, cols);
            matmul(MatMut::new(dw, cols, d, d), a.t(), x, rbi > 0);
            let dx_rows = &mut dx[r0 * d..(r0 + rb) * d];
            matmul(MatMut::new(dx_rows, rb, d, d), a, w_rows, t > 0);
        }
        // dw_j = g'_j - w_hat_j (w_hat_j . g'_j), where g'_j already carries
        // the factor 1 / ||w_j||. Written with w_hat_j = w_j / ||w_j|| on
        // both sides, never with 1 / ||w_j||^2: that overflows f32 for rows
        // whose norm is below about 1e-19, which validation accepts.
        for ((g, wr), &ir) in dw.chunks_exact_mut(d).zip(w.chunks_exact(d)).zip(inv_r) {
            let along = dot(wr, g) * ir;
            for (a, &wv) in g.iter_mut().zip(wr) {
                *a -= (wv * ir) * along;
            }
        }
    }
}
