//! The tile products, on the `gemm` crate's SIMD microkernels.
//!
//! Every product of the backend is one call here, single-threaded: the
//! backend already runs one tile per rayon task, so nesting the crate's own
//! parallelism would only oversubscribe the cores. Views carry explicit
//! strides so transposed operands need no copy.

/// A read-only `rows x cols` view of `f32` data with row and column strides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A view; panics (an internal bug, never an input error) if the extent
    /// does not fit `data`.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        assert!(
            extent(rows, cols, rs, cs) <= data.len(),
            "MatRef out of bounds"
        );
        MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A dense row-major view (`rs = cols`, `cs = 1`).
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose, as a view of the same data.
    pub(crate) fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A mutable dense row-major `rows x cols` view with row stride `rs`.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
}

impl<'a> MatMut<'a> {
    /// A view; panics (an internal bug) if the extent does not fit `data`.
    pub(crate) fn new(data: &'a mut [f32], rows: usize, cols: usize, rs: usize) -> Self {
        assert!(
            extent(rows, cols, rs, 1) <= data.len(),
            "MatMut out of bounds"
        );
        MatMut {
            data,
            rows,
            cols,
            rs,
        }
    }
}

/// Elements spanned by a strided view.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst = lhs . rhs`, or `dst += lhs . rhs` when `accumulate`.
pub(crate) fn matmul(dst: MatMut<'_>, lhs: MatRef<'_>, rhs: MatRef<'_>, accumulate: bool) {
    assert!(
        lhs.rows == dst.rows && rhs.cols == dst.cols && lhs.cols == rhs.rows,
        "matmul shapes disagree"
    );
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if lhs.cols == 0 {
        if !accumulate {
            for r in 0..dst.rows {
                dst.data[r * dst.rs..r * dst.rs + dst.cols].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the constructors checked that every view's strided extent lies
    // inside its slice, the shapes agree (asserted above), and `dst` is a
    // unique borrow that cannot alias the shared operands.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr(),
            1,
            dst.rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    out[i * n + j] += a.data[i * a.rs + l * a.cs] * b.data[l * b.rs + j * b.cs];
                }
            }
        }
        out
    }

    #[test]
    fn strided_products_match_naive() {
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        // a: m x k row-major; b stored n x k, used transposed (k x n).
        let av = MatRef::rows(&a, m, k);
        let bv = MatRef::rows(&b, n, k).t();
        let want = naive(m, n, k, av, bv);
        let mut got = vec![1.0; m * n];
        matmul(MatMut::new(&mut got, m, n, n), av, bv, false);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5);
        }
        matmul(MatMut::new(&mut got, m, n, n), av, bv, true);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - 2.0 * w).abs() < 1e-5);
        }
    }
}
