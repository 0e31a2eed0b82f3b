//! # adaface
//!
//! The AdaFace loss (Kim, Jain and Liu, CVPR 2022) as fused kernels that
//! never write the `B x C` logits, with an exact CPU reference they are
//! checked against.
//!
//! * [`reference`](mod@reference): the official head, written out plainly, in `f32` or `f64`.
//! * [`cpu`]: the fast CPU backend (fused, blocked, multi-threaded, SIMD).
//! * [`naive`]: materialising baselines the benches compare against.
//! * [`chunked`]: the cuBLAS path one chunk of classes at a time (workspace `O(B x chunk)`).
//! * [`AdaFaceConfig`], [`EmaState`], [`Error`]: shared by every backend.
//! * [`trainer::AdaFaceLoss`]: config and EMA state in one object, one call
//!   per training step; `candle_op` (feature `candle`) wraps it for candle.
//!
//! * [`AdaFaceBackend`]: the one interface of the stateful backends (CPU,
//!   simulator, CUDA), returning one [`StepResult`] type.
//! * `sim` (feature `sim`): the kernels on a CPU simulator.
//!
//! The modules `eval`, `golden`, `launch`, `kernel_params`, `math` and
//! `memory` are hidden from the documentation: they serve this crate's own
//! tools and tests and are not part of its stable API.
//!
//! See `README.md` for the semantics, including where this crate defines
//! behaviour the official code leaves broken (batches of one row, zero norms).
#![warn(missing_docs)]

/// The README's code blocks run as doc-tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod backend;
#[cfg(feature = "candle")]
pub mod candle_op;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod element;
pub mod error;
#[doc(hidden)]
pub mod eval;
#[doc(hidden)]
pub mod golden;
#[doc(hidden)]
#[rustfmt::skip]
pub mod kernel_params;
pub mod chunked;
#[doc(hidden)]
pub mod launch;
#[doc(hidden)]
pub mod math;
#[doc(hidden)]
pub mod memory;
pub mod naive;
pub mod output;
pub mod real;
pub mod reference;
pub mod shape;
pub mod shard;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod testing;
pub mod trainer;

pub use backend::{AdaFaceBackend, StepResult};
pub use config::{AdaFaceConfig, AdaFaceConfigBuilder, MarginPolicy};
pub use element::{Dtype, Element, Label};
pub use error::{Error, Result, Tensor};
pub use output::{Diagnostics, ForwardOutput, StepOutput};
pub use real::Real;
pub use shape::Shape;
pub use state::{BatchStats, EmaState};
