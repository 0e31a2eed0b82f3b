"""Type stubs of the native layer (Rust, PyO3). Private: the pointer
arguments must be data pointers of live, contiguous tensors of the shapes,
dtypes and device the call names (``adaface_rs.AdaFaceLoss`` checks them)."""

from typing import List, Optional, Tuple

class Config:
    def __init__(
        self, margin: str, m: float, h: float, s: float, t_alpha: float,
        m1: float = ..., m2: float = ..., m3: float = ..., *,
        sphere_m: int = ..., sphere_lambda: float = ..., l_a: float = ...,
        u_a: float = ..., l_m: float = ..., u_m: float = ..., lambda_g: float = ...,
    ) -> None: ...
    def initial_state(self) -> Tuple[float, float]: ...
    def has_curricular_t(self) -> bool: ...
    def is_affine(self) -> bool: ...

def cpu_step(
    cfg: Config, batch: int, dim: int, classes: int, dtype: str, label_dtype: str,
    x: int, w: int, labels: int, dx: int, dw: int, state_mean: int, state_std: int,
    update_state: bool, state_t: int = ...,
) -> float: ...
def reference_step(
    cfg: Config, batch: int, dim: int, classes: int, dtype: str, label_dtype: str,
    x: int, w: int, labels: int, dx: int, dw: int, state_mean: int, state_std: int,
    update_state: bool, state_t: int = ...,
) -> float: ...
def cuda_compiled() -> bool: ...

class CudaHead:
    device: int
    stream: int
    def __init__(self, cfg: Config, device: int, stream: int) -> None: ...
    def step(
        self, batch: int, dim: int, classes: int, dtype: str, label_dtype: str,
        x: int, w: int, labels: int, dx: int, dw: int, loss: int,
        state_mean: int, state_std: int, update_state: bool,
    ) -> None: ...
    def check_last_step(self) -> Optional[float]: ...

class CudaShardHead:
    """One shard of the sharded loss on a CUDA device and torch stream; holds
    the pending step between its phases (the same calls as ShardPending)."""
    device: int
    stream: int
    batch: Optional[int]
    stat_dtype: str
    def __init__(
        self, cfg: Config, device: int, stream: int, offset: int, classes: int,
        total_classes: int,
    ) -> None: ...
    def phase1(
        self, batch: int, dim: int, dtype: str, label_dtype: str, x: int, w: int,
        labels: int, state_mean: int, state_std: int, partials: int, loss: int,
    ) -> None: ...
    def sampled(self) -> Optional[List[int]]: ...
    def sums_for(self, global_max: int, out: int) -> None: ...
    def phase2(
        self, w: int, global_max: int, sums: int, dx: int, dw: int,
        state_mean: int, state_std: int, update_state: bool,
    ) -> None: ...
    def check_last_step(self) -> Optional[float]: ...

class ShardPending:
    """Phase 1 of one shard's step, awaiting the reduced row statistics."""
    batch: int
    stat_dtype: str
    dtype: str
    def sampled(self) -> Optional[List[int]]: ...
    def sums_for(self, global_max: int, out: int) -> None: ...
    def phase2(
        self, w: int, global_max: int, sums: int, dx: int, dw: int,
        state_mean: int, state_std: int, update_state: bool,
    ) -> float: ...

def shard_phase1(
    cfg: Config, backend: str, offset: int, classes: int, total_classes: int,
    batch: int, dim: int, dtype: str, label_dtype: str,
    x: int, w: int, labels: int, state_mean: int, state_std: int,
    sample_rate: Optional[float], seed: int, step: int, partials: int,
) -> ShardPending: ...
