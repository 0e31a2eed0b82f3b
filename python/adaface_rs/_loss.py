"""The :class:`AdaFaceLoss` module and the autograd function behind it."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from . import _native

#: The margin policies (the crate's ``MarginPolicy``). All run on the CPU
#: backends and CUDA; the class-sharded module takes the first four (affine in
#: AdaFace's scaler) only.
MARGINS = ("adaface", "arcface", "cosface", "combined", "sphereface", "curricularface", "magface")

#: ``m`` when it is not given: the AdaFace paper's 0.4, and CurricularFace's
#: own 0.5.
_DEFAULT_M = {"curricularface": 0.5}


def _margin_repr(module: Any) -> str:
    """The policy's parameters, as ``extra_repr`` lists them."""
    if module.margin == "combined":
        return f"m1={module.m1}, m2={module.m2}, m3={module.m3}"
    if module.margin == "adaface":
        return f"m={module.m}, h={module.h}"
    if module.margin == "sphereface":
        return f"sphere_m={module.sphere_m}, sphere_lambda={module.sphere_lambda}"
    if module.margin == "magface":
        return (
            f"l_a={module.l_a}, u_a={module.u_a}, l_m={module.l_m}, u_m={module.u_m}, "
            f"lambda_g={module.lambda_g}"
        )
    return f"m={module.m}"


def _margin_params(module: Any, sphere_m: int, sphere_lambda: float, mag: Tuple[float, ...]) -> None:
    """Stores the keyword-only policy parameters on ``module``."""
    if isinstance(sphere_m, bool) or not isinstance(sphere_m, int):
        raise ValueError(f"sphere_m must be an int, got {sphere_m!r}")
    module.sphere_m, module.sphere_lambda = sphere_m, float(sphere_lambda)
    module.l_a, module.u_a, module.l_m, module.u_m, module.lambda_g = (float(v) for v in mag)


def _native_config(module: Any) -> Any:
    """The validated native config of a module's hyper-parameters."""
    return _native.Config(
        module.margin,
        module.m,
        module.h,
        module.s,
        module.t_alpha,
        module.m1,
        module.m2,
        module.m3,
        sphere_m=module.sphere_m,
        sphere_lambda=module.sphere_lambda,
        l_a=module.l_a,
        u_a=module.u_a,
        l_m=module.l_m,
        u_m=module.u_m,
        lambda_g=module.lambda_g,
    )

#: Backends a module can be asked for (``backend=``).
BACKENDS = ("auto", "cpu", "reference")

# Input dtypes the fused backends read in place, by the native layer's names.
_FUSED = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_REFERENCE = {torch.float64: "float64", torch.float32: "float32"}
_LABELS = {torch.int64: "int64", torch.int32: "int32"}


def cuda_compiled() -> bool:
    """Whether the native layer was built with the CUDA backend."""
    return bool(_native.cuda_compiled())


def _ptr(t: Tensor) -> int:
    return int(t.data_ptr())


class _Plan:
    """What one step runs: the backend, the dtypes, and the inputs as the
    backend reads them (contiguous, converted only where it must be)."""

    def __init__(self, module: "AdaFaceLoss", features: Tensor, weight: Tensor, labels: Tensor):
        _check_inputs(features, weight, labels)
        dev = features.device
        self.device = dev
        if labels.dtype not in _LABELS:
            labels = labels.to(torch.int64)
        self.labels = labels.contiguous()
        backend = module.backend
        if dev.type == "cuda":
            if backend == "reference":
                raise ValueError("backend='reference' runs on the CPU; got CUDA tensors")
            self.kind = "cuda"
            table = _FUSED
        elif backend == "reference" or (
            backend == "auto" and torch.float64 in (features.dtype, weight.dtype)
        ):
            self.kind = "reference"
            table = _REFERENCE
        else:
            self.kind = "cpu"
            table = _FUSED
        if features.dtype == weight.dtype and features.dtype in table:
            common = features.dtype
        elif self.kind == "reference" and torch.float64 in (features.dtype, weight.dtype):
            common = torch.float64
        else:
            # Mixed or unsupported dtypes: both as float32 (one copy each).
            common = torch.float32
        self.dtype = common
        self.dtype_name = table[common]
        # A no-op for contiguous tensors of the right dtype: zero-copy.
        self.features = features.to(common).contiguous()
        self.weight = weight.to(common).contiguous()
        self.grad_dtype = common if self.kind == "reference" else torch.float32
        self.batch, self.dim = features.shape
        self.classes = weight.shape[0]


