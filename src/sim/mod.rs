//! The kernels on the CPU simulator: the CUDA backend's API over host
//! buffers ([`SimAdaFace`], [`ShardedSimAdaFace`]), running the same kernel
//! source with the same launch plan ([`crate::launch`]). This is how the
//! kernels are tested on machines without a GPU. The layout mirrors
//! `cuda`: `ffi` (the runtime and the kernel entries), `loss` (the loss
//! object), `shard` (one class shard).
//!
//! # The simulator
//!
//! `build.rs` compiles every `kernels/**/*.cu` with the host C++ compiler against
//! `kernels/sim/cuda_sim.h`, so each kernel instantiation declared with
//! `ADAFACE_KERNEL(name, Params, ...)` also exists as a C function
//! `name_sim(const adaface_sim_launch*, const Params*)` that runs the whole
//! grid on CPU threads (block threads as fibers, see `kernels/sim/README.md`).
//! This module is the one safe-ish doorway to those entries: declare the
//! entry with `extern "C"`, then call [`launch`] with a [`SimLaunch`] that
//! mirrors the CUDA launch configuration.
//!
//! Simulator failures (an invalid launch geometry, too much dynamic shared
//! memory, a deadlocked barrier, a malformed warp collective, `__trap()`)
//! come back as [`Error::Backend`](crate::Error::Backend) with the simulator's message.
//!
//! Environment variables, read by the C++ runtime:
//! * `ADAFACE_SIM_THREADS`: most OS threads one launch uses (default: all
//!   hardware threads; the calling thread is one of them);
//! * `ADAFACE_SIM_STACK_KIB`: stack per simulated thread (default 128);
//! * `ADAFACE_SIM_UCONTEXT=1`: switch fibers with `swapcontext` (see
//!   [`set_fiber_switch`]).

mod ffi;
mod loss;
mod shard;

pub use ffi::{
    has_fast_switch, launch, mma_count, set_fiber_switch, wgmma_count, FiberSwitch, SimEntry,
    SimLaunch, SELFTEST_CUDA_SOURCE,
};
pub use loss::{eval_case, SimAdaFace, SimStep};
pub use shard::{ShardedSimAdaFace, SimShardPending, SimShardStep};
