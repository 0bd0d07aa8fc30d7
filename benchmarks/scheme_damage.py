"""Held-out LM loss of SmolLM2-135M-Instruct right after conversion, per weight scheme: absmean rounding, GPTQ
rounding (``bitnet_hf.gptq``) or AWQ channel scaling (``bitnet_hf.awq``), one scale per tensor, per row or per
group of 64 input columns. No training.

Each row converts the model with ``convert_to_bitnet`` (SubLN ``paper``, gains calibrated on the calibration text;
both quantizers on: the deployed BitNet forward) and scores it on the first articles of
``../shared/data/cnndm/validation.jsonl``, 256 tokens each. Calibration: the first CNN/DailyMail *training* articles
(--calibration, 256 tokens each), for the SubLN gains and GPTQ's and AWQ's statistics alike.

    python benchmarks/scheme_damage.py [--schemes absmean,gptq,awq] [--articles 8] [--calibration 64]
        [--output results.jsonl]
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

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm"
ROWS = [(scheme, scale, group) for scale, group in (("tensor", 0), ("row", 0), ("group", 64))
        for scheme in ("absmean", "gptq", "awq")]


def articles(path: Path, count: int, tokenizer) -> torch.Tensor:  # noqa: ANN001
    with path.open(encoding="utf-8") as f:
        texts = [json.loads(line)["article"] for _, line in zip(range(count), f)]
    return torch.stack([torch.tensor(tokenizer(t)["input_ids"][:256]) for t in texts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", default="absmean,gptq,awq", help="comma-separated weight schemes to convert with")
    parser.add_argument("--articles", type=int, default=8)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    path = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(path)
    held_out = articles(DATA / "validation.jsonl", args.articles, tokenizer)
    calibration = articles(DATA / "train.jsonl", args.calibration, tokenizer)
    batches = [{"input_ids": chunk} for chunk in calibration.split(8)]
    fp = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        fp_loss = fp(held_out, labels=held_out).loss.item()
    print(f"full precision: {fp_loss:.3f}\n\n| scheme | scale | held-out LM loss (nats/token) | conversion s |\n"
          "|---|---|---:|---:|", flush=True)
    for scheme, scale, group in [row for row in ROWS if row[0] in args.schemes.split(",")]:
        start = time.perf_counter()
        model = convert_to_bitnet(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                                  calibration_batches=batches, weight_scale=scale, group_size=group,
                                  weight_scheme=scheme).eval()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            loss = model(held_out, labels=held_out).loss.item()
        label = f"group of {group}" if scale == "group" else scale
        print(f"| {scheme} | {label} | {loss:.3f} | {seconds:.0f} |", flush=True)
        if args.output:
            with args.output.open("a") as f:
                f.write(json.dumps({"scheme": scheme, "scale": scale, "group_size": group, "loss": loss,
                                    "fp_loss": fp_loss, "seconds": seconds, "calibration_articles": args.calibration,
                                    "held_out_articles": args.articles}) + "\n")


if __name__ == "__main__":
    main()
