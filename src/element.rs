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
    ($t:ty, $dtype:expr) => {
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
        }
    };
}
impl_element_half!(bf16, Dtype::BF16);
impl_element_half!(f16, Dtype::F16);

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
