"""Latent weights for a GPTQ start that stay near the full-precision weights (probe).

``bitnet_hf.gptq`` rewrites each latent weight to ``Wq * s / f``: absmean rounding gives GPTQ's values back, but
every latent weight then sits far from a rounding boundary and a quantization warm-up blends from the ternary model,
not from the full-precision one. This probe instead moves each full-precision weight the least that makes it round
to GPTQ's value (into its rounding cell, ``margin`` inside), recomputes the scale and repeats until the absmean
rounding of the result is exactly GPTQ's values. It rewrites a GPTQ checkpoint's latents that way and saves it.

    python benchmarks/gptq_latent.py GPTQ_CHECKPOINT FP_CHECKPOINT OUT
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForCausalLM

import bitnet_hf  # noqa: F401 - registers the BitNet classes
from bitnet_hf import save_checkpoint
from bitnet_hf.models.layers import BitLinear


def project(weight: torch.Tensor, ternary: torch.Tensor, scheme, margin: float = 0.05, rounds: int = 50
            ) -> tuple[torch.Tensor, int]:
    """The latent nearest ``weight`` (cell by cell) whose absmean rounding under ``scheme`` is ``ternary``."""
    w = weight.float()
    q = ternary.float()
    _, scale = scheme.quantize(w)
    for k in range(rounds):
        s = scale.reshape(-1, 1) if scheme.scale != "tensor" else scale
        if scheme.scale == "group":
            s = scale.repeat_interleave(scheme.group_size, dim=1)
        low = torch.where(q > 0, (0.5 + margin) * s, torch.where(q < 0, torch.full_like(w, -1e9), -(0.5 - margin) * s))
        high = torch.where(q < 0, -(0.5 + margin) * s, torch.where(q > 0, torch.full_like(w, 1e9), (0.5 - margin) * s))
        latent = torch.minimum(torch.maximum(w, low), high).to(weight.dtype)
        got, scale = scheme.quantize(latent)
        if torch.equal(got, ternary):
            return latent, k + 1
    raise RuntimeError("projection did not converge")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("gptq")
    p.add_argument("fp")
    p.add_argument("out")
    p.add_argument("--margin", type=float, default=0.05)
    args = p.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.gptq, dtype=torch.float32)
    fp = AutoModelForCausalLM.from_pretrained(args.fp, dtype=torch.float32)
    fp_weights = dict(fp.named_parameters())
    stats = []
    for name, layer in model.named_modules():
        if not isinstance(layer, BitLinear):
            continue
        ternary, _ = layer.scheme.quantize(layer.weight.detach())
        original = fp_weights[f"{name}.weight"].detach()
        absmean, _ = layer.scheme.quantize(original)
        latent, rounds = project(original, ternary, layer.scheme, args.margin)
        with torch.no_grad():
            layer.weight.copy_(latent)
        stats.append({"name": name, "rounds": rounds, "changed": float((ternary != absmean).float().mean()),
                      "moved": float((latent - original).norm() / original.norm())})
    print(json.dumps({"layers": len(stats), "max_rounds": max(s["rounds"] for s in stats),
                      "changed_mean": sum(s["changed"] for s in stats) / len(stats),
                      "moved_mean": sum(s["moved"] for s in stats) / len(stats)}))
    save_checkpoint(model, args.out)


if __name__ == "__main__":
    main()
