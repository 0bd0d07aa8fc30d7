"""Distillation from a trained teacher moves the student towards it; training resumes exactly from a checkpoint."""

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from bitnet_hf import BitDistillConfig, BitDistillTrainer, convert_to_bitnet
from tiny import tiny_model


def pattern_dataset(n, seed):
    """Sequences that follow a fixed rule (next = 5 * previous + 3 mod 250, shifted past special ids)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for start in torch.randint(3, 253, (n,), generator=g).tolist():
        ids = [start]
        for _ in range(15):
            ids.append((ids[-1] * 5 + 3) % 250 + 3)
        rows.append({"input_ids": ids})
    return Dataset.from_list(rows)


def trained_teacher():
    torch.manual_seed(0)
    teacher = tiny_model("llama", seed=1).train()
    data = torch.tensor(pattern_dataset(64, seed=5)["input_ids"])
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    for step in range(60):
        batch = data[(step * 8) % 64:(step * 8) % 64 + 8]
        loss = teacher(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 2.0  # the teacher has learned the rule (chance is ln 256 = 5.5)
    return teacher.eval()


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=40, learning_rate=3e-3,
                report_to=[], save_strategy="no", logging_steps=10, relation_heads=4, disable_tqdm=True,
                use_cpu=True, dataloader_pin_memory=False, per_device_eval_batch_size=16, seed=0)
    return BitDistillConfig(**{**base, **kw})


def test_distillation_moves_the_student_towards_the_teacher(tmp_path):
    teacher = trained_teacher()
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = convert_to_bitnet(tiny_model("llama", seed=0))
    trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=args(tmp_path),
                                train_dataset=pattern_dataset(160, seed=6), eval_dataset=pattern_dataset(16, seed=7))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    # Both distillation terms fall: the student's relation matrices and its output distribution near the teacher's.
    assert after["eval_logits_kd"] < 0.8 * before["eval_logits_kd"], (before, after)
    assert after["eval_attention_kd"] < 0.5 * before["eval_attention_kd"], (before, after)
    assert after["eval_ce"] < before["eval_ce"]
    assert all(torch.equal(before_teacher[k], v) for k, v in teacher.state_dict().items())


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    teacher = tiny_model("llama", seed=1)
    data = pattern_dataset(48, seed=8)
    kw = dict(max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1)

    full = convert_to_bitnet(tiny_model("llama", seed=0))
    BitDistillTrainer(model=full, teacher_model=teacher, args=args(tmp_path / "a", **kw), train_dataset=data).train()

    first = convert_to_bitnet(tiny_model("llama", seed=0))
    BitDistillTrainer(model=first, teacher_model=teacher, args=args(tmp_path / "b", **kw), train_dataset=data,
                      callbacks=[StopAt(3)]).train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file()
    resumed = convert_to_bitnet(tiny_model("llama", seed=0))
    trainer = BitDistillTrainer(model=resumed, teacher_model=teacher, args=args(tmp_path / "b", **kw),
                                train_dataset=data)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 6
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert not torch.equal(full.state_dict()["lm_head.weight"], tiny_model("llama", seed=0).lm_head.weight)
    with pytest.raises(AssertionError):  # and the comparison can fail: a run from scratch differs
        assert torch.equal(first.state_dict()["lm_head.weight"], full.state_dict()["lm_head.weight"])
