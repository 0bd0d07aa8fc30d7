"""BitDistill stage 3 on a GLUE task (SST-2, MNLI, QNLI) with a BitDistillTrainer you build yourself.

    python examples/distill_glue.py --task sst2 --student smol-pt/final --teacher run/teacher/final \
        --data-dir ../shared/data/sst2 --train-size 2000 --eval-size 200 --steps 150 --output-dir smol-sst2-kd

The student is a BitNet model (converted, then continued-pre-trained: examples/continued_pretraining.py); the
teacher is the full-precision model fine-tuned on the task (the paper's FP16-SFT), e.g. from `bitnet-hf pipeline
--base $SMOL --task sst2 --data-dir ../shared/data/sst2 --output-dir run --rows fp16_sft --stages teacher`.
Without --data-dir the task's GLUE data comes from the Hub; with it, DATA_DIR/train.jsonl (and validation.jsonl
when there, else --eval-size examples held out of train). Accuracy: the label word whose first token the model
scores highest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bitnet_hf import BitDistillConfig, BitDistillTrainer
from bitnet_hf.convert import save_trained_model
from bitnet_hf.evaluation import evaluate_model
from bitnet_hf.tasks import get_task, train_eval_splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sst2", choices=["sst2", "mnli", "qnli"])
    parser.add_argument("--student", required=True, help="BitNet checkpoint folder")
    parser.add_argument("--teacher", required=True, help="full-precision model fine-tuned on the task")
    parser.add_argument("--data-dir", help="folder with train.jsonl [validation.jsonl] (default: the Hub)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train-size", type=int, help="training examples (default: all)")
    parser.add_argument("--eval-size", type=int, help="evaluation examples (default: the whole split)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example")
    parser.add_argument("--relation-heads", type=int, default=32, help="must divide every Q/K/V width")
    parser.add_argument("--logging-steps", type=int, default=10, help="log the loss terms this often")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights)")
    args = parser.parse_args(argv)

    task = get_task(args.task)
    splits = train_eval_splits(task, data_dir=args.data_dir, train_size=args.train_size, eval_size=args.eval_size)
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype="auto")  # frozen by the trainer
    config = BitDistillConfig(
        output_dir=args.output_dir, distill_preset="classification",  # lambda 10, gamma 1e5: the paper's
        max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=0.05, relation_heads=args.relation_heads, bf16=args.bf16,
        logging_steps=args.logging_steps, save_strategy="no", report_to="none")
    trainer = BitDistillTrainer(
        model=student, teacher_model=teacher, args=config, processing_class=tokenizer,
        train_dataset=task.tokenize(splits.train, tokenizer, args.max_length),  # input_ids + completion_mask
        eval_dataset=task.tokenize(splits.eval, tokenizer, args.max_length))
    trainer.train()
    terms = trainer.evaluate()  # eval_loss, eval_ce, eval_logits_kd, eval_attention_kd
    trainer.save_state()  # OUTPUT_DIR/trainer_state.json: every logged term
    final = save_trained_model(trainer, Path(args.output_dir) / "final")
    print("held-out: " + ", ".join(f"{k} {terms[f'eval_{k}']:.4g}" for k in ("loss", "ce", "logits_kd", "attention_kd")))

    result = evaluate_model(student, tokenizer, task, splits.eval, batch_size=32, progress=False)
    print(f"{task.name} accuracy: {result.metrics['accuracy']:.2f}% on {result.examples} examples "
          f"({splits.eval_source}); model: {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
