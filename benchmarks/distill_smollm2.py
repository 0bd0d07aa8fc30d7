"""BitDistill stage 3 on a real model, briefly: SmolLM2-135M-Instruct (FP) teaches its own BitNet conversion on
SST-2 prompt/answer pairs. Prints the held-out CE and both distillation terms before and after, and seconds a step.

The teacher here is the instruct model itself, not yet fine-tuned on SST-2 (stage 0 comes with the pipeline), and
there is no continued pre-training: this checks that the trainer moves a real student towards its teacher on CPU.

    python benchmarks/distill_smollm2.py [--steps 40] [--batch 8] [--data ../shared/data/sst2/train.jsonl]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from bitnet_hf import BitDistillConfig, BitDistillTrainer, convert_to_bitnet
from bitnet_hf.distill import attention_relation_distillation
from bitnet_hf.offline import smollm2


def examples(path: Path, start: int, count: int) -> Dataset:
    rows = []
    with path.open() as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            if len(rows) == count:
                break
            row = json.loads(line)
            rows.append({"prompt": f"Review: {row['sentence'].strip()}\nSentiment:",
                         "completion": " positive" if row["label"] == 1 else " negative"})
    return Dataset.from_list(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="0: only the relation-KD scale of both kinds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "../shared/data/sst2/train.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)
    path = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    calibration = [dict(tokenizer(r["prompt"], return_tensors="pt")) for r in examples(args.data, 0, 32)]
    student = convert_to_bitnet(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                                calibration_batches=calibration)
    with tempfile.TemporaryDirectory() as out:
        config = BitDistillConfig(output_dir=out, distill_preset="classification", max_steps=max(1, args.steps),
                                  per_device_train_batch_size=args.batch, per_device_eval_batch_size=16,
                                  learning_rate=args.lr, warmup_steps=args.steps // 10, logging_steps=10,
                                  report_to=[], save_strategy="no", use_cpu=True, dataloader_pin_memory=False,
                                  disable_tqdm=True, max_length=128)
        trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=config,
                                    train_dataset=examples(args.data, 1000, max(1, args.steps) * args.batch),
                                    eval_dataset=examples(args.data, 100, 64), processing_class=tokenizer)
        layers = trainer._captures[0].layer, trainer._captures[1].layer
        batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(16)])
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad(), trainer._captures[0], trainer._captures[1]:
            student(**inputs), teacher(**inputs)
        states = trainer._captures[0].pop(), trainer._captures[1].pop()
        for kind in ("scaled_dot", "cosine"):
            value = attention_relation_distillation(*states, batch["attention_mask"].bool(), kind=kind).item()
            print(f"relation KD before training, {kind:10}: {value:.3e} (x gamma 1e5 = {value * 1e5:.3g})")
        if args.steps == 0:
            return
        before = trainer.evaluate()
        start = time.perf_counter()
        trainer.train()
        seconds = (time.perf_counter() - start) / args.steps
        after = trainer.evaluate()
    print(f"SmolLM2-135M-Instruct, {args.steps} steps of {args.batch} SST-2 examples, lr {args.lr}, "
          f"lambda 10, gamma 1e5, relation layer {layers[0]} of 30, {seconds:.2f} s/step on CPU")
    print(f"{'held-out (64)':14} {'before':>10} {'after':>10}")
    for key in ("eval_ce", "eval_logits_kd", "eval_attention_kd"):
        print(f"{key[5:]:14} {before[key]:10.4f} {after[key]:10.4f}")


if __name__ == "__main__":
    main()
