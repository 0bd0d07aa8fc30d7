"""Continued pre-training: corpus loading, packing into blocks, the token budget, and the CLI."""

import json

import pytest
from datasets import Dataset, IterableDataset
from transformers import TrainingArguments

from bitnet_hf import continue_pretraining, convert_to_bitnet, save_checkpoint
from bitnet_hf.cli import main
from bitnet_hf.data import load_text_dataset, pack_corpus, tokenize_prompt_completion
from tiny import tiny_model, tiny_tokenizer

DOCS = ["the cat sat on the mat.", "a dog ran far away!", "", "birds sing in the morning light."]


def test_load_text_dataset_reads_every_local_kind(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(DOCS[:2]) + "\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    Dataset.from_dict({"text": DOCS}).to_parquet(str(tmp_path / "c.parquet"))
    assert load_text_dataset(tmp_path / "a.txt")["text"] == DOCS[:2]
    assert load_text_dataset(tmp_path / "b.jsonl")["text"] == DOCS
    assert load_text_dataset(tmp_path / "c.parquet")["text"] == DOCS
    streamed = load_text_dataset(tmp_path / "b.jsonl", streaming=True)
    assert isinstance(streamed, IterableDataset) and [r["text"] for r in streamed] == DOCS
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "1.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    (tmp_path / "d" / "2.jsonl").write_text(json.dumps({"text": "y"}) + "\n")
    assert sorted(load_text_dataset(tmp_path / "d")["text"]) == ["x", "y"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="mixes file kinds"):
        load_text_dataset(tmp_path)


def test_pack_corpus_makes_full_blocks_of_the_joined_documents():
    tokenizer = tiny_tokenizer()
    corpus = Dataset.from_dict({"text": DOCS})
    packed = pack_corpus(corpus, tokenizer, block_size=8)
    stream = sum((tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                  for d in DOCS if d), [])
    assert len(packed) == len(stream) // 8
    assert sum(packed["input_ids"], []) == stream[:len(packed) * 8]
    assert packed["labels"] == packed["input_ids"]
    assert len(pack_corpus(corpus, tokenizer, block_size=8, max_blocks=3)) == 3
    streamed = pack_corpus(corpus.to_iterable_dataset(), tokenizer, block_size=8, max_blocks=3)
    assert [r["input_ids"] for r in streamed] == packed["input_ids"][:3]
    with pytest.raises(ValueError, match="no column 'body'"):
        pack_corpus(corpus, tokenizer, 8, text_field="body")


def test_prompt_completion_tokenization_keeps_the_answer():
    tokenizer = tiny_tokenizer()
    data = Dataset.from_dict({"prompt": ["abc", "a long prompt here"], "completion": ["xy", "z"]})
    out = tokenize_prompt_completion(data, tokenizer, max_length=8)
    eos = tokenizer.eos_token_id
    first = out[0]
    assert first["input_ids"] == tokenizer("abc")["input_ids"] + tokenizer("xy")["input_ids"] + [eos]
    assert first["completion_mask"] == [0, 0, 0, 1, 1, 1]
    second = out[1]  # 18 + 2 tokens > 8: the prompt is cut at its end, the answer and EOS stay
    assert len(second["input_ids"]) == 8 and second["input_ids"][-2:] == tokenizer("z")["input_ids"] + [eos]
    assert second["completion_mask"] == [0] * 6 + [1, 1]


def _tiny_bitnet_folder(tmp_path):
    path = save_checkpoint(convert_to_bitnet(tiny_model("llama")), tmp_path / "student", tokenizer=tiny_tokenizer())
    return path


def _training_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "pt"), per_device_train_batch_size=2, learning_rate=3e-3, report_to=[],
                save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False)
    return TrainingArguments(**{**base, **kw})


def test_continue_pretraining_learns_within_the_token_budget(tmp_path):
    tokenizer = tiny_tokenizer()
    corpus = Dataset.from_dict({"text": ["abcdefgh" * 6] * 20})
    model = convert_to_bitnet(tiny_model("llama"))
    trainer = continue_pretraining(model, tokenizer, corpus, _training_args(tmp_path, learning_rate=1e-2),
                                   block_size=16, max_tokens=16 * 2 * 20 + 5)
    assert trainer.state.global_step == 20  # 40 blocks in the budget, 2 a step
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < 0.6 * losses[0]  # a repetitive corpus is learned
    final = tmp_path / "pt" / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert not (final / "training_args.bin").exists() and (final / "training_args.json").is_file()


