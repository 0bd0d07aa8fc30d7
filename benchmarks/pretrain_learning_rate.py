"""Continued pre-training (stage 2) at several learning rates: held-out LM loss of the converted SmolLM2-135M
student after the same token budget.

Input: a converted (stage 1) checkpoint, e.g. the SST-2 run's ``convert-paper``; corpus: CNN/DailyMail articles
(``../shared/data/cnndm``), training on train, loss on the first 16 validation articles (256 tokens each). Same
schedule as the pipeline's stage 2: cosine, 5% warm-up, blocks of 256, 8 blocks a step, bf16 autocast, seed 42.

    python benchmarks/pretrain_learning_rate.py CONVERTED [--learning-rates 2e-4 1e-3 3e-3] [--tokens 61440]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

import bitnet_hf
from bitnet_hf.data import load_text_dataset

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm"


def heldout_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return sum(model(ids[i:i + 4], labels=ids[i:i + 4]).loss.item() for i in range(0, len(ids), 4)) / (len(ids) / 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("converted", type=Path)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[2e-4, 1e-3, 3e-3])
    parser.add_argument("--tokens", type=int, default=61_440)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.converted)
    with (args.corpus / "validation.jsonl").open(encoding="utf-8") as f:
        texts = [json.loads(line)["article"] for _, line in zip(range(16), f)]
    ids = torch.stack([torch.tensor(tokenizer(t)["input_ids"][:256]) for t in texts])
    corpus = load_text_dataset(args.corpus / "train.jsonl")
    print(f"converted, before training: held-out LM loss {heldout_loss(AutoModelForCausalLM.from_pretrained(args.converted), ids):.3f}")
    print("| learning rate | held-out LM loss | minutes |\n|---|---|---|")
    for lr in args.learning_rates:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(args.converted)
        with tempfile.TemporaryDirectory() as out:
            targs = TrainingArguments(output_dir=out, per_device_train_batch_size=8, learning_rate=lr,
                                      lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5,
                                      save_strategy="no", bf16=True, use_cpu=not torch.cuda.is_available(), seed=42,
                                      report_to="none")
            bitnet_hf.continue_pretraining(model, tokenizer, corpus, targs, block_size=256, max_tokens=args.tokens,
                                           text_field="article")
        print(f"| {lr:g} | {heldout_loss(model, ids):.3f} | {(time.perf_counter() - start) / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
