//! NCCL as the [`Communicator`] of a sharded step (feature `nccl`), through
//! cudarc's NCCL bindings, so a Rust trainer shards over GPUs with no
//! Python. Like the rest of the CUDA backend, libnccl is loaded at run time:
//! building needs no CUDA toolkit, and a machine without NCCL gets
//! [`Error::DeviceUnavailable`] from [`NcclComm::new`], never a panic.
//!
//! One process (or thread) per GPU: rank 0 makes an [`NcclId`] with
//! [`NcclComm::unique_id`], sends its 128 bytes to the other ranks by any
//! out-of-band means (a file, a TCP store, MPI), and every rank calls
//! [`NcclComm::new`] with its stream, rank and the world size.
//!
//! The [`Communicator`] methods take host buffers (what the host backends
//! produce) and stage them through the device; [`NcclComm::all_reduce_device_f32`]
//! reduces device buffers in place for a trainer whose data lives on the GPU.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut};
use cudarc::nccl::{Comm, Id, ReduceOp as NcclOp};

use super::comm::{Communicator, ReduceOp};
use crate::error::{Error, Result};

/// The identifier of an NCCL group, made on one rank and shared with all.
pub type NcclId = Id;

/// One rank of an NCCL group, on one CUDA stream.
#[derive(Debug)]
pub struct NcclComm {
    comm: Comm,
}

fn nccl_error(e: impl std::fmt::Debug) -> Error {
    Error::Communication {
        message: format!("NCCL: {e:?}"),
    }
}

fn driver_error(e: impl std::fmt::Debug) -> Error {
    Error::Backend {
        message: format!("{e:?}"),
    }
}

/// Checks that libnccl (and the CUDA driver) can be loaded.
pub fn probe() -> Result<()> {
    crate::cuda::probe()?;
    if !crate::cuda::library_present!(nccl) {
        return Err(Error::DeviceUnavailable {
            reason: "libnccl cannot be loaded (set LD_LIBRARY_PATH to NCCL's lib directory)".into(),
        });
    }
    Ok(())
}

impl NcclComm {
    /// A new group identifier (on rank 0; share its bytes with the others).
    pub fn unique_id() -> Result<NcclId> {
        probe()?;
        Id::new().map_err(nccl_error)
    }

    /// Joins group `id` as `rank` of `world_size`, on `stream`.
    pub fn new(
        stream: Arc<CudaStream>,
        rank: usize,
        world_size: usize,
        id: NcclId,
    ) -> Result<Self> {
        probe()?;
        if rank >= world_size {
            return Err(Error::InvalidShard {
                reason: format!("rank {rank} is not below the world size {world_size}"),
            });
        }
        let comm = Comm::from_rank(stream, rank, world_size, id).map_err(nccl_error)?;
        Ok(NcclComm { comm })
    }

    /// The stream the collectives run on.
    pub fn stream(&self) -> Arc<CudaStream> {
        self.comm.stream()
    }

    /// In-place all-reduce of a device buffer (queued on the stream).
    pub fn all_reduce_device_f32(&self, buf: &mut CudaSlice<f32>, op: ReduceOp) -> Result<()> {
        self.comm
            .all_reduce_in_place(buf, &nccl_op(op))
            .map(|_| ())
            .map_err(nccl_error)
    }

    /// In-place all-reduce of a device buffer (queued on the stream).
    pub fn all_reduce_device_f64(&self, buf: &mut CudaSlice<f64>, op: ReduceOp) -> Result<()> {
        self.comm
            .all_reduce_in_place(buf, &nccl_op(op))
            .map(|_| ())
            .map_err(nccl_error)
    }
}

/// NCCL reduces the sharded CUDA step's device buffers in place, on its own
/// stream: the shard ([`crate::cuda::ShardedCudaAdaFace`]) must run on the
/// stream this communicator was made with, so that the collectives are
/// ordered with its kernels without any host synchronisation.
impl crate::cuda::DeviceCommunicator for NcclComm {
    fn all_reduce_device(
        &self,
        stream: &Arc<CudaStream>,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
    ) -> Result<()> {
        if stream.cu_stream() != self.comm.stream().cu_stream() {
            return Err(Error::Communication {
                message: "the shard's stream is not the NCCL communicator's".into(),
            });
        }
        self.comm
            .all_reduce_in_place(buf, &nccl_op(op))
            .map(|_| ())
            .map_err(nccl_error)
    }
}

fn nccl_op(op: ReduceOp) -> NcclOp {
    match op {
        ReduceOp::Sum => NcclOp::Sum,
        ReduceOp::Max => NcclOp::Max,
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let stream = self.comm.stream();
        let mut dev = stream.clone_htod(buf).map_err(driver_error)?;
        self.all_reduce_device_f32(&mut dev, op)?;
        stream.memcpy_dtoh(&dev, buf).map_err(driver_error)?;
        stream.synchronize().map_err(driver_error)
    }

    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let stream = self.comm.stream();
        let mut dev = stream.clone_htod(buf).map_err(driver_error)?;
        self.all_reduce_device_f64(&mut dev, op)?;
        stream.memcpy_dtoh(&dev, buf).map_err(driver_error)?;
        stream.synchronize().map_err(driver_error)
    }
}
