"""The class-sharded (model-parallel) AdaFace loss over ``torch.distributed``:
:class:`ShardedAdaFaceLoss` and the autograd function behind it.

Each rank of a process group holds the classes ``[offset_r, offset_r + C_r)``
of the global ``C`` (contiguous shards, uneven allowed). One step:

1. ``all_gather`` of the local batch sizes (with an error flag, so a rank
   that rejects its inputs makes every rank raise instead of hanging, and a
   wants-gradients flag), then of the features and the labels: every rank
   holds the global batch;
2. phase 1 (native, per rank: the CPU backends on CPU tensors, the CUDA
   shard on torch's current stream for CUDA tensors): the per-row partial
   softmax statistics of this rank's classes, written into a tensor on the
   data's device, and the global batch's norm statistics; an
   ``all_reduce(MAX)`` of a failure flag;
3. ``all_reduce(MAX)`` of the ``B`` row maxima, then ``all_reduce(SUM)`` of
   ``4 B`` row sums: every rank has the global log-sum-exp and target logit
   of every row;
4. phase 2 (native): the loss (the global mean, the same on every rank),
   this rank's ``dW`` (local, never communicated) and its partial ``dX``;
5. ``reduce_scatter(SUM)`` of the partial ``dX`` (``B x D``, optionally in
   ``comm_dtype``): each rank receives the summed rows of its own local
   batch (half the bytes of an all-reduce), which backward hands on.

The metadata and the flags are host values on a CPU group (the group
itself under gloo, a gloo group over the same ranks under NCCL), so a CUDA
step never waits for the GPU. Only ``O(B)`` statistics and the ``O(B x D)``
features and their gradient cross the wire; nothing ``B x C``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _native
from ._loss import (
    _LABELS,
    BACKENDS,
    MARGINS,
    AdaFaceLoss,
    _margin_params,
    _margin_repr,
    _native_config,
    _Plan,
    _ptr,
    _scaled,
)

#: ``comm_dtype`` values: the dtype ``dX`` is reduce-scattered in.
COMM_DTYPES = {
    None: None,
    "float32": None,
    "fp32": None,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def even_splits(num_classes: int, world_size: int) -> List[int]:
    """``world_size`` contiguous shard sizes as even as possible, the first
    ``num_classes % world_size`` one class larger (as insightface splits)."""
    if world_size < 1 or num_classes < world_size:
        raise ValueError(f"cannot split {num_classes} classes into {world_size} shards")
    q, r = divmod(num_classes, world_size)
    return [q + (1 if k < r else 0) for k in range(world_size)]


# Feature dtypes by a code the ranks exchange (they must all send one dtype).
_DTYPE_NAMES = {0: torch.float32, 1: torch.float64, 2: torch.bfloat16, 3: torch.float16}
_DTYPE_CODES = {v: k for k, v in _DTYPE_NAMES.items()}


def _comm_dtype(value: Any) -> Optional[torch.dtype]:
    if isinstance(value, torch.dtype):
        if value == torch.float32:
            return None
        if value in (torch.float16, torch.bfloat16):
            return value
    elif value is None or isinstance(value, str):
        if value in COMM_DTYPES:
            return COMM_DTYPES[value]
    raise ValueError(f"comm_dtype must be None, torch.float16 or torch.bfloat16, got {value!r}")


def _gather_rows(t: Tensor, sizes: List[int], group: Any) -> Tensor:
    """All-gather of row blocks of possibly different lengths: padded to the
    longest, gathered, trimmed."""
    longest = max(sizes)
    t = t.contiguous()
    if t.shape[0] < longest:
        pad = t.new_zeros((longest - t.shape[0],) + tuple(t.shape[1:]))
        t = torch.cat([t, pad])
    parts = [torch.empty_like(t) for _ in sizes]
    dist.all_gather(parts, t, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _reduce_scatter_rows(g: Tensor, sizes: List[int], rank: int, group: Any) -> Tensor:
    """The sum over ranks of ``g`` (``B x D``, the ranks' blocks of rows in
    rank order), each rank receiving only its own block: one
    reduce-scatter, half the bytes of an all-reduce. Uneven blocks are
    padded to the longest."""
    if g.device.type == "cuda" and str(dist.get_backend(group)).lower() != "nccl":
        # CUDA tensors over gloo (or another backend without a CUDA
        # reduce-scatter): one all-reduce, then this rank's rows.
        total = g.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        start = sum(sizes[:rank])
        return total[start : start + sizes[rank]].clone()
    longest = max(sizes)
    if all(n == longest for n in sizes):
        src = g.contiguous()
    else:
        src = g.new_zeros((longest * len(sizes),) + tuple(g.shape[1:]))
        start = 0
        for r, n in enumerate(sizes):
            src[r * longest : r * longest + n] = g[start : start + n]
            start += n
    out = g.new_empty((longest,) + tuple(g.shape[1:]))
    dist.reduce_scatter_tensor(out, src, group=group)
    return out[: sizes[rank]].clone() if sizes[rank] != longest else out


def _local_error(features: Any, labels: Any, dim: int) -> Optional[str]:
    """What is wrong with this rank's inputs, before any collective."""
    if not isinstance(features, Tensor) or not isinstance(labels, Tensor):
        return "features and labels must be torch.Tensors"
    if features.dim() != 2:
        return f"features must have 2 dimensions, got {features.dim()}"
    if features.shape[1] != dim:
        return f"features have {features.shape[1]} columns, the module's embedding_size is {dim}"
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        return f"labels must be 1-D with one entry per row ({features.shape[0]}), got {tuple(labels.shape)}"
    if not features.is_floating_point():
        return f"features must be floating point, got {features.dtype}"
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return f"labels must be an integer tensor, got {labels.dtype}"
    if labels.device != features.device:
        return f"features are on {features.device}, labels on {labels.device}"
    return None


