"""GPTQ-style ternary rounding: the initial ternary values of a converted model, chosen with error compensation
from calibration data (the ``gptq`` weight scheme; Frantar et al., arXiv 2210.17323, with BitNet's ternary grid).

Absmean rounding (the ``absmean`` scheme, the paper's) rounds every weight on its own. GPTQ rounds the input columns
of a linear one after the other and moves each column's rounding error onto the columns not yet rounded, weighted by
the inverse Hessian ``H = X^T X`` of the layer's calibration inputs, so that the layer's *outputs* on such inputs
move as little as possible. The scales are the scheme's absmean scales of the full-precision weights (per tensor,
row or group), fixed before the rounding.

Training afterwards is unchanged: the ternary layers recompute values and scales from their latent weights by
absmean rounding every step. So the latent weights are rewritten to ``Wq * s / f`` (``f``: the block's fraction of
non-zero values), whose absmean rounding gives back exactly GPTQ's values ``Wq`` and scales ``s``: the converted
model computes GPTQ's ternary model, and the straight-through estimator trains on from there. (A consequence: the
latent weights no longer hold the full-precision weights, so a quantization warm-up, which blends from the latent
weights, starts from GPTQ's ternary model rather than the original one.)

The Hessians are gathered in one pass of the converted model with its quantizers off (the full-precision model
plus SubLN), at every ternary linear's input after its SubLN; siblings that read the same tensor (q/k/v, gate/up)
share one. Memory: one ``in x in`` float32 matrix per distinct input, about 0.4 GB for SmolLM2-135M.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .models.layers import BitLinear
from .models.quantization import WeightScheme
from .warmup import set_quantization_strength

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerResult:
    """A linear's output error on the calibration inputs, ``tr(D H D^T) / tr(W H W^T)`` with ``D = W - Wq s``:
    absmean rounding's and GPTQ's."""

    name: str
    absmean_error: float
    gptq_error: float


def minimum_tokens(model: nn.Module) -> int:
    """The calibration tokens GPTQ needs: as many as the widest ternary linear's input (below that the Hessian
    ``X^T X`` is singular and only the damping keeps it invertible)."""
    return max(m.in_features for m in model.modules() if isinstance(m, BitLinear))


def count_tokens(batches: Iterable[Mapping[str, torch.Tensor]]) -> int:
    """Real (unpadded) tokens of calibration batches."""
    total = 0
    for batch in batches:
        mask = batch.get("attention_mask")
        total += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    return total


def gptq_round(model: nn.Module, batches: list[Mapping[str, torch.Tensor]], *, damp: float = 0.01,
               block_size: int = 128) -> list[LayerResult]:
    """Give every ``BitLinear`` a new latent weight whose ternary values are GPTQ's (see the module docstring; the
    old weight tensors, which a converted model shares with its source model, are left alone); returns each
    layer's output error under absmean rounding and under GPTQ.

    Args:
        model: a BitNet training model (``convert_to_bitnet``), quantizers on.
        batches: model inputs (``input_ids``, optional ``attention_mask``), at least :func:`minimum_tokens` real
            tokens in all.
        damp: added to the Hessian's diagonal, as a fraction of its mean (GPTQ's ``percdamp``).
        block_size: columns rounded per block (speed only: the result does not depend on it up to float rounding).
    """
    layers, tokens = calibrated_layers(model, batches, "gptq_round", "GPTQ", "a usable Hessian")
    hessians = input_hessians(model, layers, batches, tokens)
    results = []
    for name, layer in tqdm(layers.items(), desc="GPTQ rounding", unit="linear"):
        results.append(_round_layer(name, layer, hessians[name], damp, block_size))
    logger.info("GPTQ rounding of %d linears: mean output error %.4f (absmean rounding: %.4f)", len(results),
                sum(r.gptq_error for r in results) / len(results), sum(r.absmean_error for r in results) / len(results))
    worse = [r.name for r in results if r.gptq_error > r.absmean_error]
    if worse:
        logger.warning("GPTQ rounding left %d of %d linears with a larger output error than absmean rounding: %s",
                       len(worse), len(results), ", ".join(worse[:5]))
    return results


def calibrated_layers(model: nn.Module, batches: list[Mapping[str, torch.Tensor]], caller: str, scheme: str,
                      purpose: str) -> tuple[dict[str, BitLinear], int]:
    """The model's ``BitLinear`` layers by name and the calibration's real tokens, after the checks GPTQ and AWQ
    share: quantizers on, at least :func:`minimum_tokens` tokens (``purpose``: what they are needed for)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}
    if not layers or not all(m.quantize for m in layers.values()):
        raise ValueError(f"{caller} needs a BitNet training model with its quantizers on (convert_to_bitnet(..., "
                         "quantize=True))")
    tokens, needed = count_tokens(batches), minimum_tokens(model)
    if tokens < needed:
        raise ValueError(f"{scheme} calibration has {tokens} real tokens; it needs at least {needed} (the widest "
                         f"ternary linear's input width) for {purpose}: give more or longer calibration samples")
    return layers, tokens


