"""An experiment for the recovery issue: ``sst2_probe.py`` with the learning rate tied to the quantization warm-up's
strength ``s``: ``lr x (r + (1 - r) s)``, so the nearly full-precision first steps train at a full-precision
fine-tuning rate (``r`` = ``LR_START_RATIO``, default 0.05: 5e-5 of the recipe's 1e-3, the FP16-SFT teacher's) and
the ternary steps at the recipe's. The schedule's own factor (WSD) applies on top; the logged ``learning_rate`` is
the schedule's, before this factor.

    LR_START_RATIO=0.05 python benchmarks/coupled_lr_probe.py --name NAME --warmup 100 [sst2_probe.py options]
"""

import os
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bitnet_hf.distill import BitDistillTrainer
from bitnet_hf.models.layers import BitLinear

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sst2_probe  # noqa: E402

RATIO = float(os.environ.get("LR_START_RATIO", "0.05"))


class CoupledLearningRate(TrainerCallback):
    """Scale every group's learning rate by ``r + (1 - r) s`` for the step about to run (the scheduler sets it
    afresh after each step); runs after the warm-up callback has set ``s``."""

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                      **kwargs: Any) -> None:
        strength = next(m.quantization_strength for m in model.modules() if isinstance(m, BitLinear))
        for group in optimizer.param_groups:
            group["lr"] *= RATIO + (1.0 - RATIO) * strength


class Trainer(BitDistillTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(CoupledLearningRate())  # after QuantizationWarmup, added by the trainer itself


if __name__ == "__main__":
    sst2_probe.BitDistillTrainer = Trainer
    sst2_probe.VARIANT = f"learning rate x ({RATIO:g} + (1 - {RATIO:g}) x warm-up strength)"
    sst2_probe.main()
