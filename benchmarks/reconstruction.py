"""Block-wise reconstruction on SmolLM2-135M-Instruct: held-out LM loss of the converted model (SubLN ``paper``,
gains calibrated on the corpus) before and after ``bitnet_hf.reconstruct``, and the minutes it took.

Calibration: the first articles of ``../shared/data/cnndm/train.jsonl`` cut into 256-token sequences; held out:
the first 8 articles of ``validation.jsonl`` (256 tokens each, as ``benchmarks/quantization_damage.py``).

    python benchmarks/reconstruction.py --steps 100 --save runs/reconstructed [--record runs/reconstruction.jsonl]

``--save`` keeps the reconstructed training checkpoint (also the resume point: a rerun continues after the last
finished block), e.g. as ``benchmarks/sst2_probe.py --student``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bitnet_hf import convert_to_bitnet
from bitnet_hf.offline import smollm2
from bitnet_hf.reconstruct import (
    ReconstructionOptions,
    calibration_sequences,
    reconstruct_blocks,
    resume_point,
    summary,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm"


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return sum(model(input_ids=row[None], labels=row[None]).loss.item() for row in ids) / len(ids)


def articles(path: Path, n: int) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["article"] for _, line in zip(range(n), f)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="Adam steps per block")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=2, help="sequences per step")
    p.add_argument("--sequences", type=int, default=64, help="calibration sequences of 256 tokens")
    p.add_argument("--save", type=Path, help="keep the reconstructed checkpoint here (and resume from it)")
    p.add_argument("--record", type=Path, default=Path("runs/reconstruction.jsonl"))
    a = p.parse_args()
    options = ReconstructionOptions(reconstruct_steps=a.steps, reconstruct_learning_rate=a.lr,
                                    reconstruct_batch_size=a.batch, reconstruct_sequences=a.sequences)
    base = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(base)
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    held_out = torch.stack([torch.tensor(tokenizer(t)["input_ids"][:256]) for t in articles(
        DATA / "validation.jsonl", 8)])
    calibration = calibration_sequences(articles(DATA / "train.jsonl", 4 * a.sequences), tokenizer, options)
    resumed = a.save is not None and resume_point(a.save, options) > 0
    if resumed:
        student = AutoModelForCausalLM.from_pretrained(a.save, dtype=torch.float32)
    else:
        student = convert_to_bitnet(base, subln="paper", calibration_batches=[{"input_ids": calibration[:32]}])
    student.set_attn_implementation("eager")
    before = lm_loss(student.eval(), held_out)
    start = time.perf_counter()
    results = reconstruct_blocks(student, reference, calibration, options, checkpoint_dir=a.save, tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    after = lm_loss(student.eval(), held_out)
    fp = lm_loss(reference, held_out)
    print(summary(results))
    print(f"| model | held-out LM loss |\n|---|---:|\n| full precision | {fp:.3f} |\n"
          f"| {'resumed checkpoint' if resumed else 'converted'} | {before:.3f} |\n"
          f"| reconstructed, {a.steps} steps x {a.batch} x 256 tokens a block | {after:.3f} |")
    print(f"reconstruction: {seconds / 60:.1f} min")
    a.record.parent.mkdir(parents=True, exist_ok=True)
    with a.record.open("a") as f:
        f.write(json.dumps({"options": vars(options), "lm_loss": {"fp": fp, "before": before, "after": after},
                            "minutes": round(seconds / 60, 2), "blocks": [vars(r) for r in results]},
                           default=str) + "\n")


if __name__ == "__main__":
    main()
