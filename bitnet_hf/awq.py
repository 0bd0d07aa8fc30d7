"""AWQ-style activation-aware channel scaling: the ``awq`` weight scheme of a conversion (Lin et al., arXiv
2306.00978, with BitNet's ternary grid).

A linear computes ``W x = (W diag(s)) (x / s)`` for any positive per-input-channel ``s``. Scaling up the columns of
the channels whose activations are large before ternary rounding rounds them more finely, relative to the rest, and
their activations shrink by the same factor. The ``1 / s`` is folded into the gain of the norm that produces ``x``:
the linear's own SubLN where it has one, else the RMSNorm in front of it (the block's ``input_layernorm`` for
q/k/v, the norm in front of the MLP for gate/up); linears that read one norm share its ``s``. So the model's
full-precision function does not change (checked on a calibration batch, an error otherwise), only what absmean
rounding then makes of it: training and packing are unchanged.

``s = rms(x)^alpha`` per channel (``rms`` over the calibration tokens, read off the diagonal of GPTQ's input
Hessian ``H = X^T X / n``), ``alpha`` searched on a grid in [0, 1] per norm (``alpha = 0``: absmean rounding as is)
for the smallest output error ``tr(D H D^T)`` of the layers it feeds, ``D = W - Q(W diag(s)) / s``. The error
leaves out the int8 activation quantizer, which the scaling also helps (it lowers the channels that set the
per-token absmax).

Where the math does not allow it: a linear with neither its own SubLN nor a norm in front (``o_proj`` and
``down_proj`` under ``--subln none``, whose inputs come from attention and from ``act(gate) * up``) keeps
``s = 1``; the conversion logs which.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .gptq import calibrated_layers, input_hessians
from .models.layers import BitLinear
from .warmup import set_quantization_strength

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormScaling:
    """The scaling chosen for the linears one norm feeds: ``alpha`` and their output error (``tr(D H D^T) / tr(W H
    W^T)`` summed over the linears) at ``alpha = 0`` (absmean rounding) and at ``alpha``."""

    norm: str
    linears: tuple[str, ...]
    alpha: float
    absmean_error: float
    awq_error: float


ALPHAS = tuple(i / 20 for i in range(21))  # the exponents searched: 0, 0.05, ..., 1


def awq_scale(model: nn.Module, batches: list[Mapping[str, torch.Tensor]], *,
              alphas: Sequence[float] = ALPHAS) -> list[NormScaling]:
    """Scale every ``BitLinear``'s input channels as the module docstring says, in place (new ``Parameter``
    objects for the weights and gains it changes: a converted model shares its tensors with its source model,
    which must keep its own); returns the scaling chosen per norm.

    Args:
        model: a BitNet training model (``convert_to_bitnet``), quantizers on.
        batches: model inputs (``input_ids``, optional ``attention_mask``), at least :func:`~bitnet_hf.gptq.minimum_tokens`
            real tokens in all.
        alphas: the exponents searched (the first of the smallest error wins).
    """
    layers, tokens = calibrated_layers(model, batches, "awq_scale", "AWQ", "its error estimate")
    groups, unscaled = _feeding_norms(model, layers, batches[0])
    if unscaled:
        logger.info("AWQ: %d linears have neither their own SubLN nor a norm in front and keep their scale of 1: %s",
                    len(unscaled), ", ".join(unscaled[:4]) + (", ..." if len(unscaled) > 4 else ""))
    reference = _full_precision_logits(model, batches[0])
    hessians = input_hessians(model, layers, batches, tokens)
    results = []
    for norm_name, names in tqdm(groups.items(), desc="AWQ scaling", unit="norm"):
        results.append(_scale_group(model, norm_name, names, [layers[n] for n in names], hessians[names[0]], alphas))
    after = _full_precision_logits(model, batches[0])
    if not torch.allclose(after, reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item()):
        raise RuntimeError("AWQ folding changed the model's full-precision outputs (a norm feeds more than the "
                           "linears it was folded for): this family is not supported by the awq scheme")
    logger.info("AWQ scaling of %d norms: mean output error %.4f (absmean rounding: %.4f)", len(results),
                sum(r.awq_error for r in results) / max(1, len(results)),
                sum(r.absmean_error for r in results) / max(1, len(results)))
    return results


def _full_precision_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    set_quantization_strength(model, 0.0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(**batch)
    finally:
        set_quantization_strength(model, 1.0)
        model.train(was_training)
    return output.logits.float() if hasattr(output, "logits") else output[0].float()


def _feeding_norms(model: nn.Module, layers: dict[str, BitLinear], batch: Mapping[str, torch.Tensor]
                   ) -> tuple[dict[str, list[str]], list[str]]:
    """Which gain each linear's ``1 / s`` folds into: ``{norm name: [linear names]}`` (a linear with SubLN: its own
    ``<name>.sub_norm``), and the linears with neither. The norm in front is found by tensor identity in one
    forward pass: the module whose output tensor is the linear's input, if it has a gain of that width."""
    produced: dict[int, tuple[weakref.ref, str]] = {}  # id of an output -> (the output, while alive; its module)
    read: dict[str, str | None] = {}

    def producer(x: torch.Tensor) -> str | None:
        ref, name = produced.get(id(x), (None, None))
        return name if ref is not None and ref() is x else None

    handles = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (not isinstance(module, BitLinear) and not list(module.children()) and isinstance(weight, nn.Parameter)
                and weight.dim() == 1):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: produced.__setitem__(id(out), (weakref.ref(out), name))))
    for name, layer in layers.items():
        if layer.sub_norm is None:
            handles.append(layer.register_forward_pre_hook(
                lambda m, args, name=name: read.__setitem__(name, producer(args[0]))))
    set_quantization_strength(model, 0.0)
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        set_quantization_strength(model, 1.0)
    groups: dict[str, list[str]] = {}
    unscaled = []
    for name, layer in layers.items():
        if layer.sub_norm is not None:
            groups[f"{name}.sub_norm"] = [name]
            continue
        norm = read.get(name)
        if norm is None or model.get_submodule(norm).weight.numel() != layer.in_features:
            unscaled.append(name)
        else:
            groups.setdefault(norm, []).append(name)
    return groups, unscaled


