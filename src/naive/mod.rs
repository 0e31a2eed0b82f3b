//! Naive baselines: what a user would write without fusion, kept inside the
//! crate so benches can show what fusion buys in time and memory. Not meant
//! for training.

pub mod cpu;
