"""adaface_rs: the fused AdaFace loss as a drop-in PyTorch head.

A thin layer over the ``adaface`` Rust crate (built into ``adaface_rs._native``
by maturin): the class weight and the EMA statistics are ordinary torch
tensors owned by :class:`AdaFaceLoss`; each step hands their memory to the
crate's fused backend (CPU, or CUDA on torch's current stream), which writes
the loss and both gradients into tensors torch allocated, never forming the
``B x C`` logits. :class:`ShardedAdaFaceLoss` shards the classes over a
``torch.distributed`` process group (model-parallel, with Partial FC
sampling); :mod:`adaface_rs.shards` merges and splits its checkpoints.
"""

from ._loss import MARGINS, AdaFaceLoss, cuda_compiled
from ._sharded import ShardedAdaFaceLoss, even_splits
from .shards import merge_shards, split_shards

__all__ = [
    "AdaFaceLoss",
    "ShardedAdaFaceLoss",
    "MARGINS",
    "cuda_compiled",
    "even_splits",
    "merge_shards",
    "split_shards",
    "__version__",
]
__version__ = "0.1.0"
