"""Quantization warm-up: the BitNet quantizers are blended in over the first steps of a training stage.

A converted model is far from its full-precision self the moment both quantizers are on (SmolLM2-135M: held-out LM
loss 3.96 -> 18.4). The warm-up trains it instead through ``x + strength * (q(x) - x)`` for weights and activations,
``strength`` rising from 0 to 1 over ``steps`` optimizer steps, then exactly the BitNet forward (the deployed
model's) for the rest of the stage. The strength follows ``state.global_step``, so a resumed run continues where it
stopped. Its shape (``WARMUP_SHAPES``): ``linear``, ``t = step / steps``; or ``cubic``, ``1 - (1 - t)^3``, the
schedule of gradual magnitude pruning (Zhu & Gupta, arXiv 1710.01878): fast while the model is far from ternary,
slow as it gets there (0.70 at a third of the steps, 0.96 at two thirds).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .models.layers import BitLinear


def set_quantization_strength(model: nn.Module, strength: float) -> int:
    """Set every ``BitLinear``'s quantization strength (0: full precision, 1: BitNet); returns how many."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"quantization strength {strength} must be within [0, 1]")
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    for layer in layers:
        layer.quantization_strength = strength
    return len(layers)


def not_a_bitnet_model(setting: str) -> ValueError:
    """The error for a BitNet-only training setting given a model without ``BitLinear`` layers."""
    return ValueError(f"{setting} but the model has no BitLinear layers: it is not a BitNet training model (convert "
                      "it with bitnet_hf.convert_to_bitnet first)")


WARMUP_SHAPES = ("linear", "cubic")


def warmup_strength(step: int, steps: int, shape: str = "linear") -> float:
    """The strength at ``step`` of a warm-up over ``steps``: ``t = step / steps`` (``linear``) or ``1 - (1 - t)^3``
    (``cubic``); 1 from ``steps`` on, and always 1 when ``steps`` is 0."""
    if shape not in WARMUP_SHAPES:
        raise ValueError(f"quantization warm-up shape {shape!r} is not one of {', '.join(WARMUP_SHAPES)}")
    t = 1.0 if steps <= 0 else min(1.0, step / steps)
    return t if shape == "linear" else 1.0 - (1.0 - t) ** 3


class QuantizationWarmup(TrainerCallback):
    """Raise the quantization strength of the trained model's ``BitLinear`` layers from 0 to 1 over ``steps``
    optimizer steps, or over that fraction of the training's steps when ``steps`` is below 1, along ``shape``."""

    def __init__(self, steps: float, shape: str = "linear") -> None:
        if not steps >= 0:
            raise ValueError(f"quantization warm-up steps={steps} must be >= 0")
        warmup_strength(0, 1, shape)  # an unknown shape is an error here, before training
        self.steps, self.shape = steps, shape

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None and set_quantization_strength(model, 0.0) == 0:
            raise not_a_bitnet_model("quantization_warmup_steps is set")

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None:
            steps = self.steps if self.steps >= 1 else math.ceil(self.steps * state.max_steps)
            set_quantization_strength(model, warmup_strength(state.global_step, int(steps), self.shape))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None:  # whatever happened, the saved and evaluated model is the BitNet one
            set_quantization_strength(model, 1.0)
