"""Stage 2 of the SST-2 recipe, measured fast: SmolLM2-135M-Instruct converted (SubLN ``paper``, gains calibrated on
32 SST-2 prompts, as the pipeline does), then continued pre-training on CNN/DailyMail articles with the given
stage-2 options; the model is saved at ``OUT/final`` for ``benchmarks/sst2_probe.py --student OUT/final``.

    python benchmarks/pretrain_probe.py --out runs/pt-kd-warm --warmup 0.5 --lam 1   # KD from the FP model
    python benchmarks/pretrain_probe.py --out runs/pt-paper                          # the paper's stage 2

Blocks of 256 tokens, 8 a step, 122,880 tokens by default (the budget of `benchmarks/sst2_smollm2.sh`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoTokenizer

from bitnet_hf import continue_pretraining, convert_to_bitnet
from bitnet_hf.data import load_text_dataset
from bitnet_hf.distill.trainer import load_for_training
from bitnet_hf.offline import smollm2
from bitnet_hf.pretrain import PretrainConfig
from bitnet_hf.tasks import get_task, train_eval_splits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--tokens", type=int, default=122_880)
    p.add_argument("--warmup", type=float, default=0, help="quantization_warmup_steps")
    p.add_argument("--lam", type=float, default=0, help="logits_distill_weight (teacher: the FP model)")
    p.add_argument("--lr", type=float, default=2e-4)
    a = p.parse_args()
    base = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(base)
    task = get_task("sst2")
    splits = train_eval_splits(task, data_dir=DATA / "sst2", train_size=2400, eval_size=872, seed=42)
    model = convert_to_bitnet(base, subln="paper", calibration_batches=task.prompt_inputs(splits.train, tokenizer, 32))
    config = PretrainConfig(output_dir=a.out, per_device_train_batch_size=8, learning_rate=a.lr,
                            lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=5, save_steps=20,
                            save_total_limit=1, bf16=True, use_cpu=True, seed=42, report_to="none",
                            logits_distill_weight=a.lam, quantization_warmup_steps=a.warmup)
    model.set_attn_implementation("eager")  # as load_for_training does for CPU training
    teacher = load_for_training(base, config) if a.lam > 0 else None
    corpus = load_text_dataset(DATA / "cnndm" / "train.jsonl")
    continue_pretraining(model, tokenizer, corpus, config, block_size=256, max_tokens=a.tokens, text_field="article",
                         teacher=teacher)


if __name__ == "__main__":
    main()
