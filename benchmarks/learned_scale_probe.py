"""An experiment for the weight-scheme issue ("scales recomputed from the latent weights each step, or kept as
trained parameters: choose, measure"): ``sst2_probe.py`` with each ``BitLinear``'s per-tensor scale a trained
parameter instead of ``mean(|W|)`` recomputed at every step.

The scale starts at the latent weights' absmean (the converted model is unchanged at step 0); the forward is
``Wq * s`` with ``Wq = clamp(round(W / (s + eps)), -1, 1)``; gradients: straight through to ``W`` as today, and to
``s`` as to a gain, ``sum(grad * Wq)``. The scales train at ``SCALE_LR_RATIO`` (default 0.1) times the learning
rate. The packed format computes its scale as the absmean, so the score is the training model's, in float32.

    SCALE_LR_RATIO=0.1 python benchmarks/learned_scale_probe.py --name NAME [sst2_probe.py options]
"""

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bitnet_hf.distill import BitDistillTrainer
from bitnet_hf.models.layers import BitLinear
from bitnet_hf.models.quantization import EPS, fake_quantize_activations

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sst2_probe  # noqa: E402

RATIO = float(os.environ.get("SCALE_LR_RATIO", "0.1"))


class LearnedScale(torch.autograd.Function):
    """Forward ``clamp(round(W / (s + eps)), -1, 1) * s``; backward ``grad`` to ``W``, ``sum(grad * Wq)`` to ``s``."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        q = (weight.detach().float() / (scale.detach() + EPS)).round().clamp(-1, 1)
        ctx.save_for_backward(q)
        return (q * scale.detach()).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        (q,) = ctx.saved_tensors
        return grad, (grad.float() * q).sum().reshape(1)


def forward(self: BitLinear, x: torch.Tensor) -> torch.Tensor:
    if self.sub_norm is not None:
        x = self.sub_norm(x)
    strength = self.quantization_strength
    w = LearnedScale.apply(self.weight, self.learned_scale)
    if strength < 1.0:
        w = self.weight + strength * (w - self.weight)
    return F.linear(fake_quantize_activations(x, strength), w, self.bias)


class Trainer(BitDistillTrainer):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        model = kwargs["model"]
        for m in model.modules():  # the scales exist before the optimizer is made
            if isinstance(m, BitLinear):
                m.learned_scale = nn.Parameter(m.weight.detach().float().abs().mean().reshape(1))
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        scales = {id(m.learned_scale) for m in self.model.modules() if isinstance(m, BitLinear)}
        moved = []
        for group in optimizer.param_groups:
            moved += [p for p in group["params"] if id(p) in scales]
            group["params"] = [p for p in group["params"] if id(p) not in scales]
        optimizer.add_param_group({"params": moved, "lr": self.args.learning_rate * RATIO, "weight_decay": 0.0})
        print(f"learned scales: {len(moved)} at lr x {RATIO}", flush=True)
        return optimizer


if __name__ == "__main__":
    BitLinear.forward = forward
    sst2_probe.BitDistillTrainer = Trainer
    sst2_probe.pack_bitnet = lambda model: model  # scored unpacked: the packed format recomputes the absmean
    sst2_probe.VARIANT = f"per-tensor scales trained as parameters at lr x {RATIO:g}"
    sst2_probe.SCORING = f"training model (learned per-tensor scales, lr x {RATIO}), float32"
    sst2_probe.main()