def test_continue_pretraining_with_logits_kd_and_warmup(tmp_path):
    """Stage 2 with a BitDistillConfig: CE and logits KD from the FP teacher over every token of the blocks, the
    quantizers blended in over the first steps; plain TrainingArguments refuse a teacher."""
    from bitnet_hf import BitLinear
    from bitnet_hf.pretrain import PretrainConfig

    tokenizer = tiny_tokenizer()
    corpus = Dataset.from_dict({"text": ["abcdefgh" * 6] * 20})
    teacher = tiny_model("llama")
    model = convert_to_bitnet(tiny_model("llama"), subln="none")
    config = PretrainConfig(output_dir=str(tmp_path / "pt"), per_device_train_batch_size=2, learning_rate=3e-3,
                            report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True,
                            dataloader_pin_memory=False, logits_distill_weight=1.0, quantization_warmup_steps=2)
    assert PretrainConfig(output_dir=str(tmp_path)).attention_distill_weight == 0.0
    trainer = continue_pretraining(model, tokenizer, corpus, config, block_size=16, max_tokens=16 * 2 * 4,
                                   teacher=teacher)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 4 and all("logits_kd" in e for e in logs)
    assert trainer.args.loss_tokens == "all"
    # at step 0 the student (no SubLN) is its unquantized self, the teacher's own weights: logits KD starts at 0
    assert logs[0]["logits_kd"] < 1e-3 < logs[-1]["logits_kd"]
    assert {m.quantization_strength for m in model.modules() if isinstance(m, BitLinear)} == {1.0}
    with pytest.raises(ValueError, match="a teacher needs args=PretrainConfig"):
        continue_pretraining(model, tokenizer, corpus, _training_args(tmp_path), block_size=16, max_tokens=64,
                             teacher=teacher)


def test_continue_pretraining_streaming_and_bad_input(tmp_path):
    tokenizer = tiny_tokenizer()
    corpus = Dataset.from_dict({"text": ["abcdefgh" * 6] * 20}).to_iterable_dataset()
    model = convert_to_bitnet(tiny_model("llama"))
    with pytest.raises(ValueError, match="streaming corpus has no length: give max_tokens or max_steps"):
        continue_pretraining(model, tokenizer, corpus, _training_args(tmp_path), block_size=16)
    with pytest.raises(ValueError, match="not both"):
        continue_pretraining(model, tokenizer, corpus, _training_args(tmp_path, max_steps=3), block_size=16,
                             max_tokens=100)
    with pytest.raises(ValueError, match="longer than the model's max_position_embeddings=128"):
        continue_pretraining(model, tokenizer, corpus, _training_args(tmp_path), block_size=512, max_tokens=10**4)
    with pytest.raises(ValueError, match="not one block"):
        continue_pretraining(model, tokenizer, Dataset.from_dict({"text": ["ab"]}), _training_args(tmp_path),
                             block_size=16)
    trainer = continue_pretraining(model, tokenizer, corpus, _training_args(tmp_path), block_size=16, max_tokens=96)
    assert trainer.state.global_step == 3


def test_pretrain_cli_resumes_from_its_checkpoint(tmp_path, capsys):
    student = _tiny_bitnet_folder(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["abcdefgh" * 6] * 20) + "\n")
    common = ["--model", str(student), "--corpus", str(corpus), "--block-size", "16", "--output-dir",
              str(tmp_path / "pt"), "--per-device-train-batch-size", "2", "--report-to", "none", "--use-cpu",
              "--save-steps", "2", "--dataloader-pin-memory", "false"]
    assert main(["pretrain", *common, "--max-steps", "2"]) == 0
    assert "pre-trained for 2 steps" in capsys.readouterr().out
    assert main(["pretrain", *common, "--max-steps", "4", "--resume-from-checkpoint",
                 str(tmp_path / "pt" / "checkpoint-2")]) == 0
    out = capsys.readouterr().out
    assert "pre-trained for 4 steps" in out and str(tmp_path / "pt" / "final") in out
    assert main(["pretrain", *common, "--corpus", str(tmp_path / "nothing.txt"), "--overwrite"]) == 2
    assert "nothing.txt does not exist" in capsys.readouterr().err


def test_distill_cli_from_yaml_and_with_bad_columns(tmp_path, capsys):
    student = _tiny_bitnet_folder(tmp_path)
    teacher = tiny_model("llama", seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i} is it?", "answer": " yes" if i % 2 else " no"}) + "\n"
                            for i in range(8)))
    config = tmp_path / "distill.yaml"
    config.write_text("\n".join([
        f"model: {student}", f"teacher: {tmp_path / 'teacher'}", f"train_file: {data}", "prompt_field: question",
        "completion_field: answer", f"output_dir: {tmp_path / 'd'}", "max_steps: 2", "per_device_train_batch_size: 4",
        "relation_heads: 4", "report_to: none", "use_cpu: true", "save_strategy: 'no'", "logging_steps: 1",
        "dataloader_pin_memory: false"]) + "\n")
    assert main(["distill", str(config)]) == 0
    out = capsys.readouterr().out
    assert "distilled for 2 steps" in out and "attention_kd" in out
    assert (tmp_path / "d" / "final" / "model.safetensors").is_file()
    assert main(["distill", "--model", str(student), "--train-file", str(data), "--output-dir", str(tmp_path / "e"),
                 "--teacher", str(tmp_path / "teacher"), "--report-to", "none"]) == 2
    err = capsys.readouterr().err
    assert "has no column 'prompt', 'completion'" in err and "question, answer" in err
    assert main(["distill", "--model", str(student), "--train-file", str(data), "--output-dir", str(tmp_path / "e"),
                 "--prompt-field", "question", "--completion-field", "answer", "--report-to", "none"]) == 2
    assert "need a teacher_model" in capsys.readouterr().err

