"""An experiment for the weight-scheme issue: ``sst2_probe.py`` with absmean ternary scales per group of
``SCALE_GROUP`` input columns (0: one per output row) instead of the paper's one per tensor, in training. The
packed format holds one scale per tensor, so the score is the training model's, in float32 (not packed).

    SCALE_GROUP=64 python benchmarks/scale_probe.py --name NAME [sst2_probe.py options]
"""

import os
import sys
from pathlib import Path

import torch

import bitnet_hf.models.quantization as quantization

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sst2_probe  # noqa: E402

GROUP = int(os.environ.get("SCALE_GROUP", "64"))


def dequantize_weights(weight: torch.Tensor) -> torch.Tensor:
    """``Wq * s`` with one absmean scale per group of ``GROUP`` columns of a row (per row when 0)."""
    w = weight.float()
    out_features, in_features = w.shape
    if GROUP and in_features % GROUP:
        raise ValueError(f"SCALE_GROUP={GROUP} does not divide the input width {in_features}")
    groups = w.view(out_features, 1, in_features) if GROUP == 0 else w.view(out_features, -1, GROUP)
    scale = groups.abs().mean(-1, keepdim=True)
    q = (groups / (scale + quantization.EPS)).round().clamp(-1, 1)
    return (q * scale).view(out_features, in_features).to(weight.dtype)


if __name__ == "__main__":
    quantization.dequantize_weights = dequantize_weights  # what fake_quantize_weights (training) computes
    sst2_probe.pack_bitnet = lambda model: model  # scored unpacked
    sst2_probe.SCORING = f"training model (absmean per {'row' if GROUP == 0 else f'group of {GROUP}'}), float32"
    sst2_probe.main()
