//! A vectorisable `exp` for the epilogues.
//!
//! `f32::exp` calls libm one value at a time, which would cost more than the
//! tile products at `D = 512`. This version is branch-free arithmetic that
//! the compiler turns into SIMD: `exp(x) = 2^n * exp(r)` with `n` the nearest
//! integer to `x / ln 2`, `r = x - n ln 2` in `[-ln2/2, ln2/2]` (ln 2 split
//! in two parts so the reduction is exact to f32 precision), and `exp(r)` by
//! its Taylor series to degree 7, whose truncation error `|r|^8 / 8!` is below
//! 6e-9 relative, under one f32 ulp. Inputs are clamped to `[-86, 88]`: the
//! epilogues only pass `x <= 0`, and anything below `exp(-86) ~ 4e-38` is
//! negligible next to the terms it is summed with.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split into a part with few significant bits (so `n * LN2_HI` is
/// exact) and the remainder.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds to the nearest integer, held in the low bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x` to about one ulp for `x` in `[-86, 88]` (clamped outside).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-86.0, 88.0);
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let n_bits = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    f32::from_bits((p.to_bits() as i32).wrapping_add(n_bits << 23) as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_libm_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -86.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1e30) < 1e-37);
    }
}
