//! # adaface
//!
//! The AdaFace loss (Kim, Jain and Liu, CVPR 2022) as fused kernels that
//! never write the `B x C` logits, with an exact CPU reference they are
//! checked against.
//!
//! * [`reference`]: the official head, written out plainly, in `f32` or `f64`.
//! * [`cpu`]: the fast CPU backend (fused, blocked, multi-threaded, SIMD).
//! * [`naive`]: materialising baselines the benches compare against.
//! * [`AdaFaceConfig`], [`EmaState`], [`Error`]: shared by every backend.
//! * [`trainer::AdaFaceLoss`]: config and EMA state in one object, one call
//!   per training step; `candle_op` (feature `candle`) wraps it for candle.
//!
//! See `README.md` for the semantics, including where this crate defines
//! behaviour the official code leaves broken (batches of one row, zero norms).
#![warn(missing_docs)]

/// The README's code blocks run as doc-tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(feature = "candle")]
pub mod candle_op;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod element;
pub mod error;
pub mod eval;
pub mod golden;
#[rustfmt::skip]
pub mod kernel_params;
pub mod launch;
pub mod math;
pub mod memory;
pub mod naive;
pub mod output;
pub mod real;
pub mod reference;
pub mod shape;
pub mod shard;
pub mod sim;
pub mod sim_backend;
pub mod state;
pub mod trainer;

pub use config::{AdaFaceConfig, AdaFaceConfigBuilder, MarginPolicy};
pub use element::{Dtype, Element, Label};
pub use error::{Error, Result, Tensor};
pub use output::{Diagnostics, ForwardOutput, StepOutput};
pub use real::Real;
pub use shape::Shape;
pub use state::{BatchStats, EmaState};
