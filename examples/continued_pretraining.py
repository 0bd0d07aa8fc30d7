"""BitDistill stage 2 from Python: continued pre-training of a converted BitNet model on a general text corpus.

    SMOL=$(python -m bitnet_hf.offline)          # SmolLM2-135M-Instruct's local folder (offline)
    bitnet-hf convert $SMOL smol-bitnet          # stage 1 (or examples/convert_and_pack.py)
    python examples/continued_pretraining.py --model smol-bitnet --corpus ../shared/data/cnndm/train.jsonl \
        --text-field article --max-tokens 1000000 --block-size 512 --output-dir smol-pt

--corpus is a text / JSONL / JSON / parquet / CSV file, a folder of them, or a Hub dataset name (the paper uses
FineWeb-Edu: --corpus HuggingFaceFW/fineweb-edu --dataset-config sample-10BT --streaming --max-tokens 10000000000).
Documents are joined with EOS and cut into --block-size blocks; the model is saved to OUTPUT_DIR/final.
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

import bitnet_hf
from bitnet_hf.data import load_text_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="BitNet checkpoint folder (from bitnet-hf convert)")
    parser.add_argument("--corpus", required=True, help="text/JSONL/JSON/parquet/CSV file, folder, or Hub dataset")
    parser.add_argument("--text-field", default="text", help="corpus column holding the text")
    parser.add_argument("--dataset-config", help="configuration of a Hub dataset")
    parser.add_argument("--streaming", action="store_true", help="read the corpus lazily (needs --max-tokens)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-tokens", type=int, help="token budget; sets the number of steps")
    parser.add_argument("--steps", type=int, default=-1, help="optimizer steps instead of --max-tokens")
    parser.add_argument("--block-size", type=int, default=512, help="tokens per training block")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per optimizer step")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every this many steps")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights)")
    args = parser.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)  # a bitnet_* checkpoint: the plugin's classes
    corpus = load_text_dataset(args.corpus, name=args.dataset_config, streaming=args.streaming)
    training = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=10,
        save_steps=args.save_steps, save_total_limit=1, bf16=args.bf16, report_to="none")
    trainer = bitnet_hf.continue_pretraining(model, tokenizer, corpus, training, block_size=args.block_size,
                                             max_tokens=args.max_tokens, text_field=args.text_field)
    trainer.save_state()  # OUTPUT_DIR/trainer_state.json: the loss curve
    summary = trainer.state.log_history[-1]  # the Trainer's closing entry
    print(f"pre-trained for {trainer.state.global_step} steps, mean loss {summary['train_loss']:.4f}; "
          f"model: {args.output_dir}/final")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
