"""CNN/DailyMail summarization: score a model with ROUGE and BLEU, or distill a BitNet student first.

    python examples/summarize_cnndm.py --model smol-pt/final --data-dir ../shared/data/cnndm --limit 20
    python examples/summarize_cnndm.py --model smol-pt/final --teacher smol-cnndm-sft --data-dir ../shared/data/cnndm \
        --train-size 2000 --steps 150 --output-dir smol-cnndm-kd --limit 20

Without --teacher the model (BitNet or full precision) is only evaluated on --limit examples of the validation
split; with it the student is distilled first (summarization preset: lambda 1, gamma 1e3) and saved to
OUTPUT_DIR/final. Without --data-dir the data comes from the Hub (abisee/cnn_dailymail 3.0.0). Summaries are greedy.
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
    parser.add_argument("--model", required=True, help="model to evaluate, or the BitNet student to distill")
    parser.add_argument("--teacher", help="full-precision model fine-tuned on CNN/DM: distill before evaluating")
    parser.add_argument("--data-dir", help="folder with train.jsonl and validation.jsonl (default: the Hub)")
    parser.add_argument("--output-dir", help="where the distilled model goes (with --teacher)")
    parser.add_argument("--limit", type=int, default=20, help="evaluation examples")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="summary length limit")
    parser.add_argument("--train-size", type=int, default=2000, help="training examples")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--logging-steps", type=int, default=10, help="log the loss terms this often")
    parser.add_argument("--max-length", type=int, default=768, help="tokens per training example")
    args = parser.parse_args(argv)
    if args.teacher and not args.output_dir:
        parser.error("--teacher needs --output-dir")

    task = get_task("cnndm")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.teacher:
        splits = train_eval_splits(task, data_dir=args.data_dir, train_size=args.train_size, eval_size=args.limit)
        config = BitDistillConfig(
            output_dir=args.output_dir, distill_preset="summarization", max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, lr_scheduler_type="cosine",
            warmup_steps=0.05, logging_steps=args.logging_steps, save_strategy="no", report_to="none")
        teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype="auto")
        trainer = BitDistillTrainer(model=model, teacher_model=teacher, args=config, processing_class=tokenizer,
                                    train_dataset=task.tokenize(splits.train, tokenizer, args.max_length))
        trainer.train()
        trainer.save_state()  # OUTPUT_DIR/trainer_state.json: loss, ce, logits_kd, attention_kd
        final = save_trained_model(trainer, Path(args.output_dir) / "final")
        print(f"distilled for {trainer.state.global_step} steps; model: {final}")
        evaluation = splits.eval
    else:
        evaluation = task.load(task.eval_split, data_dir=args.data_dir)
        evaluation = evaluation.select(range(min(args.limit, len(evaluation))))

    result = evaluate_model(model, tokenizer, task, evaluation, batch_size=8, max_new_tokens=args.max_new_tokens,
                            progress=False)
    print(f"cnndm ({result.examples} examples): " + ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()))
    print(f"first summary: {result.predictions[0]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
