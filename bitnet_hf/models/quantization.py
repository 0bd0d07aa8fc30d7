"""BitNet b1.58 numerics: ternary weights, int8 activations, straight-through estimator, 2-bit packing.

The formulas are the ones of BitDistill (arXiv 2510.13998) and its authors' code:

* weights, per tensor:   ``s = mean(|W|)``, ``Wq = clamp(round(W / (s + eps)), -1, 1)``, forward uses ``Wq * s``;
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

import torch

VALUES_PER_ITEM = 4  # ternary values a packed byte holds (transformers.integrations.bitnet's, checked by the tests)

EPS = 1e-5


def quantize_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmean ternary quantization: returns ``(Wq, s)``, ``Wq`` int8 in {-1, 0, 1}, ``s`` float32 scalar."""
    w = weight.float()
    scale = w.abs().mean()
    return (w / (scale + EPS)).round().clamp(-1, 1).to(torch.int8), scale


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


def fake_quantize_weights(weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``Wq * s`` in the weight's dtype, with straight-through gradients; ``strength`` < 1 blends it with the
    latent weight, ``W + strength * (Wq * s - W)`` (the quantization warm-up)."""
    return _partly(weight, dequantize_weights, strength)


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
