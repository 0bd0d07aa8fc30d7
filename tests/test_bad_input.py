"""Every bad input we found, through the command line as a user meets it (a subprocess per case): exit status 2, a
message that names the problem and the fix, no traceback, and nothing written. The README's reliability section
lists these cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitnet_hf import convert_to_bitnet, pack_bitnet, save_checkpoint
from tiny import tiny_chat_tokenizer, tiny_model


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitnet_hf.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Checkpoint folders, good and damaged, and data files."""
    root = tmp_path_factory.mktemp("bad")
    tokenizer = tiny_chat_tokenizer()
    fp = tiny_model("llama")
    fp.save_pretrained(root / "fp")
    tokenizer.save_pretrained(root / "fp")
    bitnet = convert_to_bitnet(fp)
    save_checkpoint(bitnet, root / "bitnet", tokenizer=tokenizer)
    save_checkpoint(pack_bitnet(bitnet), root / "packed", tokenizer=tokenizer)
    save_checkpoint(bitnet, root / "no_tokenizer")

    def damaged(name: str) -> Path:
        shutil.copytree(root / "bitnet", root / name)
        return root / name

    weights = damaged("truncated") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = json.loads((root / "bitnet" / "config.json").read_text())
    (damaged("no_model_type") / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                                      if k != "model_type"}))
    (damaged("wrong_type") / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "two"}))
    (damaged("more_layers") / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    (damaged("wrong_shape") / "config.json").write_text(json.dumps({**config, "intermediate_size": 2 * config[
        "intermediate_size"]}))
    other = tiny_model("llama", vocab_size=tiny_model("llama").config.vocab_size + 8)
    other.save_pretrained(root / "other_vocab")
    tokenizer.save_pretrained(root / "other_vocab")

    rows = [{"prompt": f"review {i}", "completion": "positive" if i % 2 else "negative"} for i in range(8)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "corpus.txt").write_text("some text to pre-train on\n" * 50)
    for name, lines in (("empty", []), ("null", [{"sentence": "fine", "label": 1}, {"sentence": None, "label": 0}])):
        (root / name).mkdir()
        (root / name / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (root / "a_file").write_text("not a folder")
    return root


def test_damaged_checkpoints_are_named_before_loading(ckpt, tmp_path):
    for command in (("pack", ckpt / "truncated", tmp_path / "out"), ("generate", ckpt / "truncated", "--prompt", "hi")):
        refused(cli(*command), "model.safetensors is not a readable safetensors file", "truncated or corrupt")
    refused(cli("pack", ckpt / "no_model_type", tmp_path / "out"), "has no model_type", "save_pretrained")
    refused(cli("pack", ckpt / "wrong_type", tmp_path / "out"), "is not a valid 'bitnet_llama' config",
            "num_hidden_layers")
    assert not (tmp_path / "out").exists()


def test_weights_that_disagree_with_the_config_are_an_error_not_random_layers(ckpt, tmp_path):
    refused(cli("pack", ckpt / "more_layers", tmp_path / "out"), "the weights do not match config.json",
            "missing model.layers.2.")
    refused(cli("generate", ckpt / "wrong_shape", "--prompt", "hi"), "the weights do not match config.json",
            "another shape")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_distill_and_pretrain_refuse_what_cannot_train(ckpt, tmp_path):
    distill = ("distill", "--train-file", ckpt / "train.jsonl", "--output-dir", tmp_path / "d", "--max-steps", "1")
    refused(cli(*distill, "--model", ckpt / "packed"), "packed deployment checkpoint", "training checkpoint")
    refused(cli(*distill, "--model", ckpt / "fp"), "full-precision checkpoint", "bitnet-hf convert")
    refused(cli("pretrain", "--model", ckpt / "packed", "--corpus", ckpt / "corpus.txt",
                "--output-dir", tmp_path / "p"), "packed deployment checkpoint")
    refused(cli(*distill, "--model", ckpt / "bitnet", "--teacher", ckpt / "other_vocab"),
            "embedding rows", "pick a teacher of the student's family")
    refused(cli(*distill[:-1], "0", "--model", ckpt / "bitnet"), "max_steps")
    assert not (tmp_path / "d").exists() and not (tmp_path / "p").exists()


def test_output_paths_are_checked_before_training(ckpt, tmp_path):
    refused(cli("distill", "--model", ckpt / "bitnet", "--train-file", ckpt / "train.jsonl",
                "--output-dir", ckpt / "a_file", "--max-steps", "1"), "is a file")
    refused(cli("pretrain", "--model", ckpt / "bitnet", "--corpus", ckpt / "corpus.txt",
                "--output-dir", ckpt / "a_file"), "is a file")
    taken = tmp_path / "taken"
    (taken / "final").mkdir(parents=True)
    shutil.copy(ckpt / "bitnet" / "config.json", taken / "final" / "config.json")
    refused(cli("distill", "--model", ckpt / "bitnet", "--train-file", ckpt / "train.jsonl", "--output-dir", taken,
                "--max-steps", "1"), "already holds a finished model", "--overwrite")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    refused(cli("convert", ckpt / "fp", tmp_path / "out"), "pass --overwrite")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; run as a user to test this")
def test_unwritable_output_folders_are_refused_before_work(ckpt, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(cli("convert", ckpt / "fp", locked / "out"), "cannot write in")
        refused(cli("distill", "--model", ckpt / "bitnet", "--train-file", ckpt / "train.jsonl",
                    "--output-dir", locked / "d", "--max-steps", "1"), "cannot write in")
        refused(cli("evaluate", "--model", ckpt / "bitnet", "--task", "sst2", "--data-dir", ckpt / "null",
                    "--output", locked / "m.json"), "cannot write in")
    finally:
        locked.chmod(0o700)


def test_unwritable_output_folders_are_refused_in_process(ckpt, tmp_path, monkeypatch, capsys):
    """The same check as above where the tests run as root (which writes anywhere): the write probe fails."""
    from bitnet_hf.cli import main

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "touch", refuse)
    assert main(["convert", str(ckpt / "fp"), str(tmp_path / "out")]) == 2
    assert "cannot write in" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["distill", "--model", str(ckpt / "bitnet"), "--train-file", str(ckpt / "train.jsonl"),
                 "--output-dir", str(tmp_path / "d"), "--max-steps", "1"]) == 2
    assert "--output-dir" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_evaluation_data_is_checked(ckpt):
    refused(cli("evaluate", "--model", ckpt / "bitnet", "--task", "sst2", "--data-dir", ckpt / "empty"), "is empty")
    refused(cli("evaluate", "--model", ckpt / "bitnet", "--task", "sst2", "--data-dir", ckpt / "null"),
            "row 1: column 'sentence' is None, not text")


def test_flag_checks_need_no_model(tmp_path):
    missing = tmp_path / "nothing-here"  # the flag is refused before the model is even looked for
    refused(cli("generate", missing, "--prompt", "hi", "--max-new-tokens", "0"), "--max-new-tokens (0) must be >= 1")
    refused(cli("evaluate", "--model", missing, "--task", "sst2", "--batch-size", "0"), "--batch-size (0)")
    refused(cli("evaluate", "--model", missing, "--task", "sst2", "--limit", "-5"), "--limit (-5)")
    refused(cli("convert", missing, tmp_path / "o", "--calibration-samples", "0"), "--calibration-samples (0)")


def test_generate_without_a_tokenizer(ckpt):
    refused(cli("generate", ckpt / "no_tokenizer", "--prompt", "hi"), "has no tokenizer", "tokenizer.save_pretrained")


def test_a_bad_flag_answers_without_importing_training(tmp_path):
    probe = ("import sys\nfrom bitnet_hf.cli import main\ntry:\n    main(['convert', '--bogus'])\n"
             "except SystemExit as e:\n    print(e.code, sorted(m for m in ('datasets', 'transformers.trainer') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.stdout.split("\n")[0] == "2 []", out.stdout + out.stderr[-2000:]


def test_boolean_labels_are_indices(tmp_path):
    from bitnet_hf.tasks import get_task

    (tmp_path / "validation.jsonl").write_text('{"sentence": "good", "label": true}\n'
                                               '{"sentence": "bad", "label": false}\n')
    task = get_task("sst2")
    data = task.load("validation", data_dir=tmp_path)
    assert [task.labels[task.label_index(e)] for e in data] == [task.labels[1], task.labels[0]]
