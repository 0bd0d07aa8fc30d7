"""Run by tests/test_distributed.py under torchrun: a few distillation steps on every rank, then each rank writes
its final student weights and the logged losses to the folder given as argument."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from bitnet_hf import BitDistillConfig, BitDistillTrainer, convert_to_bitnet
from test_distill_trainer import token_dataset
from tiny import tiny_model


def run(out: Path, per_device_batch: int, steps: int = 3) -> BitDistillTrainer:
    """A trainer of the tiny student; trained for `steps` steps (0: built only, for its starting weights)."""
    teacher = tiny_model("llama", seed=1)
    student = convert_to_bitnet(tiny_model("llama", seed=0))
    args = BitDistillConfig(output_dir=str(out / "trainer"), per_device_train_batch_size=per_device_batch,
                            max_steps=max(steps, 1), optim="sgd", learning_rate=1e-4, max_grad_norm=0.0, logging_steps=1,
                            relation_heads=4, train_sampling_strategy="sequential", report_to=[],
                            save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False,
                            ddp_backend="gloo" if torch.distributed.is_torchelastic_launched() else None)
    trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=args,
                                train_dataset=token_dataset(n=12, completion=True))
    if steps:
        trainer.train()
    return trainer


if __name__ == "__main__":
    out = Path(sys.argv[1])
    trainer = run(out, per_device_batch=2)
    rank = trainer.args.process_index
    save_file({k: v.clone() for k, v in trainer.model.state_dict().items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(trainer.state.log_history))