class _ShardedFunction(torch.autograd.Function):
    """The sharded step; the gradients come out of the forward's collectives
    and backward only scales them."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, labels: Tensor, module: "ShardedAdaFaceLoss", update: bool, want_grads: bool) -> Tensor:  # type: ignore[override]
        loss, gx, gw = module._step(features, weight, labels, want_grads, update)
        ctx.gx = gx if ctx.needs_input_grad[0] else None
        ctx.gw = gw if ctx.needs_input_grad[1] else None
        ctx.dtypes = (features.dtype, weight.dtype)
        ctx.slots = {"gx": 0, "gw": 1}
        ctx.reentrant = module.reentrant_backward
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        gx = _scaled(ctx, "gx", grad_out, ctx.dtypes[0])
        gw = _scaled(ctx, "gw", grad_out, ctx.dtypes[1])
        return gx, gw, None, None, None, None


class ShardedAdaFaceLoss(nn.Module):
    """The AdaFace loss with the classes sharded over a ``torch.distributed``
    process group (model-parallel, as insightface's Partial FC).

    Rank ``r`` of the group holds the classes ``[offset, offset + C_r)``:
    ``weight`` is a ``Parameter`` of shape ``(C_r, embedding_size)``, this
    rank's rows of the global ``num_classes x embedding_size`` class weight.
    ``forward(features, labels)`` takes this rank's local batch (raw features
    ``b_r x D``, global labels in ``0..num_classes``), all-gathers the global
    batch, and returns the mean loss over the **global** batch (the same
    value on every rank); its backward gives the local features their rows of
    ``dL/dx`` and ``weight`` this shard's ``dL/dW``. Equal to
    :class:`AdaFaceLoss` on the concatenated batch and weight.

    Every rank of the group must construct the module with the same
    arguments and call ``forward`` the same number of times, in the same
    grad mode (the collectives pair up by order). Local batch sizes may
    differ between ranks (each may even be empty, not all).

    The EMA norm statistics ``batch_mean``/``batch_std`` (``float64``
    buffers) are computed from the global batch by the same deterministic
    code on every rank, so they stay identical without communication; they
    move only in training mode with gradients enabled (``eval()`` and
    ``torch.no_grad()`` leave them, and ``sample_step``, unchanged).

    Partial FC (``sample_rate < 1``): in training mode each step keeps, per
    shard, every class that is a label of the global batch and a random
    subset of the others (at least ``floor(sample_rate * C_r)`` classes in
    all), drawn deterministically from ``(seed, sample_step, offset)``; the
    softmax runs over the kept classes, ``dW`` is exactly zero on the others
    and :attr:`last_sampled` holds the kept shard-local indices (sorted), so
    an optimiser may update only those rows. ``sample_step`` (a buffer, in
    the checkpoint) counts the steps that updated the state. In eval mode
    every class takes part. ``sample_rate = 1`` does no sampling (the crate
    guarantees it equals the unsampled step bit for bit).

    Args:
        embedding_size: ``D``.
        num_classes: ``C``, the global number of classes.
        process_group: the group to shard over (default: the default group).
            ``torch.distributed`` must be initialised.
        m, h, s, t_alpha, margin: as :class:`AdaFaceLoss`.
        sample_rate: Partial FC's rate, in ``(0, 1]``.
        comm_dtype: ``None`` (``float32``), ``torch.float16`` or
            ``torch.bfloat16`` (or ``"fp16"``, ``"bf16"``): the dtype the
            partial ``dX`` is reduce-scattered in (insightface's fp16 knob: half
            the bytes of the largest collective, at a rounding error of
            about ``2^-8`` (bf16) or ``2^-11`` (fp16) relative per value).
        seed: Partial FC's seed.
        dtype: the weight's dtype (``float32`` default, ``bfloat16``,
            ``float16``; ``float64`` runs the exact reference backend).
        class_splits: (keyword) the sizes of the ``world_size`` shards,
            summing to ``num_classes`` (default :func:`even_splits`).
        ddp_grad_scale: (keyword) multiply the features' gradient by
            ``world_size``: under ``DistributedDataParallel``, which averages
            the backbone's gradients over the ranks, the backbone then gets
            the gradient of the global mean loss, as in data-parallel
            training with :class:`AdaFaceLoss` (and as insightface's Partial
            FC does). Off: the features get exactly ``dL/dx`` of the
            returned loss.
        m1, m2, m3, backend, device: (keywords) as :class:`AdaFaceLoss`.

    Devices: CPU tensors over gloo, CUDA tensors over NCCL (or gloo), the
    same Python code; only the native calls differ. On CUDA each rank runs
    the crate's ``ShardedCudaAdaFace`` on torch's current stream, reading
    torch's memory in place: phase 1 writes the row statistics into a torch
    CUDA tensor that ``torch.distributed`` all-reduces, phase 2 reads the
    reduced rows from torch tensors and writes ``dW`` into the gradient
    buffer, the partial ``dX`` into a tensor that is then reduce-scattered,
    and the loss and the EMA state (the module's CUDA buffers) on the device:
    no step waits for the GPU. With NCCL, the per-step metadata (local batch
    sizes, error flags) travel on a gloo group over the same ranks, made at
    construction, so reading them never syncs either (without gloo they go
    over NCCL, one sync per step). As with :class:`AdaFaceLoss` on CUDA, the
    kernels check the data (labels, finite values, zero norms) on the
    device: a rejected step's loss is NaN on every rank, the gradients zero,
    the state unchanged, and :meth:`check_last_step` raises the error.
    Partial FC (``sample_rate < 1``) runs on CPU tensors only for now.

    As with the unsharded module, bad inputs raise ``ValueError`` (on every
    rank: the ranks exchange an error flag before the data) with nothing
    written and the state unchanged.
    """

    weight: Tensor
    batch_mean: Tensor
    batch_std: Tensor
    sample_step: Tensor
    #: Shard-local indices (sorted, ``int64``) of the classes the latest
    #: sampled training step kept, or ``None`` when it did not sample.
    last_sampled: Optional[Tensor]

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        process_group: Optional[Any] = None,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
        margin: str = "adaface",
        sample_rate: float = 1.0,
        comm_dtype: Union[None, str, torch.dtype] = None,
        seed: int = 0,
        dtype: Optional[torch.dtype] = None,
        *,
        class_splits: Optional[Sequence[int]] = None,
        ddp_grad_scale: bool = False,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        backend: str = "auto",
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        for name, v in (("embedding_size", embedding_size), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if margin not in MARGINS:
            raise ValueError(f"unknown margin {margin!r}: expected one of {MARGINS}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: expected one of {BACKENDS}")
        if not (isinstance(sample_rate, (int, float)) and 0.0 < float(sample_rate) <= 1.0):
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2^64), got {seed!r}")
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"dtype must be float32, bfloat16, float16 or float64, got {dtype}")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "ShardedAdaFaceLoss needs torch.distributed initialised "
                "(torch.distributed.init_process_group) before it is built"
            )
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self._cuda_shards: Dict[Tuple[int, int], Any] = {}
        self._meta_group, self._meta_on_device = self._make_meta_group()
        if class_splits is None:
            splits = even_splits(num_classes, self.world_size)
        else:
            splits = [int(v) for v in class_splits]
            if len(splits) != self.world_size or any(v < 1 for v in splits) or sum(splits) != num_classes:
                raise ValueError(
                    f"class_splits must be {self.world_size} positive sizes summing to "
                    f"{num_classes}, got {list(class_splits)}"
                )
        self.class_splits = splits
        self.offset = sum(splits[: self.rank])
        self.shard_classes = splits[self.rank]
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.margin = margin
        self.m, self.h, self.s, self.t_alpha = float(m), float(h), float(s), float(t_alpha)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        # The sharded step computes the affine policies only; the others'
        # parameters keep their defaults so that the config can be built.
        _margin_params(self, 4, 5.0, (10.0, 110.0, 0.45, 0.8, 35.0))
        self.backend = backend
        self.sample_rate = float(sample_rate)
        self.comm_dtype = _comm_dtype(comm_dtype)
        self.seed = seed
        self.ddp_grad_scale = bool(ddp_grad_scale)
        #: As :attr:`AdaFaceLoss.reentrant_backward`.
        self.reentrant_backward = False
        self.last_sampled = None
        self._cfg = self._make_config()
        if not self._cfg.is_affine():
            raise NotImplementedError(
                f"margin {margin!r} is not supported by the class-sharded step "
                "(adaface, arcface, cosface and combined are)"
            )
        mean0, std0 = self._cfg.initial_state()
        self.weight = nn.Parameter(
            torch.empty(self.shard_classes, embedding_size, dtype=dtype, device=device)
        )
        self.register_buffer("batch_mean", torch.full((1,), mean0, dtype=torch.float64, device=device))
        self.register_buffer("batch_std", torch.full((1,), std0, dtype=torch.float64, device=device))
        self.register_buffer("sample_step", torch.zeros((1,), dtype=torch.int64, device=device))
        self.reset_parameters()
        self._check_group_agrees()

    def _make_config(self) -> Any:
        return _native_config(self)

    def _check_group_agrees(self) -> None:
        """One small all-gather at construction: every rank must have built
        the same layout, or every rank raises (instead of a wrong loss or a
        hang later)."""
        mine = torch.tensor(
            [self.num_classes, self.embedding_size, self.offset, self.shard_classes],
            dtype=torch.int64,
            device=self._collective_device(),
        )
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(parts, mine, group=self.process_group)
        offset = 0
        for r, p in enumerate(parts):
            c, d, o, k = (int(v) for v in p.cpu())
            if (c, d) != (self.num_classes, self.embedding_size) or o != offset or k != self.class_splits[r]:
                raise ValueError(
                    f"rank {r} built ShardedAdaFaceLoss(embedding_size={d}, num_classes={c}) with "
                    f"classes {o}..{o + k}; rank {self.rank} expected embedding_size="
                    f"{self.embedding_size}, num_classes={self.num_classes}, classes "
                    f"{offset}..{offset + self.class_splits[r]}: build every rank alike"
                )
            offset += k

    def _nccl(self) -> bool:
        return str(dist.get_backend(self.process_group)).lower() == "nccl"

    def _make_meta_group(self) -> Tuple[Any, bool]:
        """The group the per-step metadata (batch sizes, flags) travel on, as
        CPU tensors, and whether they must be device tensors instead. Over
        NCCL: a gloo group of the same ranks (collective: every rank of the
        group builds it here), so that reading them never waits for the GPU;
        if gloo is unavailable, the NCCL group itself (one sync per step)."""
        if not self._nccl():
            return self.process_group, False
        try:
            group = self.process_group if self.process_group is not None else dist.group.WORLD
            ranks = dist.get_process_group_ranks(group)
            return dist.new_group(ranks=ranks, backend="gloo", use_local_synchronization=True), False
        except (RuntimeError, ValueError):
            return self.process_group, True

    def _meta_device(self) -> torch.device:
        return self._collective_device() if self._meta_on_device else torch.device("cpu")

    def _collective_device(self) -> torch.device:
        """Where this group's collectives take tensors: the current CUDA
        device for NCCL, else the CPU."""
        if self._nccl():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def reset_parameters(self) -> None:
        """Class rows drawn uniformly in ``[-1, 1]`` and scaled to unit norm,
        from a generator seeded with ``seed`` and the shard's offset (so
        shards differ, and a layout reproduces)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.offset) % (2**63))
        with torch.no_grad():
            w = torch.empty(self.weight.shape, dtype=torch.float32).uniform_(-1.0, 1.0, generator=g)
            w /= w.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.weight.copy_(w)

    def load_global_weight(self, weight: Tensor) -> None:
        """Copies this rank's rows of a global ``num_classes x embedding_size``
        weight (e.g. an :class:`AdaFaceLoss`'s) into :attr:`weight`."""
        if not isinstance(weight, Tensor) or tuple(weight.shape) != (self.num_classes, self.embedding_size):
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(
                f"expected a ({self.num_classes}, {self.embedding_size}) weight, got {shape}"
            )
        with torch.no_grad():
            self.weight.copy_(weight[self.offset : self.offset + self.shard_classes])

    # -- the loss ---------------------------------------------------------

    def _updates_state(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """The mean loss over the global batch of this rank's raw features
        ``b_r x D`` with global labels ``b_r``; collective (every rank of
        the group must call it)."""
        want = torch.is_grad_enabled() and (
            (isinstance(features, Tensor) and features.requires_grad) or self.weight.requires_grad
        )
        return _ShardedFunction.apply(features, self.weight, labels, self, self._updates_state(), want)

    def _step(
        self, features: Tensor, weight: Tensor, labels: Tensor, want_grads: bool, update: bool
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """One collective step: the loss, this rank's rows of ``dX`` and this
        shard's ``dW`` (``None`` when no rank wants gradients)."""
        group = self.process_group
        error = _local_error(features, labels, self.embedding_size)
        if error is None and weight.device != features.device:
            error = f"the weight is on {weight.device}, the features on {features.device}"
        if error is None and self._nccl() and features.device.type != "cuda":
            error = f"an NCCL process group takes CUDA tensors, got features on {features.device}"
        if error is None and features.device.type not in ("cpu", "cuda"):
            error = f"device {features.device} is not supported (cpu or cuda)"
        sampling = self.training and self.sample_rate < 1.0
        if error is None and sampling and features.device.type == "cuda":
            error = "Partial FC (sample_rate < 1) runs on CPU tensors only for now"
        local_b = int(features.shape[0]) if error is None else 0
        code = _DTYPE_CODES.get(features.dtype, -1) if error is None else -1
        # Host values, on a CPU group (gloo) even when the data go over NCCL.
        meta_group, meta_dev = self._meta_group, self._meta_device()
        meta = torch.tensor(
            [local_b, 0 if error is None else 1, code, 1 if want_grads else 0],
            dtype=torch.int64,
            device=meta_dev,
        )
        metas = [torch.empty_like(meta) for _ in range(self.world_size)]
        dist.all_gather(metas, meta, group=meta_group)
        metas = [v.cpu() for v in metas]
        bad = [r for r, v in enumerate(metas) if int(v[1]) != 0]
        if error is not None:
            raise ValueError(f"ShardedAdaFaceLoss (rank {self.rank}): {error}")
        if bad:
            raise ValueError(
                f"ShardedAdaFaceLoss: rank(s) {bad} rejected their inputs (see their errors); "
                f"rank {self.rank} did nothing"
            )
        codes = {int(v[2]) for v in metas}
        if len(codes) != 1 or -1 in codes:
            names = [str(_DTYPE_NAMES.get(int(v[2]), "another dtype")) for v in metas]
            raise ValueError(
                f"ShardedAdaFaceLoss: the ranks' features must share one dtype "
                f"(float64, float32, bfloat16 or float16), got {names}"
            )
        sizes = [int(v[0]) for v in metas]
        start = sum(sizes[: self.rank])
        # One label dtype on every rank for the all-gather.
        labels = labels.to(torch.int64)
        if self.world_size == 1:
            x_all, y_all = features.detach(), labels.detach()
        else:
            x_all = _gather_rows(features.detach(), sizes, group)
            y_all = _gather_rows(labels.detach(), sizes, group)

        # The step counter is read (a host value) only when sampling, which
        # runs on CPU tensors.
        step = int(self.sample_step.reshape(-1)[0]) if sampling else 0
        pending: Any = None
        partials: Optional[Tensor] = None
        loss_out: Optional[Tensor] = None
        on_device: Any = contextlib.nullcontext  # a fresh context per native call
        failure: Optional[BaseException] = None
        try:
            plan = _Plan(self, x_all, weight, y_all)
            mean, std = AdaFaceLoss._state_buffers(self, plan.device)  # type: ignore[arg-type]
            stat_dtype = torch.float64 if (plan.kind == "reference" and plan.dtype == torch.float64) else torch.float32
            b = plan.batch
            partials = torch.empty((5, b), dtype=stat_dtype, device=plan.device)
            if plan.kind == "cuda":
                # The native CUDA shard: the same calls, queued on torch's
                # current stream; phase 2 writes the loss into a device tensor.
                on_device = functools.partial(torch.cuda.device, plan.device)
                loss_out = torch.empty((1,), dtype=torch.float64, device=plan.device)
                pending = self._cuda_shard(plan.device)
                with on_device():
                    pending.phase1(
                        b,
                        plan.dim,
                        plan.dtype_name,
                        _LABELS[plan.labels.dtype],
                        _ptr(plan.features),
                        _ptr(plan.weight),
                        _ptr(plan.labels),
                        _ptr(mean),
                        _ptr(std),
                        _ptr(partials),
                        _ptr(loss_out),
                    )
            else:
                pending = _native.shard_phase1(
                    self._cfg,
                    plan.kind,
                    self.offset,
                    self.shard_classes,
                    self.num_classes,
                    b,
                    plan.dim,
                    plan.dtype_name,
                    _LABELS[plan.labels.dtype],
                    _ptr(plan.features),
                    _ptr(plan.weight),
                    _ptr(plan.labels),
                    _ptr(mean),
                    _ptr(std),
                    self.sample_rate if sampling else None,
                    self.seed,
                    step,
                    _ptr(partials),
                )
        except (ValueError, RuntimeError) as e:
            failure = e
        b = int(x_all.shape[0])
        # A failure anywhere makes every rank raise (a host flag, on the
        # metadata group: no wait for the GPU).
        flag = torch.tensor([1 if failure else 0], dtype=torch.int64, device=meta_dev)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=meta_group)
        if failure is not None:
            raise failure
        if int(flag.cpu()[0]) != 0:
            raise ValueError(
                f"ShardedAdaFaceLoss: another rank's phase 1 failed (see its error); rank "
                f"{self.rank} did nothing"
            )
        assert partials is not None
        # Every rank computes gradients (and joins the dX reduction) when any
        # rank wants them.
        grads = any(int(v[3]) != 0 for v in metas) or update
        global_max = partials[0].clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
        sums = torch.empty(4 * b, dtype=partials.dtype, device=partials.device)
        with on_device():
            pending.sums_for(_ptr(global_max), _ptr(sums))
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)

        gx = gw = None
        if grads:
            # On CUDA a step the kernels reject leaves them untouched: zeros.
            alloc = torch.zeros if plan.kind == "cuda" else torch.empty
            gx = alloc((b, plan.dim), dtype=plan.grad_dtype, device=plan.device)
            gw = alloc((plan.classes, plan.dim), dtype=plan.grad_dtype, device=plan.device)
        with on_device():
            value = pending.phase2(
                _ptr(plan.weight),
                _ptr(global_max),
                _ptr(sums),
                _ptr(gx) if gx is not None else 0,
                _ptr(gw) if gw is not None else 0,
                _ptr(mean),
                _ptr(std),
                update,
            )
        if gx is not None:
            if self.world_size > 1:
                wire = gx if self.comm_dtype is None else gx.to(self.comm_dtype)
                gx = _reduce_scatter_rows(wire, sizes, self.rank, group).to(gx.dtype)
            else:
                gx = gx[start : start + sizes[self.rank]].clone()
            if self.ddp_grad_scale and self.world_size > 1:
                gx.mul_(float(self.world_size))
        if update:
            with torch.no_grad():
                self.sample_step.add_(1)
        sampled = pending.sampled() if sampling else None
        self.last_sampled = None if sampled is None else torch.tensor(sampled, dtype=torch.int64)
        out_dtype = torch.float64 if plan.dtype == torch.float64 else torch.float32
        if loss_out is not None:
            return loss_out.reshape(()).to(out_dtype), gx, gw
        return torch.tensor(value, dtype=out_dtype), gx, gw

    def check_last_step(self) -> Optional[float]:
        """CUDA: waits for this rank's latest step and raises the error its
        kernels detected (``ValueError``; on every rank, since a rejected
        shard poisons the reduced statistics); returns the latest loss. CPU
        steps raise at once, so this returns ``None`` for them."""
        last = None
        for head in self._cuda_shards.values():
            v = head.check_last_step()
            if v is not None:
                last = v
        return last

    def _cuda_shard(self, device: torch.device) -> Any:
        """This rank's native CUDA shard for the device and torch's current
        stream there (made, and its kernels compiled, on first use)."""
        if not _native.cuda_compiled():
            raise RuntimeError("device unavailable: adaface_rs was built without the CUDA backend")
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = int(torch.cuda.current_stream(index).cuda_stream)
        key = (index, stream)
        head = self._cuda_shards.get(key)
        if head is None:
            with torch.cuda.device(index):
                head = _native.CudaShardHead(
                    self._cfg, index, stream, self.offset, self.shard_classes, self.num_classes
                )
            self._cuda_shards[key] = head
        return head

    # -- state ------------------------------------------------------------

    def ema_state(self) -> Tuple[float, float]:
        """The EMA state ``(batch_mean, batch_std)`` as floats."""
        return float(self.batch_mean.reshape(-1)[0]), float(self.batch_std.reshape(-1)[0])

    def shard_info(self) -> Dict[str, int]:
        """This rank's place in the layout: ``offset``, ``classes``,
        ``num_classes``, ``embedding_size``, ``rank``, ``world_size``."""
        return {
            "offset": self.offset,
            "classes": self.shard_classes,
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def get_extra_state(self) -> Dict[str, int]:
        """The layout, saved in ``state_dict()`` (``_extra_state``) so that
        :func:`adaface_rs.shards.merge_shards` can put shards back together
        and a shard is never loaded into the wrong rank."""
        return self.shard_info()

    def set_extra_state(self, state: Any) -> None:
        """Checks that a loaded shard is this rank's shard of this layout."""
        if not isinstance(state, dict):
            raise ValueError(f"not a ShardedAdaFaceLoss shard state: {state!r}")
        mine = self.shard_info()
        for key in ("offset", "classes", "num_classes", "embedding_size"):
            if int(state.get(key, -1)) != mine[key]:
                raise ValueError(
                    f"this checkpoint is the shard of classes {state.get('offset')}.."
                    f"{int(state.get('offset', 0)) + int(state.get('classes', 0))} of "
                    f"{state.get('num_classes')} (D = {state.get('embedding_size')}); rank "
                    f"{self.rank} holds classes {self.offset}..{self.offset + self.shard_classes} of "
                    f"{self.num_classes} (D = {self.embedding_size}): use "
                    "adaface_rs.shards.split_shards to re-shard"
                )

    # -- Python niceties --------------------------------------------------

    def extra_repr(self) -> str:
        margin = _margin_repr(self)
        comm = "float32" if self.comm_dtype is None else str(self.comm_dtype).replace("torch.", "")
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"rank={self.rank}/{self.world_size}, classes={self.offset}..{self.offset + self.shard_classes}, "
            f"margin={self.margin!r}, {margin}, s={self.s}, t_alpha={self.t_alpha}, "
            f"sample_rate={self.sample_rate}, comm_dtype={comm}, backend={self.backend!r}"
            + (", ddp_grad_scale=True" if self.ddp_grad_scale else "")
        )
