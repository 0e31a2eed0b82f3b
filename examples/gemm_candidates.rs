//! Compares SIMD matrix-multiply crates on the three tile products of the
//! fast CPU backend's backward pass, single-threaded (the backend runs one
//! product per rayon task), and prints GFLOP/s per candidate.
//!
//! ```text
//! cargo run --release --example gemm_candidates
//! ```
//!
//! Shapes: `B` rows, a class tile of `Cb` classes, `D` features.
//! `logits`: `S (B x Cb) = X (B x D) . W_tile^T`;
//! `dw`: `G (Cb x D) = A^T (Cb x B) . X (B x D)`;
//! `dx`: `H (B x D) += A (B x Cb) . W_tile (Cb x D)`.

use std::time::Instant;

/// One product: `dst (m x n) = [dst +] lhs . rhs`, all row-major with the
/// given strides, `lhs_t`/`rhs_t` meaning the operand is read transposed.
#[derive(Clone, Copy)]
struct Product {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    lhs_t: bool,
    rhs_t: bool,
    accumulate: bool,
}

fn strides(rows: usize, cols: usize, transposed: bool) -> (isize, isize) {
    // (row stride, column stride) of a logical rows x cols view.
    if transposed {
        (1, rows as isize)
    } else {
        (cols as isize, 1)
    }
}

fn run_gemm(p: &Product, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) {
    let (lrs, lcs) = strides(p.m, p.k, p.lhs_t);
    let (rrs, rcs) = strides(p.k, p.n, p.rhs_t);
    // SAFETY: the slices hold m*k, k*n and m*n elements with these strides.
    unsafe {
        gemm::gemm(
            p.m,
            p.n,
            p.k,
            dst.as_mut_ptr(),
            1,
            p.n as isize,
            p.accumulate,
            lhs.as_ptr(),
            lcs,
            lrs,
            rhs.as_ptr(),
            rcs,
            rrs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

fn run_matrixmultiply(p: &Product, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) {
    let (lrs, lcs) = strides(p.m, p.k, p.lhs_t);
    let (rrs, rcs) = strides(p.k, p.n, p.rhs_t);
    let beta = if p.accumulate { 1.0 } else { 0.0 };
    // SAFETY: as above.
    unsafe {
        matrixmultiply::sgemm(
            p.m,
            p.k,
            p.n,
            1.0,
            lhs.as_ptr(),
            lrs,
            lcs,
            rhs.as_ptr(),
            rrs,
            rcs,
            beta,
            dst.as_mut_ptr(),
            p.n as isize,
            1,
        )
    }
}

fn run_naive(p: &Product, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) {
    let (lrs, lcs) = strides(p.m, p.k, p.lhs_t);
    let (rrs, rcs) = strides(p.k, p.n, p.rhs_t);
    for i in 0..p.m {
        for j in 0..p.n {
            let mut acc = if p.accumulate { dst[i * p.n + j] } else { 0.0 };
            for l in 0..p.k {
                acc += lhs[(i as isize * lrs + l as isize * lcs) as usize]
                    * rhs[(l as isize * rrs + j as isize * rcs) as usize];
            }
            dst[i * p.n + j] = acc;
        }
    }
}

fn gflops(p: &Product, f: fn(&Product, &[f32], &[f32], &mut [f32])) -> f64 {
    let lhs: Vec<f32> = (0..p.m * p.k)
        .map(|i| ((i * 7 % 13) as f32) * 0.01)
        .collect();
    let rhs: Vec<f32> = (0..p.k * p.n)
        .map(|i| ((i * 5 % 11) as f32) * 0.01)
        .collect();
    let mut dst = vec![0.0f32; p.m * p.n];
    for _ in 0..3 {
        f(p, &lhs, &rhs, &mut dst);
    }
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..5 {
            f(p, &lhs, &rhs, &mut dst);
        }
        times.push(t.elapsed().as_secs_f64() / 5.0);
    }
    times.sort_by(f64::total_cmp);
    2.0 * (p.m * p.n * p.k) as f64 / times[times.len() / 2] / 1e9
}

fn main() {
    let d = 512;
    println!("single-threaded GFLOP/s (median of 15 x 5 calls)");
    println!(
        "{:<8} {:>4} {:>4} {:>8} {:>15} {:>8}",
        "product", "B", "Cb", "gemm", "matrixmultiply", "naive"
    );
    for &b in &[128usize, 256] {
        for &cb in &[128usize, 256] {
            let products = [
                Product {
                    name: "logits",
                    m: b,
                    n: cb,
                    k: d,
                    lhs_t: false,
                    rhs_t: true,
                    accumulate: false,
                },
                Product {
                    name: "dw",
                    m: cb,
                    n: d,
                    k: b,
                    lhs_t: true,
                    rhs_t: false,
                    accumulate: false,
                },
                Product {
                    name: "dx",
                    m: b,
                    n: d,
                    k: cb,
                    lhs_t: false,
                    rhs_t: false,
                    accumulate: true,
                },
            ];
            for p in &products {
                let naive = if b == 128 && cb == 128 {
                    format!("{:8.1}", gflops(p, run_naive))
                } else {
                    "-".into()
                };
                println!(
                    "{:<8} {:>4} {:>4} {:>8.1} {:>15.1} {:>8}",
                    p.name,
                    b,
                    cb,
                    gflops(p, run_gemm),
                    gflops(p, run_matrixmultiply),
                    naive
                );
            }
        }
    }
}
