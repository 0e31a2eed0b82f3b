//! The element types the fast CPU backend reads, and how it widens them.

use half::{bf16, f16};

use crate::element::Element;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// An input element type of the fast CPU backend: `f32`, `bf16` or `f16`.
/// Everything is computed in `f32`; narrow types are widened one weight
/// tile at a time (once per tile per pass), never the whole weight.
pub trait CpuElement: Element + sealed::Sealed {
    /// The data itself when it already is `f32`, so weight tiles can be
    /// read in place without a copy.
    fn as_f32(src: &[Self]) -> Option<&[f32]>;
    /// Widens `src` into `dst` (same length).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl CpuElement for f32 {
    fn as_f32(src: &[f32]) -> Option<&[f32]> {
        Some(src)
    }
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl CpuElement for bf16 {
    fn as_f32(_: &[bf16]) -> Option<&[f32]> {
        None
    }
    fn widen(src: &[bf16], dst: &mut [f32]) {
        <bf16 as Element>::widen_slice(src, dst);
    }
}

impl CpuElement for f16 {
    fn as_f32(_: &[f16]) -> Option<&[f32]> {
        None
    }
    fn widen(src: &[f16], dst: &mut [f32]) {
        <f16 as Element>::widen_slice(src, dst);
    }
}

/// Sum of squares in `f32` with independent partial sums (vectorisable, and
/// more accurate than one running sum).
pub(crate) fn sum_squares(v: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x * x;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&x| x * x).sum::<f32>()
}

/// Dot product in `f32` with independent partial sums.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s += u * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}
