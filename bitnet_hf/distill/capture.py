"""Capture Q, K and V of one decoder layer during a model's normal forward.

What is captured: the outputs of the layer's ``q_proj``, ``k_proj`` and ``v_proj``, that is Q, K and V *before*
any per-head norm (Qwen3, Gemma 3) and before RoPE. Why there:

- they are exactly what the layer's (Bit)Linear projections produce, the quantities the student's ternary weights
  are responsible for; a per-head norm after them would rescale away part of the mismatch the loss should see;
- RoPE is the same fixed rotation in teacher and student and carries nothing the student could learn; without it
  the relation of two tokens does not depend on where the padding is (left or right);
- they exist as module outputs in every family and every attention implementation (eager, sdpa, flash), so three
  forward hooks on one layer suffice: no ``output_attentions``, no patched attention function, no second forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PROJECTIONS = ("q_proj", "k_proj", "v_proj")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers model, a PEFT-wrapped one included."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PeftModel
    layers = getattr(getattr(inner, "base_model", inner), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"cannot find the decoder layers of {type(model).__name__} (expected `model.base_model.layers`)")
    return layers


def resolve_layer(model: nn.Module, layer: int | None) -> int:
    """The non-negative index of ``layer`` in ``model`` (``None``: the layer at 80% of the depth, as the authors'
    22 of 28 for Qwen3-0.6B)."""
    depth = len(decoder_layers(model))
    if layer is None:
        return int(0.8 * depth)
    if not -depth <= layer < depth:
        raise ValueError(f"attention_distill_layer={layer} is out of range for {type(model).__name__} with {depth} "
                         f"layers; use an index in [{-depth}, {depth - 1}] (negative counts from the end)")
    return layer % depth


def projection_widths(model: nn.Module, layer: int) -> tuple[int, int, int]:
    """Output widths of the Q, K, V projections of ``layer``."""
    attention = decoder_layers(model)[layer].self_attn
    widths = []
    for name in PROJECTIONS:
        module = getattr(attention, name)
        module = module.get_base_layer() if hasattr(module, "get_base_layer") else module  # PEFT LoRA layer
        widths.append(module.out_features)
    return widths[0], widths[1], widths[2]


class QKVCapture:
    """Forward hooks on the Q, K, V projections of one layer that record their outputs while active.

    Use it as a context manager around the forward whose states you want, then ``pop()`` them::

        capture = QKVCapture(model, layer=-6)
        with capture:
            logits = model(**batch).logits
        q, k, v = capture.pop()

    Outside the ``with`` block (generation, gradient-checkpointing recomputation) nothing is kept.
    """

    def __init__(self, model: nn.Module, layer: int | None) -> None:
        self.layer = resolve_layer(model, layer)
        attention = decoder_layers(model)[self.layer].self_attn
        self._states: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles = [getattr(attention, name).register_forward_hook(self._hook(name)) for name in PROJECTIONS]

    def _hook(self, name: str):
        def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if self._active:
                self._states[name] = output
        return record

    def __enter__(self) -> QKVCapture:
        self._states.clear()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False

    def pop(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = [name for name in PROJECTIONS if name not in self._states]
        if missing:
            raise RuntimeError(f"layer {self.layer}'s {', '.join(missing)} did not run in the captured forward")
        states = tuple(self._states.pop(name) for name in PROJECTIONS)
        return states[0], states[1], states[2]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._states.clear()