def _check_inputs(features: Tensor, weight: Tensor, labels: Tensor) -> None:
    for name, t in (("features", features), ("weight", weight), ("labels", labels)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if features.dim() != 2:
        raise ValueError(f"features must have 2 dimensions, got {features.dim()}")
    if weight.dim() != 2:
        raise ValueError(f"weight must have 2 dimensions, got {weight.dim()}")
    if labels.dim() != 1:
        raise ValueError(f"labels must have 1 dimension, got {labels.dim()}")
    if not features.is_floating_point() or not weight.is_floating_point():
        raise ValueError(
            f"features and weight must be floating point, got {features.dtype} and {weight.dtype}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features have {features.shape[1]} columns but the weight has {weight.shape[1]}"
        )
    if labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels have {labels.shape[0]} entries for a batch of {features.shape[0]} rows"
        )
    if features.device != weight.device or labels.device != features.device:
        raise ValueError(
            "features, weight and labels must be on one device, got "
            f"{features.device}, {weight.device} and {labels.device}"
        )
    if features.device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {features.device} is not supported (cpu or cuda)")


def _run(
    module: "AdaFaceLoss",
    plan: _Plan,
    need_grads: bool,
    update_state: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """One call of the backend: the loss (a 0-d tensor on the inputs' device)
    and, when asked, ``dL/dx`` and ``dL/dW`` in ``plan.grad_dtype``."""
    mean, std = module._state_buffers(plan.device)
    t = module._curricular_buffer(plan.device)
    b, d, c = plan.batch, plan.dim, plan.classes
    gx = gw = None
    if need_grads:
        gx = torch.empty((b, d), dtype=plan.grad_dtype, device=plan.device)
        gw = torch.empty((c, d), dtype=plan.grad_dtype, device=plan.device)
    args = (
        b,
        d,
        c,
        plan.dtype_name,
        _LABELS[plan.labels.dtype],
        _ptr(plan.features),
        _ptr(plan.weight),
        _ptr(plan.labels),
        _ptr(gx) if gx is not None else 0,
        _ptr(gw) if gw is not None else 0,
    )
    if plan.kind == "cuda":
        if gx is not None:
            # A step the kernels reject leaves the gradients untouched: zeros.
            gx.zero_()
            gw.zero_()
        loss = torch.empty((1,), dtype=torch.float64, device=plan.device)
        head = module._cuda_head(plan.device)
        with torch.cuda.device(plan.device):
            head.step(*args, _ptr(loss), _ptr(mean), _ptr(std), _ptr(t) if t is not None else 0, update_state)
        out_dtype = torch.float64 if plan.dtype == torch.float64 else torch.float32
        return loss.reshape(()).to(out_dtype), gx, gw
    step = _native.reference_step if plan.kind == "reference" else _native.cpu_step
    value = step(module._cfg, *args, _ptr(mean), _ptr(std), update_state, _ptr(t) if t is not None else 0)
    out_dtype = torch.float64 if plan.dtype == torch.float64 else torch.float32
    return torch.tensor(value, dtype=out_dtype), gx, gw


def _scaled(ctx: Any, which: str, grad_out: Tensor, dtype: torch.dtype) -> Optional[Tensor]:
    """A saved gradient times the incoming ``grad_out``. By default each
    step's gradients are handed over once: scaled in place (skipped when
    ``grad_out`` is 1 on the CPU) and released, so autograd adopts them as
    ``.grad`` without a copy. With the module's ``reentrant_backward`` they
    are kept, and each backward returns a scaled copy."""
    g = getattr(ctx, which)
    if g is None:
        if ctx.needs_input_grad[ctx.slots[which]]:
            raise RuntimeError(
                "AdaFaceLoss: this step's gradients were already used by a backward; run the "
                "forward again, or set module.reentrant_backward = True to keep them"
            )
        return None
    if ctx.reentrant:
        g = g * grad_out.to(g.dtype)
    else:
        setattr(ctx, which, None)
        if grad_out.device.type != "cpu" or float(grad_out) != 1.0:
            g.mul_(grad_out.to(g.dtype))
    return g if g.dtype == dtype else g.to(dtype)


class _AdaFaceFunction(torch.autograd.Function):
    """Loss and both gradients in one fused call; backward only scales them."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, labels: Tensor, module: "AdaFaceLoss", update: bool) -> Tensor:  # type: ignore[override]
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        plan = _Plan(module, features, weight, labels)
        loss, gx, gw = _run(module, plan, need_x or need_w, update)
        ctx.gx = gx if need_x else None
        ctx.gw = gw if need_w else None
        ctx.dtypes = (features.dtype, weight.dtype)
        ctx.slots = {"gx": 0, "gw": 1}
        ctx.reentrant = module.reentrant_backward
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        gx = _scaled(ctx, "gx", grad_out, ctx.dtypes[0])
        gw = _scaled(ctx, "gw", grad_out, ctx.dtypes[1])
        return gx, gw, None, None, None


class _AdaFaceNormalizedFunction(torch.autograd.Function):
    """The loss from (unit embeddings, norms) as the official backbone returns
    them: ``x = embeddings * norms``; the embeddings get the norm times
    ``dL/dx`` (tangent to the unit sphere), the norms none (the official head
    detaches them)."""

    @staticmethod
    def forward(ctx: Any, embeddings: Tensor, norms: Tensor, weight: Tensor, labels: Tensor, module: "AdaFaceLoss", update: bool) -> Tensor:  # type: ignore[override]
        need_e, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        n = norms.reshape(-1, 1).to(embeddings.dtype)
        features = embeddings * n
        plan = _Plan(module, features, weight, labels)
        loss, gx, gw = _run(module, plan, need_e or need_w, update)
        if need_e and gx is not None:
            gx.mul_(n.to(gx.dtype))
        ctx.gx = gx if need_e else None
        ctx.gw = gw if need_w else None
        ctx.dtypes = (embeddings.dtype, weight.dtype)
        ctx.slots = {"gx": 0, "gw": 2}
        ctx.reentrant = module.reentrant_backward
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        ge = _scaled(ctx, "gx", grad_out, ctx.dtypes[0])
        gw = _scaled(ctx, "gw", grad_out, ctx.dtypes[1])
        return ge, None, gw, None, None, None


class AdaFaceLoss(nn.Module):
    """The AdaFace loss (Kim, Jain and Liu, CVPR 2022) as a classification head.

    Owns the class weight ``weight`` (a ``Parameter`` of shape
    ``(num_classes, embedding_size)``, one row per class: the transpose of the
    official head's ``kernel``) and the EMA statistics of the feature norms,
    ``batch_mean`` and ``batch_std`` (``float64`` buffers of shape ``(1,)``,
    in ``state_dict()``). ``forward(features, labels)`` returns the mean
    cross-entropy over the batch, computed with the logits never formed; its
    backward writes ``dL/dfeatures`` and ``dL/dweight`` computed in the same
    fused call.

    Args:
        embedding_size: ``D``, the feature dimension.
        num_classes: ``C``, the number of identities.
        m: the margin (AdaFace, ArcFace, CosFace, CurricularFace); by default
            0.4, and 0.5 for CurricularFace (its paper's).
        h: AdaFace's scaler concentration.
        s: the logit scale.
        t_alpha: the EMA rate of the norm statistics (the official training
            default is 0.01; the official head's own default is 1.0).
        margin: ``"adaface"``, ``"arcface"``, ``"cosface"``, ``"combined"``,
            ``"sphereface"``, ``"curricularface"`` or ``"magface"`` (see
            :data:`MARGINS`; the last three are not affine in the scaler,
            and CurricularFace keeps its ``t`` in the ``curricular_t``
            buffer, on CUDA moved by the kernels without a host sync).
        dtype: the weight's dtype (default ``float32``; ``bfloat16`` and
            ``float16`` are read in place by the fused backends).
        m1, m2, m3: the combined margin ``cos(m1 theta + m2) - m3``.
        sphere_m, sphere_lambda: SphereFace's integer angular multiplier and
            annealing weight (the target logit is
            ``s (lambda cos(theta) + psi(theta)) / (1 + lambda)``).
        l_a, u_a, l_m, u_m, lambda_g: MagFace's norm bounds, margins at
            those bounds and regulariser weight (the paper's 10, 110, 0.45,
            0.8 and 35).
        backend: ``"auto"`` (the fused backend of the tensors' device; the
            exact reference for ``float64`` CPU inputs), ``"cpu"`` (fused,
            ``float64`` converted to ``float32``) or ``"reference"`` (the
            exact CPU reference in ``float64``/``float32``: it materialises
            ``B x C``, for checks).
        device: where to create the weight and the buffers.

    The EMA state moves only in training mode with gradients enabled; under
    ``torch.no_grad()`` or after ``eval()`` the loss is computed (against the
    batch's updated statistics, as the official head computes it) and the
    state stays. A step's backward runs once (its gradients are handed to
    autograd without a copy); set ``reentrant_backward = True`` to
    backpropagate through one graph repeatedly. CurricularFace keeps its
    ``t`` (the EMA of the batch mean target cosine, starting at 0) in a third
    buffer, ``curricular_t``, which moves with the norm statistics. Bad inputs raise ``ValueError`` (device or backend failures
    ``RuntimeError``) with nothing written and the state unchanged. On CUDA
    the kernels check the data (labels in range, finite values, non-zero
    norms) without a host sync: a rejected step's loss is NaN, its gradients
    zero and the state unchanged, and :meth:`check_last_step` raises the
    error.

    Inputs: features ``B x D`` raw (not normalised), labels ``B`` integers
    (``int64``/``int32`` read in place, others converted). Contiguous CPU
    tensors of the weight's dtype (``float32``, ``bfloat16``, ``float16``)
    are read in place; a non-contiguous or mixed-dtype input is made
    contiguous ``float32`` once. Gradients of the fused backends are computed
    in ``float32`` and converted to the input's dtype.
    """

    weight: Tensor
    batch_mean: Tensor
    batch_std: Tensor

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: Optional[float] = None,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
        margin: str = "adaface",
        dtype: Optional[torch.dtype] = None,
        *,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        sphere_m: int = 4,
        sphere_lambda: float = 5.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
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
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"dtype must be float32, bfloat16, float16 or float64, got {dtype}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.margin = margin
        if m is None:
            m = _DEFAULT_M.get(margin, 0.4)
        self.m, self.h, self.s, self.t_alpha = float(m), float(h), float(s), float(t_alpha)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        _margin_params(self, sphere_m, sphere_lambda, (l_a, u_a, l_m, u_m, lambda_g))
        self.backend = backend
        #: Keep each step's gradients for repeated backward passes over one
        #: graph (``retain_graph=True``, ``gradcheck``), at the cost of a copy
        #: per backward. Off: they are handed to autograd once, without a copy.
        self.reentrant_backward = False
        self._cfg = self._make_config()
        self._cuda_heads: Dict[Tuple[int, int], Any] = {}
        mean0, std0 = self._cfg.initial_state()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size, dtype=dtype, device=device))
        self.register_buffer("batch_mean", torch.full((1,), mean0, dtype=torch.float64, device=device))
        self.register_buffer("batch_std", torch.full((1,), std0, dtype=torch.float64, device=device))
        if self._cfg.has_curricular_t():
            self.register_buffer("curricular_t", torch.zeros((1,), dtype=torch.float64, device=device))
        self.reset_parameters()

    def _make_config(self) -> Any:
        return _native_config(self)

    def reset_parameters(self) -> None:
        """Class rows drawn uniformly in ``[-1, 1]`` and scaled to unit norm
        (the scale of a row does not change the loss)."""
        with torch.no_grad():
            w = torch.empty(self.weight.shape, dtype=torch.float32).uniform_(-1.0, 1.0)
            w /= w.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.weight.copy_(w)

    # -- the loss ---------------------------------------------------------

    def _updates_state(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """The mean AdaFace loss of raw features ``B x D`` with labels ``B``."""
        return _AdaFaceFunction.apply(features, self.weight, labels, self, self._updates_state())

    def forward_normalized(self, embeddings: Tensor, norms: Tensor, labels: Tensor) -> Tensor:
        """The loss from ``(embeddings, norms)`` as the official AdaFace
        backbone returns them (unit rows ``B x D`` and their norms, ``B x 1``
        or ``B``): the features are ``embeddings * norms``. The norms get no
        gradient (the official head detaches them); the embeddings get
        ``norms * dL/dx``, which is tangent to the unit sphere: its radial
        part, which the backbone's normalisation removes anyway, is not
        computed, so the gradient reaching the backbone is the official one.
        """
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
            raise ValueError("embeddings must be a 2-dimensional torch.Tensor (B x D)")
        if not isinstance(norms, Tensor) or norms.numel() != embeddings.shape[0]:
            raise ValueError("norms must be a tensor with one value per row of embeddings")
        if norms.device != embeddings.device:
            raise ValueError(f"norms are on {norms.device}, the embeddings on {embeddings.device}")
        return _AdaFaceNormalizedFunction.apply(
            embeddings, norms, self.weight, labels, self, self._updates_state()
        )

    def check_last_step(self) -> Optional[float]:
        """CUDA: waits for the latest step on each device and raises the
        error its kernels detected (``ValueError``); returns the latest loss.
        CPU steps raise at once, so this returns ``None`` for them."""
        last = None
        for head in self._cuda_heads.values():
            v = head.check_last_step()
            if v is not None:
                last = v
        return last

    # -- state ------------------------------------------------------------

    def ema_state(self) -> Tuple[float, float]:
        """The EMA state ``(batch_mean, batch_std)`` as floats (syncs on CUDA)."""
        return float(self.batch_mean.reshape(-1)[0]), float(self.batch_std.reshape(-1)[0])

    def _state_buffers(self, device: torch.device) -> Tuple[Tensor, Tensor]:
        """The buffers as the native layer writes them: one contiguous
        ``float64`` element each, on the inputs' device (``module.half()`` or
        ``.to()`` may have changed them; they are put back)."""
        out = []
        for name in ("batch_mean", "batch_std"):
            t = getattr(self, name)
            if t.dtype != torch.float64 or t.device != device or t.numel() != 1 or not t.is_contiguous():
                if t.numel() != 1:
                    raise ValueError(f"{name} must hold one value, got shape {tuple(t.shape)}")
                if t.device != device:
                    raise ValueError(f"the module's {name} is on {t.device}, the inputs on {device}")
                t = t.detach().to(torch.float64).reshape(1).contiguous()
                setattr(self, name, t)
            out.append(t)
        return out[0], out[1]

    def _curricular_buffer(self, device: torch.device) -> Optional[Tensor]:
        """CurricularFace's ``t`` as the native layer writes it (one contiguous
        ``float64`` element on the inputs' device), or ``None`` for the other
        policies."""
        t = getattr(self, "curricular_t", None)
        if t is None:
            return None
        if t.numel() != 1:
            raise ValueError(f"curricular_t must hold one value, got shape {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"the module's curricular_t is on {t.device}, the inputs on {device}")
        if t.dtype != torch.float64 or not t.is_contiguous():
            t = t.detach().to(torch.float64).reshape(1).contiguous()
            self.curricular_t = t
        return t

    def load_official_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Loads the official AdaFace head's state (github mk-minchul/AdaFace,
        ``head.AdaFace``): ``kernel`` (``D x C``, one column per class) becomes
        ``weight = kernel.T`` (``C x D``), and ``batch_mean`` / ``batch_std``
        (``float32``, shape ``(1,)``) are copied into this module's buffers
        (``float64``). Keys may carry a prefix (``head.kernel``). The
        official hyper-parameters (``m``, ``h``, ``s``, ``t_alpha``) are not in
        a state dict: construct this module with the same ones."""
        found: Dict[str, Tensor] = {}
        for key, value in state_dict.items():
            base = key.rsplit(".", 1)[-1]
            if base in ("kernel", "batch_mean", "batch_std"):
                if base in found:
                    raise ValueError(f"more than one {base!r} in the state dict")
                found[base] = value
        missing = [k for k in ("kernel", "batch_mean", "batch_std") if k not in found]
        if missing and strict:
            raise ValueError(f"the official state dict lacks {missing}")
        kernel = found.get("kernel")
        if kernel is not None:
            if tuple(kernel.shape) != (self.embedding_size, self.num_classes):
                raise ValueError(
                    f"kernel has shape {tuple(kernel.shape)}, expected "
                    f"(embedding_size, num_classes) = ({self.embedding_size}, {self.num_classes})"
                )
        for name in ("batch_mean", "batch_std"):
            v = found.get(name)
            if v is not None:
                if v.numel() != 1 or not math.isfinite(float(v.reshape(-1)[0])):
                    raise ValueError(f"{name} must be one finite value")
        if "batch_std" in found and float(found["batch_std"].reshape(-1)[0]) < 0:
            raise ValueError("batch_std must be >= 0")
        with torch.no_grad():
            if kernel is not None:
                self.weight.copy_(kernel.t())
            for name in ("batch_mean", "batch_std"):
                if name in found:
                    getattr(self, name).copy_(found[name].reshape(1).to(torch.float64))

    # -- CUDA -------------------------------------------------------------

    def _cuda_head(self, device: torch.device) -> Any:
        if not cuda_compiled():
            raise RuntimeError("device unavailable: adaface_rs was built without the CUDA backend")
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = int(torch.cuda.current_stream(index).cuda_stream)
        key = (index, stream)
        head = self._cuda_heads.get(key)
        if head is None:
            with torch.cuda.device(index):
                head = _native.CudaHead(self._cfg, index, stream)
            self._cuda_heads[key] = head
        return head

    # -- Python niceties --------------------------------------------------

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"margin={self.margin!r}, {_margin_repr(self)}, s={self.s}, t_alpha={self.t_alpha}, "
            f"backend={self.backend!r}"
        )

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        # Native handles are rebuilt on use: the config from the numbers, the
        # CUDA heads (kernels, workspace) on the next CUDA step.
        state.pop("_cfg", None)
        state["_cuda_heads"] = {}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._cfg = self._make_config()