def _scaled_error(weights: list[torch.Tensor], layers: list[BitLinear], s: torch.Tensor, hessian: torch.Tensor
                  ) -> float:
    """``sum tr(D H D^T) / tr(W H W^T)`` over the linears, ``D = W - Q(W diag(s)) / s``."""
    total = 0.0
    for w, layer in zip(weights, layers):
        d = w - layer.scheme.fake_quantize(w * s) / s
        total += float(((d @ hessian) * d).sum() / ((w @ hessian) * w).sum().clamp_min(1e-30))
    return total


def _scale_group(model: nn.Module, norm_name: str, names: list[str], layers: list[BitLinear], hessian: torch.Tensor,
                 alphas: Sequence[float]) -> NormScaling:
    weights = [layer.weight.detach().float() for layer in layers]
    rms = hessian.diagonal().clamp_min(0).sqrt().clamp_min(1e-8)
    best = (float("inf"), 0.0, torch.ones_like(rms))
    absmean_error = _scaled_error(weights, layers, torch.ones_like(rms), hessian)
    for alpha in alphas:
        s = rms.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        error = _scaled_error(weights, layers, s, hessian)
        if error < best[0]:
            best = (error, alpha, s)
    error, alpha, s = best
    norm = model.get_submodule(norm_name)
    with torch.no_grad():
        for layer, w in zip(layers, weights):
            layer.weight = nn.Parameter((w * s).to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)
        offset = _gain_offset(norm)
        gain = (offset + norm.weight.detach().float()) / s - offset
        norm.weight = nn.Parameter(gain.to(norm.weight.dtype), requires_grad=norm.weight.requires_grad)
    return NormScaling(norm_name, tuple(names), alpha, absmean_error, error)


def _gain_offset(norm: nn.Module) -> float:
    """``c`` of a norm that multiplies by ``c + weight``: 0 for most RMSNorms and SubLN, 1 for Gemma's. Read off the
    norm itself: its output on a row of ones with the gain set to zero."""
    weight = norm.weight
    with torch.no_grad():
        out = torch.func.functional_call(norm, {"weight": torch.zeros_like(weight)},
                                         (torch.ones(1, weight.numel(), dtype=weight.dtype, device=weight.device),))
    return float(out.float().abs().max().round())
