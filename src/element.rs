//! Element types of input tensors and label types.

use half::{bf16, f16};

/// The storage type of an input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary64 (CPU reference only).
    F64,
    /// bfloat16.
    BF16,
    /// IEEE binary16.
    F16,
}

impl Dtype {
    /// Short lower-case name: `f32`, `f64`, `bf16`, `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::BF16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// Parses a name as [`Dtype::name`] writes it (`float32` etc. too).
    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "f32" | "float32" => Some(Dtype::F32),
            "f64" | "float64" => Some(Dtype::F64),
            "bf16" | "bfloat16" => Some(Dtype::BF16),
            "f16" | "float16" | "half" => Some(Dtype::F16),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A scalar type features and weights can be stored in.
pub trait Element: Copy + Send + Sync + Default + std::fmt::Debug + 'static {
    /// The matching [`Dtype`].
    const DTYPE: Dtype;
    /// Widens to `f64` (exact for every implementor).
    fn to_f64(self) -> f64;
    /// Widens (or for `f64`, rounds) to `f32`.
    fn to_f32(self) -> f32;
    /// Rounds an `f32` to this type.
    fn from_f32(v: f32) -> Self;
    /// Rounds an `f64` to this type.
    fn from_f64(v: f64) -> Self;
    /// Whether neither NaN nor infinite.
    fn is_finite(self) -> bool;
    /// Widens `src` into `dst` (same length): one call per block, so the
    /// half types can use their vectorised conversions.
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

macro_rules! impl_element_float {
    ($t:ty, $dtype:expr) => {
        impl Element for $t {
            const DTYPE: Dtype = $dtype;
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    };
}
impl_element_float!(f32, Dtype::F32);
impl_element_float!(f64, Dtype::F64);

macro_rules! impl_element_half {
    ($t:ty, $dtype:expr, $widen:expr) => {
        impl Element for $t {
            const DTYPE: Dtype = $dtype;
            #[inline]
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            #[inline]
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
            #[inline]
            fn from_f32(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn widen_slice(src: &[Self], dst: &mut [f32]) {
                ($widen)(src, dst)
            }
        }
    };
}
impl_element_half!(bf16, Dtype::BF16, widen_bf16);

/// `bf16` to `f32` is a 16-bit shift, written so the compiler vectorises it.
fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s.to_bits() as u32) << 16);
    }
}
impl_element_half!(f16, Dtype::F16, widen_f16);

/// `f16` to `f32`, eight at a time with the F16C instruction where the CPU
/// has it (half's own slice conversion pays a call per eight values).
fn widen_f16(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
        // SAFETY: the features are present.
        return unsafe { widen_f16_f16c(src, dst) };
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds both accesses; `f16` is a transparent
        // `u16`, so eight of them are one unaligned 128-bit load.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for (d, s) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *d = s.to_f32();
    }
}

/// An integer type class labels can be stored in: `i64` (PyTorch's), `i32`
/// or `u32`.
pub trait Label: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// Short name, for messages.
    const NAME: &'static str;
    /// The label as `i64` (lossless for every implementor).
    fn to_i64(self) -> i64;
}

impl Label for i64 {
    const NAME: &'static str = "i64";
    #[inline]
    fn to_i64(self) -> i64 {
        self
    }
}
impl Label for i32 {
    const NAME: &'static str = "i32";
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
}
impl Label for u32 {
    const NAME: &'static str = "u32";
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<E: Element>(values: &[f32]) {
        let src: Vec<E> = values.iter().map(|&v| E::from_f32(v)).collect();
        let mut dst = vec![f32::NAN; src.len()];
        E::widen_slice(&src, &mut dst);
        for (d, s) in dst.iter().zip(&src) {
            assert_eq!(d.to_bits(), s.to_f32().to_bits(), "{:?}", E::DTYPE);
        }
    }

    #[test]
    fn widen_slice_matches_to_f32_on_every_length() {
        let values: Vec<f32> = (0..37)
            .map(|i| match i {
                0 => 0.0,
                1 => -0.0,
                2 => f32::INFINITY,
                3 => 1e-7,
                4 => -65504.0,
                _ => (i as f32 - 18.5) * 0.37,
            })
            .collect();
        for n in [0, 1, 7, 8, 9, 16, 37] {
            check::<f16>(&values[..n]);
            check::<bf16>(&values[..n]);
            check::<f32>(&values[..n]);
        }
    }
}
