"""BitNet b1.58 numerics: ternary weights, int8 activations, straight-through estimator, 2-bit packing.

The formulas are the ones of BitDistill (arXiv 2510.13998) and its authors' code:

* weights, per tensor:   ``s = mean(|W|)``, ``Wq = clamp(round(W / (s + eps)), -1, 1)``, forward uses ``Wq * s``
  (``WeightScheme`` takes the same absmean per output row or per group of input columns instead);
* activations, per token: ``g = max(|x|)`` over the last dim, ``xq = clamp(round(127 x / (g + eps)), -128, 127)``,
  forward uses ``xq * g / 127``;
* gradients pass straight through both quantizers (the straight-through estimator of ``x + (q(x) - x).detach()``,
  written as an autograd function so that the forward value is exactly ``q(x)``, without the rounding of
  ``x + (q(x) - x)``: the deployment model then reproduces the training forward bit for bit).

Quantization is computed in float32 whatever the input dtype. Packing reuses the bit layout of
``transformers.integrations.bitnet`` (4 ternary values per byte, row blocks in bit pairs 0-1, 2-3, 4-5, 6-7).

This file only imports torch and transformers: it travels into saved checkpoints as remote code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

VALUES_PER_ITEM = 4  # ternary values a packed byte holds (transformers.integrations.bitnet's, checked by the tests)

EPS = 1e-5


def quantize_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmean ternary quantization: returns ``(Wq, s)``, ``Wq`` int8 in {-1, 0, 1}, ``s`` float32 scalar."""
    w = weight.float()
    scale = w.abs().mean()
    return (w / (scale + EPS)).round().clamp(-1, 1).to(torch.int8), scale


WEIGHT_SCALES = ("tensor", "row", "group")
# how conversion picks the initial ternary values: absmean rounding as is, or from calibration data (every other
# scheme): GPTQ rounding (bitnet_hf.gptq), AWQ channel scaling (bitnet_hf.awq)
WEIGHT_SCHEMES = ("absmean", "gptq", "awq")
INT4_GROUP = 32  # columns per scale of PyTorch's int4 CPU matmul, the packed route for group scales


