//! The one error type of the crate.
//!
//! Every fallible call returns [`Error`]. A call that returns an error has
//! written nothing: outputs are untouched and the EMA state is unchanged.

use std::fmt;

/// Which input tensor an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tensor {
    /// Raw features `x`, `B x D` row-major.
    Features,
    /// Raw class weights `W`, `C x D` row-major.
    Weight,
    /// Class labels, `B` entries.
    Labels,
    /// Per-row margin scalers supplied by the caller.
    MarginScaler,
    /// The caller's buffer for `d loss / d x`, `B x D`.
    GradFeatures,
    /// The caller's buffer for `d loss / d W`, `C x D`.
    GradWeight,
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tensor::Features => "features",
            Tensor::Weight => "weight",
            Tensor::Labels => "labels",
            Tensor::MarginScaler => "margin_scaler",
            Tensor::GradFeatures => "grad_features",
            Tensor::GradWeight => "grad_weight",
        })
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A buffer has the wrong number of elements for the declared shape.
    ShapeMismatch {
        /// The offending tensor.
        tensor: Tensor,
        /// Elements the shape requires.
        expected: usize,
        /// Elements supplied.
        actual: usize,
    },
    /// A label is negative or not below the number of classes.
    LabelOutOfRange {
        /// Row of the batch holding the label.
        row: usize,
        /// The label as given.
        label: i64,
        /// Number of classes `C`.
        classes: usize,
    },
    /// A NaN or infinity in an input.
    NonFinite {
        /// The tensor holding it.
        tensor: Tensor,
        /// Flat (row-major) index of the first offending element found.
        index: usize,
    },
    /// A feature or class row of norm zero cannot be normalised.
    ZeroNorm {
        /// [`Tensor::Features`] or [`Tensor::Weight`].
        tensor: Tensor,
        /// The row.
        row: usize,
    },
    /// A feature or class row whose squared norm overflows the accumulation
    /// precision.
    NormOverflow {
        /// [`Tensor::Features`] or [`Tensor::Weight`].
        tensor: Tensor,
        /// The row.
        row: usize,
    },
    /// The batch has no rows.
    EmptyBatch,
    /// The embedding dimension or the class count is zero.
    EmptyDimension {
        /// `"dim"` or `"classes"`.
        dimension: &'static str,
    },
    /// A shape whose element count does not fit the index types in use.
    TooLarge {
        /// What overflowed.
        what: &'static str,
    },
    /// A configuration value out of its domain.
    InvalidConfig {
        /// The parameter's name.
        parameter: &'static str,
        /// Its value.
        value: f64,
        /// What it must satisfy.
        requirement: &'static str,
    },
    /// An EMA state that cannot be used (non-finite, or a negative std).
    InvalidState {
        /// What is wrong.
        reason: &'static str,
    },
    /// A backend that is not usable on this machine (no GPU, no driver, no
    /// NVRTC, or a feature not compiled in).
    DeviceUnavailable {
        /// Why.
        reason: String,
    },
    /// An input or output buffer of the wrong element type for the call.
    DtypeMismatch {
        /// What the call needed.
        expected: &'static str,
        /// What it got.
        actual: &'static str,
    },
    /// A tensor with the wrong number of dimensions, e.g. a 3-d features
    /// tensor given to an op that takes `B x D` (framework integrations).
    RankMismatch {
        /// The offending tensor.
        tensor: Tensor,
        /// Dimensions required.
        expected: usize,
        /// Dimensions supplied.
        actual: usize,
    },
    /// A class shard that does not fit the global problem (offset and
    /// size outside the global class count, an empty shard, shards that do
    /// not partition the classes), or phase-2 row statistics that do not
    /// belong to the phase-1 step (wrong length, non-finite).
    InvalidShard {
        /// What is wrong.
        reason: String,
    },
    /// A collective operation of a [`Communicator`](crate::shard::Communicator)
    /// failed (a peer left, a transport error, mismatched buffer sizes).
    Communication {
        /// The transport's message.
        message: String,
    },
    /// A kernel that the device's JIT compiled outside its plan: it spills
    /// registers to local memory, or its register use cannot hold the block
    /// size the launch plan needs. Refused before the first launch, since a
    /// spilling flash kernel runs several times slower than planned.
    KernelResources {
        /// The kernel's entry name.
        kernel: String,
        /// Registers per thread, as loaded.
        registers: u32,
        /// Local memory per thread in bytes (stack frame and spills).
        local_bytes: u32,
        /// The most threads per block the loaded kernel can run.
        max_threads: u32,
        /// What the plan allows (local bytes, threads per block).
        requirement: String,
    },
    /// A margin policy this backend does not compute (the non-affine
    /// policies run on the reference and the fast CPU backend only).
    UnsupportedMargin {
        /// The policy's name ([`MarginPolicy::name`](crate::MarginPolicy::name)).
        policy: &'static str,
        /// The backend that rejects it.
        backend: &'static str,
    },
    /// A failure reported by the CUDA driver or NVRTC.
    Backend {
        /// The driver's or compiler's message.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch {
                tensor,
                expected,
                actual,
            } => write!(
                f,
                "shape mismatch in {tensor}: expected {expected} elements, got {actual}"
            ),
            Error::LabelOutOfRange {
                row,
                label,
                classes,
            } => write!(f, "label {label} at row {row} is outside 0..{classes}"),
            Error::NonFinite { tensor, index } => {
                write!(f, "non-finite value in {tensor} at flat index {index}")
            }
            Error::ZeroNorm { tensor, row } => {
                write!(
                    f,
                    "{tensor} row {row} has zero norm and cannot be normalised"
                )
            }
            Error::NormOverflow { tensor, row } => {
                write!(f, "{tensor} row {row} has a norm too large to square")
            }
            Error::EmptyBatch => f.write_str("empty batch: at least one row is required"),
            Error::EmptyDimension { dimension } => write!(f, "{dimension} must be at least 1"),
            Error::TooLarge { what } => write!(f, "{what} is too large for this backend"),
            Error::InvalidConfig {
                parameter,
                value,
                requirement,
            } => write!(
                f,
                "invalid config: {parameter} = {value}, must be {requirement}"
            ),
            Error::InvalidState { reason } => write!(f, "invalid EMA state: {reason}"),
            Error::DeviceUnavailable { reason } => write!(f, "device unavailable: {reason}"),
            Error::DtypeMismatch { expected, actual } => {
                write!(f, "dtype mismatch: expected {expected}, got {actual}")
            }
            Error::RankMismatch {
                tensor,
                expected,
                actual,
            } => write!(f, "{tensor} must have {expected} dimensions, got {actual}"),
            Error::InvalidShard { reason } => write!(f, "invalid shard: {reason}"),
            Error::Communication { message } => write!(f, "communication error: {message}"),
            Error::KernelResources {
                kernel,
                registers,
                local_bytes,
                max_threads,
                requirement,
            } => write!(
                f,
                "kernel {kernel} loaded outside its plan ({registers} registers, \
                 {local_bytes} bytes of local memory, at most {max_threads} threads per block): \
                 must have {requirement}"
            ),
            Error::UnsupportedMargin { policy, backend } => write!(
                f,
                "the {policy} margin is not supported by the {backend} backend \
                 (use the reference or the fast CPU backend)"
            ),
            Error::Backend { message } => write!(f, "backend error: {message}"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