def input_hessians(model: nn.Module, layers: dict[str, BitLinear], batches: list[Mapping[str, torch.Tensor]],
              tokens: int) -> dict[str, torch.Tensor]:
    """``X^T X / tokens`` of each layer's input after SubLN (float32), with the quantizers off. A layer without
    SubLN that reads the very tensor the previous such layer read (q/k/v, gate/up) shares that layer's matrix."""
    hessians: dict[str, torch.Tensor] = {}
    shared_with: dict[str, str] = {}
    owner: list = [None, None]  # the last input tensor a layer without SubLN read, and that layer's name
    mask: list[torch.Tensor | None] = [None]

    def hook_for(name: str):
        def hook(layer: BitLinear, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            if name in shared_with:
                return
            if layer.sub_norm is None and x is owner[0] and name not in hessians:
                shared_with[name] = owner[1]
                return
            owner[:] = [x, name] if layer.sub_norm is None else [None, None]
            h = (layer.sub_norm(x) if layer.sub_norm is not None else x).detach().float()
            h = h[mask[0]] if mask[0] is not None else h.reshape(-1, h.shape[-1])
            if name not in hessians:
                hessians[name] = torch.zeros(h.shape[-1], h.shape[-1], device=h.device)
            hessians[name].addmm_(h.T, h)
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers.items()]
    set_quantization_strength(model, 0.0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="Input statistics", unit="batch"):
                attention_mask = batch.get("attention_mask")
                mask[0] = None if attention_mask is None else attention_mask.bool()
                owner[:] = [None, None]
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        set_quantization_strength(model, 1.0)
        model.train(was_training)
    for h in hessians.values():
        h /= tokens
    for name, source in shared_with.items():
        hessians[name] = hessians[source]
    return hessians


def _column_scales(scheme: WeightScheme, scale: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The scale each weight uses, as an ``(out, in)`` matrix."""
    if scheme.scale == "group":
        return scale.repeat_interleave(scheme.group_size, dim=1)
    return scale.reshape(-1, 1).expand(out_features, in_features)  # one per tensor or per row


def _output_error(delta: torch.Tensor, weight: torch.Tensor, hessian: torch.Tensor) -> float:
    return float(((delta @ hessian) * delta).sum() / ((weight @ hessian) * weight).sum().clamp_min(1e-30))


def _round_layer(name: str, layer: BitLinear, hessian: torch.Tensor, damp: float, block_size: int) -> LayerResult:
    scheme = layer.scheme
    weight = layer.weight.detach().float()
    out_features, in_features = weight.shape
    absmean_q, scale = scheme.quantize(weight)
    scales = _column_scales(scheme, scale.float(), out_features, in_features)
    safe = scales + 1e-5  # the EPS of absmean rounding: the same grid
    h = hessian.clone()
    w = weight.clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * h.diagonal().mean())
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        w_block, errors = w[:, start:end].clone(), torch.zeros(out_features, end - start)
        h_block = h_inv[start:end, start:end]
        for i in range(end - start):
            column, d = w_block[:, i], h_block[i, i]
            rounded = (column / safe[:, start + i]).round().clamp(-1, 1)
            q[:, start + i] = rounded
            error = (column - rounded * scales[:, start + i]) / d
            w_block[:, i:] -= error.unsqueeze(1) * h_block[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]
    ternary = q.to(torch.int8)
    result = LayerResult(name, _output_error(weight - absmean_q * scales, weight, hessian),
                         _output_error(weight - ternary * scales, weight, hessian))
    # a new Parameter, not a copy into the old one: a converted model shares its weights with the model it was
    # converted from, which must keep its own
    latent = _latent_for(scheme, ternary, scale.float()).to(layer.weight.dtype)
    layer.weight = nn.Parameter(latent, requires_grad=layer.weight.requires_grad)
    return result


def _latent_for(scheme: WeightScheme, ternary: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Latent weights whose absmean rounding under ``scheme`` gives ``ternary`` and ``scale``: each block's
    values times ``scale / f``, ``f`` the block's fraction of non-zeros (its absmean is then ``scale``, and every
    value divided by it is 0 or at least 1 in size, so it rounds and clamps back to itself)."""
    out_features, in_features = ternary.shape
    width = {"tensor": ternary.numel(), "row": in_features, "group": scheme.group_size}[scheme.scale]
    blocks = ternary.float().reshape(-1, width)
    nonzero = blocks.ne(0).float().mean(dim=1, keepdim=True)
    per_block = scale.reshape(-1, 1) / nonzero.clamp_min(1e-12)
    return (blocks * per_block).reshape(out_features, in_features)
