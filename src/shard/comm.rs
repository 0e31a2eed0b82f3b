//! The collectives a sharded step needs, and an in-process implementation.

use std::sync::{Arc, Barrier, Mutex};

use crate::error::{Error, Result};
use crate::real::Real;

/// A reduction of an all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise maximum.
    Max,
}

/// The collectives of a group of `world_size` ranks, one object per rank.
///
/// Every rank must call the same operations in the same order with buffers
/// of the same length. Results must be the same bits on every rank (NCCL's
/// and gloo's all-reduce are); [`ThreadComm`] reduces in rank order.
pub trait Communicator {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world_size(&self) -> usize;
    /// In-place all-reduce of `f32` values.
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()>;
    /// In-place all-reduce of `f64` values.
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()>;
}

/// `f32` or `f64`: picks the communicator method of its type.
pub trait CommReal: Real {
    /// `comm.all_reduce_f32` or `comm.all_reduce_f64`.
    fn all_reduce<C: Communicator + ?Sized>(comm: &C, buf: &mut [Self], op: ReduceOp)
        -> Result<()>;
}

impl CommReal for f32 {
    fn all_reduce<C: Communicator + ?Sized>(comm: &C, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        comm.all_reduce_f32(buf, op)
    }
}

impl CommReal for f64 {
    fn all_reduce<C: Communicator + ?Sized>(comm: &C, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        comm.all_reduce_f64(buf, op)
    }
}

/// Slots the ranks of a [`ThreadComm`] group exchange buffers through.
#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
}

/// `K` ranks as threads of one process, for tests and single-machine runs:
/// each collective is two barriers around a shared table of buffers, and
/// every rank reduces the table in rank order, so all ranks get the same
/// bits. Values travel as `f64` (exact for `f32`) and are reduced in the
/// buffer's own type.
#[derive(Debug, Clone)]
pub struct ThreadComm {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl ThreadComm {
    /// A group of `k` ranks (give one to each thread). `k` must be >= 1.
    pub fn group(k: usize) -> Vec<ThreadComm> {
        let k = k.max(1);
        let shared = Arc::new(Shared {
            barrier: Barrier::new(k),
            slots: Mutex::new(vec![Vec::new(); k]),
        });
        (0..k)
            .map(|rank| ThreadComm {
                rank,
                size: k,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn all_reduce<T: Real>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        {
            let mut slots = self.lock()?;
            slots[self.rank] = buf.iter().map(|v| v.to_f64()).collect();
        }
        self.shared.barrier.wait();
        let result = {
            let slots = self.lock()?;
            if let Some(r) = slots.iter().position(|s| s.len() != buf.len()) {
                Err(Error::Communication {
                    message: format!(
                        "rank {r} sent {} values, rank {} sent {}",
                        slots[r].len(),
                        self.rank,
                        buf.len()
                    ),
                })
            } else {
                for (i, out) in buf.iter_mut().enumerate() {
                    let mut acc = T::from_f64(slots[0][i]);
                    for slot in &slots[1..] {
                        let v = T::from_f64(slot[i]);
                        acc = match op {
                            ReduceOp::Sum => acc + v,
                            ReduceOp::Max => {
                                if v > acc {
                                    v
                                } else {
                                    acc
                                }
                            }
                        };
                    }
                    *out = acc;
                }
                Ok(())
            }
        };
        // Nobody writes the table again before everyone has read it.
        self.shared.barrier.wait();
        result
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<Vec<f64>>>> {
        self.shared.slots.lock().map_err(|_| Error::Communication {
            message: "a rank panicked during a collective".into(),
        })
    }
}

impl Communicator for ThreadComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        self.all_reduce(buf, op)
    }
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        self.all_reduce(buf, op)
    }
}
