"""adaface_rs: the fused AdaFace loss as a drop-in PyTorch head.

A thin layer over the ``adaface`` Rust crate (built into ``adaface_rs._native``
by maturin): the class weight and the EMA statistics are ordinary torch
tensors owned by :class:`AdaFaceLoss`; each step hands their memory to the
crate's fused backend (CPU, or CUDA on torch's current stream), which writes
the loss and both gradients into tensors torch allocated, never forming the
``B x C`` logits.
"""

from ._loss import MARGINS, AdaFaceLoss, cuda_compiled

__all__ = ["AdaFaceLoss", "MARGINS", "cuda_compiled", "__version__"]
__version__ = "0.1.0"