@dataclass(frozen=True)
class WeightScheme:
    """How a ternary layer gets its values and scales from its latent weights: absmean ternary rounding with one
    scale per tensor (``"tensor"``, the paper's and the default), per output row (``"row"``) or per group of
    ``group_size`` consecutive input columns of a row (``"group"``, Block-Quant). The one place that knows the scale
    layout: ``BitLinear`` (training), ``PackedBitLinear`` (storage, kernels) and the export ask it.

    ``group_size`` is a multiple of 32 (the int4 CPU kernel's group, which then holds the scales exactly) and must
    divide the layer's input width (:meth:`check`).
    """

    scale: str = "tensor"
    group_size: int = 0

    def __post_init__(self) -> None:
        if self.scale not in WEIGHT_SCALES:
            raise ValueError(f"weight scale {self.scale!r} is not one of {', '.join(WEIGHT_SCALES)}")
        if self.scale == "group" and (self.group_size <= 0 or self.group_size % INT4_GROUP):
            raise ValueError(f"group size {self.group_size} must be a positive multiple of {INT4_GROUP} for "
                             "--scale group")
        if self.scale != "group" and self.group_size:
            raise ValueError(f"a group size ({self.group_size}) only applies to --scale group, not {self.scale!r}")

    @classmethod
    def of(cls, config: object) -> WeightScheme:
        """The scheme a BitNet config records (``bitnet_weight_scale``, ``bitnet_group_size``)."""
        return cls(getattr(config, "bitnet_weight_scale", "tensor"), getattr(config, "bitnet_group_size", 0))

    def check(self, in_features: int, name: str = "a layer") -> None:
        if self.scale == "group" and in_features % self.group_size:
            raise ValueError(f"group size {self.group_size} does not divide the input width {in_features} of {name}; "
                             "choose a group size that divides every projection's input width")

    @property
    def per_output(self) -> bool:
        """Whether every scale belongs to one output row or to all of them (per tensor, per row): the C++ kernels
        apply such scales in their float32 epilogue at any number of rows; groups along the input they scale inside
        the dot product, on their matrix-vector loops only (``PackedBitLinear.kernel_for`` routes by rows)."""
        return self.scale != "group"

    def scale_shape(self, out_features: int, in_features: int) -> tuple[int, ...]:
        """The shape of the stored float32 scale: ``(1,)``, ``(out, 1)`` or ``(out, in / group_size)``."""
        return {"tensor": (1,), "row": (out_features, 1),
                "group": (out_features, in_features // max(1, self.group_size))}[self.scale]

    def quantize(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Wq, s)``: ternary int8 ``Wq`` of the weight's shape, float32 ``s`` of :meth:`scale_shape` (per tensor:
        0-dimensional)."""
        if self.scale == "tensor":
            return quantize_weights(weight)
        w = weight.float()
        blocks = w.unsqueeze(1) if self.scale == "row" else w.view(w.shape[0], -1, self.group_size)
        scale = blocks.abs().mean(dim=-1, keepdim=True)
        q = (blocks / (scale + EPS)).round().clamp(-1, 1).to(torch.int8)
        return q.view(w.shape), scale.squeeze(-1) if self.scale == "group" else scale.view(-1, 1)

    def dequantize(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``Wq * s`` in ``dtype``: the one product of values and scales, for training and packed layers alike."""
        if self.scale != "group":
            return dequantize_ternary(q, scale, dtype)
        blocks = q.view(q.shape[0], -1, self.group_size) * scale.unsqueeze(-1)
        return blocks.view(q.shape).to(dtype)

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """``Wq * s`` in the weight's dtype (no gradient)."""
        return self.dequantize(*self.quantize(weight), weight.dtype)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization: returns ``(xq, g)``, ``xq`` int8, ``g`` float32 of shape ``x.shape[:-1] + (1,)``."""
    x = x.float()
    absmax = x.abs().amax(dim=-1, keepdim=True)
    return (127.0 * x / (absmax + EPS)).round().clamp(-128, 127).to(torch.int8), absmax


def dequantize_ternary(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``q * scale`` cast to ``dtype``: the one place ternary weights become floats, shared by the training and the
    packed linear so that both compute identical values."""
    return (q * scale).to(dtype)


def dequantize_weights(weight: torch.Tensor) -> torch.Tensor:
    """``Wq * s`` in the weight's dtype (no gradient)."""
    q, scale = quantize_weights(weight)
    return dequantize_ternary(q, scale, weight.dtype)


def dequantize_activations(x: torch.Tensor) -> torch.Tensor:
    """``xq * g / 127`` in the input's dtype (no gradient)."""
    q, absmax = quantize_activations(x)
    return (q * (absmax / 127.0)).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward ``fn(x)``, backward the identity."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        return fn(x.detach())

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _partly(x: torch.Tensor, dequantize: Callable[[torch.Tensor], torch.Tensor], strength: float) -> torch.Tensor:
    """``x + strength * (q(x) - x)`` with straight-through gradients; exactly ``q(x)`` at strength 1."""
    if strength >= 1.0:
        return _StraightThrough.apply(x, dequantize)
    detached = x.detach()
    return x + strength * (dequantize(detached) - detached)


def fake_quantize_weights(weight: torch.Tensor, strength: float = 1.0, scheme: WeightScheme | None = None
                          ) -> torch.Tensor:
    """``Wq * s`` in the weight's dtype, with straight-through gradients; ``strength`` < 1 blends it with the
    latent weight, ``W + strength * (Wq * s - W)`` (the quantization warm-up). ``scheme``: the scale layout
    (default: one per tensor)."""
    return _partly(weight, dequantize_weights if scheme is None or scheme.scale == "tensor" else scheme.fake_quantize,
                   strength)


def fake_quantize_activations(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``xq * g / 127`` in the input's dtype, with straight-through gradients; ``strength`` as for the weights."""
    return _partly(x, dequantize_activations, strength)


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """Pack a ternary matrix ``(out, in)`` into uint8 ``(ceil(out / 4), in)`` in transformers' BitNet layout."""
    if q.dim() != 2:
        raise ValueError(f"pack_ternary expects a 2-D weight matrix, got shape {tuple(q.shape)}")
    if q.numel() and (q.min() < -1 or q.max() > 1):
        raise ValueError("pack_ternary expects values in {-1, 0, 1}; quantize the weights first")
    # Imported here: transformers.integrations.bitnet imports torch's inductor (a second of start-up), which
    # loading and running a packed model never need.
    from transformers.integrations.bitnet import pack_weights

    # transformers' pack_weights adds 1 to its argument in place: give it a copy of its own.
    return pack_weights(q.to(torch.int16).clone())


def unpack_ternary(packed: torch.Tensor, out_features: int, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: uint8 ``(ceil(out / 4), in)`` -> ``(out, in)`` values in {-1, 0, 1}.

    Plain torch (transformers' own ``unpack_weights`` is wrapped in ``torch.compile``, which is slow to warm up on
    CPU); the test suite checks it bit for bit against transformers'.
    """
    rows = packed.shape[0]
    shifts = torch.arange(0, 2 * VALUES_PER_ITEM, 2, device=packed.device, dtype=torch.uint8)
    # (4, rows, in): block i holds rows [i * rows, (i + 1) * rows) of the original matrix.
    blocks = (packed.unsqueeze(0) >> shifts.view(-1, 1, 1)) & 3
    return (blocks.reshape(VALUES_PER_ITEM * rows, *packed.shape[1:])[:out_features].to(dtype)) - 1
