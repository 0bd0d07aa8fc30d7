"""An experiment for the recovery issue: ``sst2_probe.py`` with an exponential moving average of the trainable
(latent) weights, taken from step ``EMA_START`` on (default 100: the end of the recipe's quantization warm-up, so
that only fully ternary steps are averaged) with decay ``EMA_DECAY`` (default 0.95: a horizon of ~20 steps); the
average replaces the weights when training ends, before the model is packed and scored. Averaging latent weights
smooths the sign flips of the last steps' noisy updates, as checkpoint averaging does for full-precision models.

    EMA_START=100 EMA_DECAY=0.95 python benchmarks/ema_probe.py --name NAME [sst2_probe.py options]
"""

import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from bitnet_hf.distill import BitDistillTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sst2_probe  # noqa: E402

START = int(os.environ.get("EMA_START", "100"))
DECAY = float(os.environ.get("EMA_DECAY", "0.95"))


class LatentWeightAverage(TrainerCallback):
    """Keeps a float32 moving average of every trainable parameter after each optimizer step from ``START`` on,
    and writes it into the parameters at the end of training."""

    def __init__(self) -> None:
        self.average: dict[str, torch.Tensor] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step < START:
            return
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                if name not in self.average:
                    self.average[name] = p.detach().float().clone()
                else:
                    self.average[name].lerp_(p.detach().float(), 1.0 - DECAY)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self.average:
            raise ValueError(f"EMA_START={START} is past the run's last step ({state.global_step}): nothing averaged")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.average:
                    p.copy_(self.average[name].to(p.dtype))


class Trainer(BitDistillTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(LatentWeightAverage())


if __name__ == "__main__":
    sst2_probe.BitDistillTrainer = Trainer
    sst2_probe.VARIANT = f"moving average of the latent weights from step {START}, decay {DECAY:g}"
    sst2_probe.main()
