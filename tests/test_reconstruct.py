"""Block-wise reconstruction (``bitnet_hf.reconstruct``): it brings each block and the whole model closer to the
full-precision one, resumes to the same weights after an interruption, and refuses bad input before any work."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from tiny import save_tiny_checkpoint, tiny_model, tiny_tokenizer, tokens

import bitnet_hf.reconstruct as reconstruct_module
from bitnet_hf import convert_to_bitnet
from bitnet_hf.cli import main
from bitnet_hf.reconstruct import (
    STATE_FILE,
    ReconstructionOptions,
    calibration_sequences,
    reconstruct_blocks,
    resume_point,
)

OPTIONS = ReconstructionOptions(reconstruct_steps=60, reconstruct_batch_size=4, reconstruct_sequences=32,
                                reconstruct_sequence_length=32)
CALIBRATION = tokens(32, 32, seed=1)


def _pair(family: str):
    """The FP model and its conversion, SubLN gains calibrated (as a user converts)."""
    return tiny_model(family), convert_to_bitnet(tiny_model(family), subln="paper",
                                                 calibration_batches=[{"input_ids": CALIBRATION}])


@contextlib.contextmanager
def killed_at_block_1(monkeypatch):
    """Inside: the reconstruction stops (KeyboardInterrupt, which the block expects) when it reaches block 1."""
    train_block = reconstruct_module._train_block

    def train(index, *args, **kwargs):
        if index == 1:
            raise KeyboardInterrupt
        return train_block(index, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(reconstruct_module, "_train_block", train)
        yield


def _logits_kl(student, reference, ids) -> float:
    with torch.no_grad():
        s, r = student(input_ids=ids).logits.log_softmax(-1), reference(input_ids=ids).logits.log_softmax(-1)
    return torch.nn.functional.kl_div(s, r, log_target=True, reduction="batchmean").item()


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen2", "gemma3"])
def test_reconstruction_brings_every_block_and_the_model_closer(family):
    reference, student = _pair(family)
    held_out = tokens(8, 32, seed=7)
    embedding = student.get_input_embeddings().weight.detach().clone()
    before = _logits_kl(student, reference, held_out)
    results = reconstruct_blocks(student, reference, CALIBRATION, OPTIONS)
    assert [r.block for r in results] == list(range(student.config.num_hidden_layers))
    for r in results:  # on the calibration set, full-precision inputs (measured: 0.72 -> 0.22 at worst)
        assert r.error_after < 0.5 * r.error_before, r
    # Held-out tokens through the whole student (its own inputs): measured 0.63x (qwen3) to 0.05x (qwen2).
    after = _logits_kl(student, reference, held_out)
    assert after < 0.75 * before, (before, after)
    assert torch.equal(student.get_input_embeddings().weight, embedding)  # only the blocks train
    assert student.config.bitnet_quantize and not student.config.bitnet_packed


def test_an_interrupted_reconstruction_resumes_to_the_same_weights(tmp_path, monkeypatch):
    reference, student = _pair("llama")
    calibration = CALIBRATION[:8]
    options = ReconstructionOptions(reconstruct_steps=10, reconstruct_batch_size=2, reconstruct_sequences=8,
                                    reconstruct_sequence_length=32)
    _, uninterrupted = _pair("llama")
    reconstruct_blocks(uninterrupted, reference, calibration, options)

    with killed_at_block_1(monkeypatch):
        reconstruct_blocks(student, reference, calibration, options, checkpoint_dir=tmp_path / "ck")
    assert resume_point(tmp_path / "ck", options) == 1
    resumed = type(student).from_pretrained(tmp_path / "ck")
    results = reconstruct_blocks(resumed, reference, calibration, options, checkpoint_dir=tmp_path / "ck")
    assert len(results) == 2 and resume_point(tmp_path / "ck", options) == 2
    for (name, a), b in zip(resumed.state_dict().items(), uninterrupted.state_dict().values()):
        assert torch.equal(a, b), name
    other = ReconstructionOptions(reconstruct_steps=5, reconstruct_batch_size=2, reconstruct_sequences=8,
                                  reconstruct_sequence_length=32)  # a budget other than the saved one's
    with pytest.raises(ValueError, match="other options"):
        resume_point(tmp_path / "ck", other)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"reconstruct_steps": -1}, "reconstruct_steps=-1 must be >= 0"),
    ({"reconstruct_learning_rate": math.nan}, "finite number > 0"),
    ({"reconstruct_learning_rate": 0.0}, "finite number > 0"),
    ({"reconstruct_batch_size": 4, "reconstruct_sequences": 3}, "at least reconstruct_batch_size=4"),
    ({"reconstruct_sequence_length": 0}, "reconstruct_sequence_length=0 must be >= 1"),
])
def test_bad_options_fail_at_config_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReconstructionOptions(**kwargs)


def test_bad_models_and_data_fail_before_any_work():
    reference, student = _pair("llama")
    ids = CALIBRATION
    with pytest.raises(ValueError, match="the reference is a BitNet model"):
        reconstruct_blocks(student, student, ids, OPTIONS)
    with pytest.raises(ValueError, match="not a BitNet training model"):
        reconstruct_blocks(reference, reference, ids, OPTIONS)
    with pytest.raises(ValueError, match="is not the student's source"):
        reconstruct_blocks(student, tiny_model("llama", num_hidden_layers=3), ids, OPTIONS)
    with pytest.raises(ValueError, match="at least reconstruct_batch_size=4"):
        reconstruct_blocks(student, reference, ids[:3], OPTIONS)
    with pytest.raises(ValueError, match=r"needs reconstruct_sequences=32 \(1024 tokens"):
        calibration_sequences(["short text"], tiny_tokenizer(), OPTIONS)
    assert calibration_sequences(["x" * 1100], tiny_tokenizer(), OPTIONS).shape == (32, 32)


def test_cli_convert_reconstructs_and_records_it(tmp_path, capsys):
    src = save_tiny_checkpoint(tmp_path / "fp")
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(40)))
    flags = ["--calibration-data", str(data), "--reconstruct-steps", "10", "--reconstruct-sequences", "8",
             "--reconstruct-sequence-length", "32"]
    assert main(["convert", str(src), str(tmp_path / "few"), "--reconstruct-steps", "10",
                 "--calibration-data", str(tmp_path / "tiny.txt")]) == 2  # a missing file: nothing written
    (tmp_path / "tiny.txt").write_text("too short\n")
    assert main(["convert", str(src), str(tmp_path / "few"), *flags[2:], "--calibration-data",
                 str(tmp_path / "tiny.txt")]) == 2
    assert "reconstruct_sequences=8" in capsys.readouterr().err
    assert not (tmp_path / "few").exists() and not (tmp_path / "few.partial").exists()
    assert main(["convert", str(src), str(tmp_path / "out"), "--reconstruct-steps", "10"]) == 2
    assert "--reconstruct-steps needs --calibration-data" in capsys.readouterr().err

    assert main(["convert", str(src), str(tmp_path / "out"), *flags]) == 0
    assert "2 blocks reconstructed" in capsys.readouterr().out
    state = json.loads((tmp_path / "out" / STATE_FILE).read_text())
    assert state["options"]["reconstruct_steps"] == 10 and len(state["blocks"]) == 2
    assert all(b["error_after"] < b["error_before"] for b in state["blocks"])
    assert not (tmp_path / "out.partial").exists()


def test_cli_convert_resumes_an_interrupted_reconstruction(tmp_path, monkeypatch, capsys):
    src = save_tiny_checkpoint(tmp_path / "fp")
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(40)))
    argv = ["convert", str(src), str(tmp_path / "out"), "--calibration-data", str(data), "--reconstruct-steps", "5",
            "--reconstruct-sequences", "8", "--reconstruct-sequence-length", "32"]
    with killed_at_block_1(monkeypatch):
        main(argv)
    assert not (tmp_path / "out").exists()
    first = json.loads((tmp_path / "out.partial" / STATE_FILE).read_text())["blocks"]
    assert len(first) == 1
    assert main(argv) == 0
    blocks = json.loads((tmp_path / "out" / STATE_FILE).read_text())["blocks"]
    assert len(blocks) == 2 and blocks[0] == first[0]  # block 0 was not trained again
    assert not (tmp_path / "out.partial").exists()
