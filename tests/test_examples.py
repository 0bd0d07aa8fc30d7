"""The scripts in examples/ run end to end on tiny models and tiny data (in process, through their ``main``)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
from tiny import kernel, tiny_model, tiny_tokenizer

from bitnet_hf import convert_to_bitnet, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# A chat template keeps the label words' first characters apart ("negative"/"positive" -> n/p); without one the
# task would put a space in front of each and every label word would start with the same token.
CHAT_TEMPLATE = ("<s>{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}; {% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")
SENTENCES = [("a fine, warm film", 1), ("dull and slow", 0), ("a joy to watch", 1), ("badly acted", 0)]
ARTICLES = [("the mayor opened a new park on monday.", "mayor opens park."),
            ("rain hit the city and roads were shut.", "rain shuts roads."),
            ("a local team won the cup after a long final.", "local team wins cup.")]


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A tiny full-precision Llama (the teacher) and its converted BitNet student, each with the tokenizer."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    teacher = tiny_model("llama", seed=1)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    student = save_checkpoint(convert_to_bitnet(tiny_model("llama")), root / "student", tokenizer=tokenizer)
    return {"teacher": root / "teacher", "student": student}


def log_history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def test_every_example_is_short():
    lengths = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "examples").glob("*.py")}
    assert {"convert_and_pack.py", "continued_pretraining.py", "distill_glue.py", "summarize_cnndm.py",
            "push_to_hub.py"} <= set(lengths)
    assert all(n < 80 for n in lengths.values()), lengths


def test_convert_and_pack(folders, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sst2.jsonl", [{"sentence": s, "label": y} for s, y in SENTENCES])
    with kernel("torch"):  # the packed model's plain path: no C++ kernel build in a unit test
        assert load_example("convert_and_pack").main([str(tmp_path / "out"), "--model", str(folders["teacher"]),
                                                      "--calibration-data", str(data), "--prompt", "hello"]) == 0
    for name in ("bitnet", "packed"):
        assert (tmp_path / "out" / name / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "packed" / "config.json").read_text())["bitnet_packed"] is True
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["bitnet", "packed"]


def test_continued_pretraining_runs_the_token_budget(folders, tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "corpus" / "docs.jsonl", [{"body": "the cat sat on the mat. " * 3}] * 4)
    out = tmp_path / "pt"
    assert load_example("continued_pretraining").main([
        "--model", str(folders["student"]), "--corpus", str(corpus.parent), "--text-field", "body",
        "--output-dir", str(out), "--block-size", "16", "--max-tokens", str(16 * 2 * 2), "--batch-size", "2"]) == 0
    assert "pre-trained for 2 steps" in capsys.readouterr().out  # 4 blocks of 16 tokens, 2 a step
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "tokenizer.json").is_file()
    assert json.loads((out / "final" / "config.json").read_text())["model_type"] == "bitnet_llama"


def test_distill_glue_trains_saves_and_reports_accuracy(folders, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sst2" / "train.jsonl", [{"sentence": s, "label": y} for s, y in SENTENCES * 3])
    out = tmp_path / "kd"
    assert load_example("distill_glue").main([
        "--task", "sst2", "--student", str(folders["student"]), "--teacher", str(folders["teacher"]),
        "--data-dir", str(data.parent), "--eval-size", "4", "--output-dir", str(out), "--steps", "2",
        "--batch-size", "2", "--max-length", "128", "--logging-steps", "1"]) == 0
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"sst2 accuracy: ([\d.]+)% on 4 examples \(4 examples held out of train", printed)[1])
    assert accuracy in (0.0, 25.0, 50.0, 75.0, 100.0)
    assert re.search(r"held-out: loss \S+, ce \S+, logits_kd \S+, attention_kd \S+", printed)
    train_logs = [e for e in log_history(out) if "loss" in e]
    assert len(train_logs) == 2 and all(e["logits_kd"] >= 0 and e["attention_kd"] >= 0 for e in train_logs)
    assert any("eval_attention_kd" in e for e in log_history(out))
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "training_args.json").is_file()
    args = json.loads((out / "final" / "training_args.json").read_text())
    assert (args["logits_distill_weight"], args["attention_distill_weight"]) == (10.0, 1e5)


def test_summarize_cnndm_evaluates_and_distills(folders, tmp_path, capsys):
    rows = [{"article": a, "highlights": h} for a, h in ARTICLES]
    data = write_jsonl(tmp_path / "cnndm" / "train.jsonl", rows * 2).parent
    write_jsonl(data / "validation.jsonl", rows)
    example = load_example("summarize_cnndm")
    common = ["--data-dir", str(data), "--limit", "2", "--max-new-tokens", "4"]

    assert example.main(["--model", str(folders["teacher"]), *common]) == 0
    metrics = dict(re.findall(r"(rouge1|rouge2|rougeL|rougeLsum|bleu) ([\d.]+)", capsys.readouterr().out))
    assert set(metrics) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"}
    assert all(0.0 <= float(v) <= 100.0 for v in metrics.values())

    out = tmp_path / "kd"
    assert example.main(["--model", str(folders["student"]), "--teacher", str(folders["teacher"]), *common,
                         "--output-dir", str(out), "--steps", "2", "--batch-size", "2", "--max-length", "128",
                         "--logging-steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "distilled for 2 steps" in printed and "cnndm (2 examples): rouge1 " in printed
    assert all("logits_kd" in e and "attention_kd" in e for e in log_history(out) if "loss" in e)
    args = json.loads((out / "final" / "training_args.json").read_text())
    assert (args["logits_distill_weight"], args["attention_distill_weight"]) == (1.0, 1e3)
