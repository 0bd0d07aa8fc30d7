"""Seconds per BitNet training step on SmolLM2-135M (an SST-2 batch of 16 prompt/answer pairs, bf16 autocast,
fused AdamW as the Trainer uses), for ways of running the same math, timed in turn in one process.

    python benchmarks/train_step.py [--rounds 3] [--batch 16]

Variants: the attention implementation the model loads with (sdpa: PyTorch's CPU flash kernel; eager: plain
matmuls and softmax), and whether the head computes logits at every position or only where a label is predicted
(``logits_to_keep``, what ``BitDistillTrainer`` does unless logits KD covers every token); each prints its median
seconds per step and its ratio to the first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from bitnet_hf import convert_to_bitnet
from bitnet_hf.data import CompletionCollator
from bitnet_hf.offline import smollm2
from bitnet_hf.tasks import get_task, train_eval_splits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    base = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(base)
    task = get_task("sst2")
    splits = train_eval_splits(task, data_dir=DATA, train_size=args.batch, eval_size=872, seed=42)
    examples = task.tokenize(splits.train, tokenizer, 256)
    batch = CompletionCollator(tokenizer.pad_token_id, completion_only=True)([examples[i] for i in range(args.batch)])
    print(f"batch: {args.batch} examples, {int(batch['attention_mask'].sum())} tokens")

    models = {}
    for attention, keep in (("sdpa", False), ("eager", False), ("eager", True)):
        model = convert_to_bitnet(base).train()
        model.config._attn_implementation = attention
        models[f"{attention}{', label positions' if keep else ''}"] = (
            model, torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True), keep)

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, keep: bool) -> float:
        start = time.perf_counter()
        target = batch["labels"][:, 1:]
        counted = target.ne(-100)
        positions = counted.any(0).nonzero().squeeze(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        **({"logits_to_keep": positions} if keep else {}))
        logits = out.logits if keep else out.logits[:, :-1]
        if keep:
            target, counted = target[:, positions], counted[:, positions]
        torch.nn.functional.cross_entropy(logits[counted].float(), target[counted]).backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in models}
    for name, spec in models.items():
        step(*spec)  # warm-up
    for _ in range(args.rounds):
        for name, spec in models.items():
            times[name].append(step(*spec))
    first = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:24s} {median:6.2f} s/step  x{median / first:.2f}  [{min(values):.2f}-{max(values):.2f}]")


if __name__ == "__main__":
    main()
