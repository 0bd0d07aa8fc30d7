"""The pipeline on a tiny model: every row trained, packed and evaluated; a rerun skips; bad input stops early."""

import json
import logging

import pytest
import transformers

import bitnet_hf.pipeline as pipeline_module
from bitnet_hf.cli import main
from bitnet_hf.demo import sentiment_reviews, stdlib_docstrings
from bitnet_hf.pipeline import ROWS, Pipeline, PipelineArguments, Row, results_markdown
from tiny import tiny_chat_tokenizer, tiny_model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    base = root / "base"
    tiny_model("llama").save_pretrained(base)
    tiny_chat_tokenizer().save_pretrained(base)
    data = root / "sst2"
    data.mkdir()
    rows = sentiment_reviews(40, seed=0)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["sentence"] for r in sentiment_reviews(200, seed=1)))
    return root


def arguments(root, out, **overrides):
    values = dict(base=str(root / "base"), task="sst2", output_dir=str(out), data_dir=str(root / "sst2"),
                  corpus=str(root / "corpus.txt"), eval_size=8, steps=2, batch_size=4, max_length=96,
                  pretrain_tokens=512, pretrain_block_size=64, pretrain_batch_size=4, calibration_samples=4,
                  save_steps=1, logging_steps=1, eval_batch_size=4, bf16=False)
    return PipelineArguments(**{**values, **overrides})


@pytest.fixture(scope="module")
def finished(workspace):
    out = workspace / "run"
    results = Pipeline(arguments(workspace, out), command=["bitnet-hf", "pipeline", "..."]).run()
    return out, results


def test_every_row_is_trained_packed_and_evaluated(finished):
    out, results = finished
    assert [r["method"] for r in results["rows"]] == ["FP16-SFT", "BitNet-SFT", "BitDistill"]
    fp, sft, distill = results["rows"]
    for row in results["rows"]:
        assert 0 <= row["metrics"]["accuracy"] <= 100 and row["examples"] == 8
        assert row["decode_tokens_per_second"] > 0
    assert sft["model"].endswith("bitnet_sft/packed") and distill["model"].endswith("bitdistill/packed")
    assert sft["size_bytes"] < fp["size_bytes"]  # ternary decoder weights, 2 bits each
    assert results["evaluation"] == "8 examples held out of train (seed 42)" and results["train_examples"] == 32
    # the rows were made as the table says: BitNet-SFT without SubLN, BitDistill with SubLN, pre-trained, distilled
    assert json.loads((out / "convert-none/config.json").read_text())["bitnet_subln"] == "none"
    assert json.loads((out / "convert-paper/config.json").read_text())["bitnet_subln"] == "paper"
    # a finished stage keeps final/ (with its training log) and drops the checkpoints that only served resuming
    assert not list(out.rglob("checkpoint-*")) and not list(out.rglob(".*.tmp"))
    pretrain_state = json.loads((out / "pretrain-paper/final/trainer_state.json").read_text())
    assert pretrain_state["global_step"] == 2  # 512 tokens / (64-token blocks x 4) = 2 steps
    distill_log = json.loads((out / "bitdistill/final/trainer_state.json").read_text())["log_history"]
    assert {"ce", "logits_kd", "attention_kd"} <= set(distill_log[0])
    sft_log = json.loads((out / "bitnet_sft/final/trainer_state.json").read_text())["log_history"]
    assert "logits_kd" not in sft_log[0] and "ce" in sft_log[0]
    distill_args = json.loads((out / "bitdistill/final/training_args.json").read_text())
    assert (distill_args["logits_distill_weight"], distill_args["attention_distill_weight"]) == (10.0, 1e5)


def test_results_files_hold_the_table_and_the_command(finished):
    out, results = finished
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["rows"] == results["rows"] and on_disk["seed"] == 42
    table = (out / "results.md").read_text()
    assert "| Method | Accuracy | Size (MiB) | Decode tok/s (CPU) | Weights |" in table
    for row in results["rows"]:
        assert f"| {row['method']} | {row['metrics']['accuracy']:.2f} | {row['size_bytes'] / 2**20:.1f} |" in table
    assert "bitnet-hf pipeline ..." in table
    assert results_markdown(results) == table
    assert "512 tokens of continued pre-training" in table  # the BitDistill row pretrains
    without = {**results, "rows": [r for r in results["rows"] if r["row"] != "bitdistill"]}
    assert "continued pre-training" not in results_markdown(without)  # no row that did: not mentioned


def test_packed_models_carry_their_recipe_for_the_model_card(finished):
    from bitnet_hf.hub import render_model_card

    out, _ = finished
    recipe = json.loads((out / "bitdistill/packed/bitnet_recipe.json").read_text())
    assert [s["name"] for s in recipe["stages"]] == ["convert (stage 1)", "continued pre-training (stage 2)",
                                                     "distillation fine-tuning (stage 3)"]
    assert [r["method"] for r in recipe["results"]] == ["FP16-SFT", "BitNet-SFT", "BitDistill"]
    sft = json.loads((out / "bitnet_sft/packed/bitnet_recipe.json").read_text())
    assert [s["name"] for s in sft["stages"]] == ["convert (stage 1)", "task fine-tuning"] and "teacher" not in sft
    card = str(render_model_card(out / "bitdistill/packed", repo_id="me/tiny-bitdistill"))
    assert "| BitDistill |" in card and "attention_distill_weight" in card


def test_a_rerun_skips_finished_stages(finished, workspace, caplog):
    out, results = finished
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    with caplog.at_level(logging.INFO, logger="bitnet_hf.pipeline"):
        again = Pipeline(arguments(workspace, out)).run()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps
    assert sum("exists, skipping" in r.message for r in caplog.records) == 9
    assert again["rows"] == results["rows"]


KILL_WHILE_SAVING = """
import os, signal, sys
from transformers import Trainer
save_rng_state = Trainer._save_rng_state
def kill_at_step_2(self, output_dir):  # weights and optimizer of checkpoint-2 are written, trainer_state.json is not
    if self.state.global_step == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)
Trainer._save_rng_state = kill_at_step_2
import bitnet_hf.pipeline as pipeline_module
from bitnet_hf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_while_saving_a_checkpoint_resumes_from_the_one_before(finished, workspace, tmp_path, caplog):
    """A real SIGKILL in the middle of the Trainer's checkpoint save: the rerun removes the half-written
    checkpoint-2, resumes from checkpoint-1 (no step redone), finishes, and drops the checkpoints."""
    import shutil
    import subprocess
    import sys

    done, _ = finished
    out = tmp_path / "run"
    shutil.copytree(done / "convert-none", out / "convert-none")  # the stage before, finished
    args = ["pipeline", "--base", str(workspace / "base"), "--task", "sst2", "--output-dir", str(out),
            "--data-dir", str(workspace / "sst2"), "--rows", "bitnet_sft", "--stages", "bitnet_sft", "--eval-size", "8",
            "--steps", "3", "--batch-size", "4", "--max-length", "96", "--save-steps", "1", "--bf16", "False"]
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_SAVING, *args], capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    broken = out / "bitnet_sft" / "checkpoint-2"
    assert (broken / "model.safetensors").is_file() and not (broken / "trainer_state.json").exists()
    assert (out / "bitnet_sft" / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (out / "bitnet_sft" / "final").exists()
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO, logger="transformers.trainer"):
            Pipeline(arguments(workspace, out, rows=["bitnet_sft"], stages=["bitnet_sft"], steps=3)).run()
    finally:
        transformers.logging.disable_propagation()
    assert any(f"{broken} was not saved whole" in r.getMessage() for r in caplog.records)
    assert any("Resuming training from checkpoint with epoch" in r.message and "global step 1" in r.message
               for r in caplog.records)  # resumed at step 1, no step redone
    final = out / "bitnet_sft" / "final"
    assert (final / "model.safetensors").is_file()
    assert json.loads((final / "trainer_state.json").read_text())["global_step"] == 3
    assert not list((out / "bitnet_sft").glob("checkpoint-*"))


def test_keep_checkpoints_keeps_the_last_resume_point(finished, workspace, tmp_path):
    done, _ = finished
    out = tmp_path / "run"
    import shutil

    shutil.copytree(done / "convert-none", out / "convert-none")
    Pipeline(arguments(workspace, out, rows=["bitnet_sft"], stages=["bitnet_sft"], keep_checkpoints=True)).run()
    assert sorted(p.name for p in (out / "bitnet_sft").iterdir()) == ["checkpoint-2", "final"]


def test_ablation_rows_are_defined_by_what_they_leave_out():
    assert ROWS["no_subln"].subln != "paper" and ROWS["no_subln"].pretrain
    assert not ROWS["no_pretrain"].pretrain and ROWS["no_pretrain"].distilled
    assert ROWS["logits_only"].logits and not ROWS["logits_only"].attention
    assert ROWS["attention_only"].attention and not ROWS["attention_only"].logits
    assert not ROWS["bitnet_sft"].distilled and ROWS["bitnet_sft"].subln == "none"


def test_rows_take_the_runs_distill_options_and_their_own(workspace, tmp_path):
    """One source: the pipeline's distillation options are BitDistillConfig's (names, defaults, checks); a lever
    row puts its own on top, the baselines train without teacher terms."""
    pipe = Pipeline(arguments(workspace, tmp_path, relation_kind="cosine", logits_distill_tokens="all"))
    paper = pipe.row_options(ROWS["bitdistill"])
    assert (paper["logits_distill_weight"], paper["attention_distill_weight"], paper["relation_kind"],
            paper["logits_distill_tokens"], paper["quantization_warmup_steps"]) == (10.0, 1e5, "cosine", "all", 0)
    assert pipe.row_options(ROWS["warmup"])["quantization_warmup_steps"] == pytest.approx(2 / 3)
    assert pipe.row_options(ROWS["logits_only"])["attention_distill_weight"] == 0.0
    assert pipe.row_options(ROWS["bitnet_sft"]) == {"logits_distill_weight": 0.0, "attention_distill_weight": 0.0}
    summarization = arguments(workspace, tmp_path, task="cnndm")
    assert (summarization.logits_distill_weight, summarization.attention_distill_weight) == (1.0, 1e3)
    with pytest.raises(ValueError, match="attention_distill_weight=-1.0 must be a finite number >= 0"):
        arguments(workspace, tmp_path, attention_distill_weight=-1.0)
    with pytest.raises(ValueError, match=r"\['warmup'\] are neither DistillOptions fields nor learning_rate"):
        Row("typo", options=(("warmup", 1),))
    with pytest.raises(ValueError, match=r"\['kd'\] are neither DistillOptions fields nor learning_rate"):
        Row("typo", pretrain_options=(("kd", 1),))
    fast = Row("fast", options=(("learning_rate", 1e-3),))  # a row may set its own learning rate
    assert pipe.row_options(fast)["learning_rate"] == 1e-3


def test_a_row_with_stage_2_options_pretrains_in_its_own_folder(workspace, tmp_path):
    """``pretrain_kd_warmup``: stage 2 distils from the FP base with the quantizers blended in, in a folder of its
    own (the paper's stage 2 of other rows stays as it is)."""
    out = tmp_path / "run"
    args = arguments(workspace, out, rows=["fp16_sft", "pretrain_kd_warmup"], stages=["convert", "pretrain"])
    Pipeline(args).run()
    assert not (out / "pretrain-paper").exists()
    state = json.loads((out / "pretrain-paper-pretrain_kd_warmup/final/trainer_state.json").read_text())
    assert all(e["logits_kd"] >= 0 and "logits_kd_weighted" in e for e in state["log_history"] if "loss" in e)
    options = json.loads((out / "pretrain-paper-pretrain_kd_warmup/final/training_args.json").read_text())
    assert (options["logits_distill_weight"], options["quantization_warmup_steps"]) == (1.0, 0.5)


def test_the_recipe_row_fine_tunes_the_converted_model_with_warm_up_and_logits_kd(workspace, tmp_path):
    out = tmp_path / "run"
    args = arguments(workspace, out, rows=["fp16_sft", "bitnet_sft", "recipe"], teacher_steps=1, steps=5,
                     stages=["teacher", "bitnet_sft", "convert", "pretrain", "distill"], bitnet_lr_decay=0.4)
    pipe = Pipeline(args)
    options = pipe.row_options(ROWS["recipe"])
    assert (options["logits_distill_weight"], options["attention_distill_weight"]) == (10.0, 0.0)
    assert (options["quantization_warmup_steps"], options["learning_rate"]) == (pytest.approx(2 / 3), 1e-3)
    assert "bitnet_lr_decay" not in options  # a schedule choice, not a BitDistillConfig field
    pipe.run()
    assert json.loads((out / "teacher/final/trainer_state.json").read_text())["global_step"] == 1
    log = json.loads((out / "recipe/final/trainer_state.json").read_text())
    assert log["global_step"] == 5 and "attention_kd" not in log["log_history"][0]
    assert all(e["logits_kd"] >= 0 for e in log["log_history"] if "loss" in e)
    options = json.loads((out / "recipe/final/training_args.json").read_text())
    assert options["quantization_warmup_steps"] == pytest.approx(2 / 3) and options["attention_distill_weight"] == 0
    assert options["learning_rate"] == 1e-3
    assert not list(out.glob("pretrain-*"))  # no stage 2
    # the row's own decay (the last fifth: 1 of 5 steps) over the run's --bitnet-lr-decay 0.4 (2 of 5)
    assert (options["lr_scheduler_type"], options["lr_scheduler_kwargs"]) == ("warmup_stable_decay",
                                                                              {"num_decay_steps": 1})
    sft = json.loads((out / "bitnet_sft/final/training_args.json").read_text())
    assert sft["lr_scheduler_kwargs"] == {"num_decay_steps": 2}  # a row without its own: the run's
    teacher = json.loads((out / "teacher/final/training_args.json").read_text())
    assert teacher["lr_scheduler_type"] == "cosine"  # the teacher keeps its schedule
    with pytest.raises(ValueError, match="--bitnet-lr-decay 0.0 must be in"):
        arguments(workspace, out, bitnet_lr_decay=0.0)


def test_a_reconstruct_row_reconstructs_the_converted_blocks_before_fine_tuning(workspace, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = arguments(workspace, out, rows=["fp16_sft", "recipe_reconstruct"], teacher_steps=1, steps=2,
                     reconstruct_steps=5, reconstruct_sequences=4, reconstruct_sequence_length=32)
    loaded = []
    load = pipeline_module.load_for_training
    monkeypatch.setattr(pipeline_module, "load_for_training", lambda path, *a, **k: loaded.append(path) or load(
        path, *a, **k))
    results = Pipeline(args).run()
    state = json.loads((out / "reconstruct-paper" / "reconstruction.json").read_text())
    assert len(state["blocks"]) == 2 and state["options"]["reconstruct_steps"] == 5
    assert all(b["error_after"] < b["error_before"] for b in state["blocks"])
    assert out / "reconstruct-paper" in loaded and out / "convert-paper" not in loaded  # the student fine-tuned
    assert [r["row"] for r in results["rows"]] == ["fp16_sft", "recipe_reconstruct"]
    recipe = json.loads((out / "recipe_reconstruct/packed/bitnet_recipe.json").read_text())
    assert recipe["stages"][1]["name"] == "block-wise reconstruction (stage 1b)"
    assert recipe["stages"][1]["hyperparameters"]["reconstruct_steps"] == 5
    assert "reconstruct-paper" in results["stage_seconds"] and not (out / "reconstruct-paper.partial").exists()
    with pytest.raises(ValueError, match=r"need --corpus \(the calibration text\) and --reconstruct-steps > 0"):
        arguments(workspace, tmp_path / "b", rows=["fp16_sft", "recipe_reconstruct"])


def test_bad_input_stops_before_training(workspace, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown task 'sst5'; known tasks: cnndm, mnli, qnli, sst2"):
        arguments(workspace, tmp_path / "a", task="sst5")
    with pytest.raises(ValueError, match="unknown rows"):
        arguments(workspace, tmp_path / "a", rows=["bitdistill", "nope"])
    with pytest.raises(ValueError, match="needs --corpus"):
        arguments(workspace, tmp_path / "a", corpus=None)
    with pytest.raises(ValueError, match="keep fp16_sft"):
        arguments(workspace, tmp_path / "a", rows=["bitdistill"])
    # a teacher whose tokenizer differs from the student's
    other = tmp_path / "other"
    tiny_model("llama").save_pretrained(other)
    tokenizer = tiny_chat_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ValueError, match="the teacher's tokenizer .* differs from the student's"):
        Pipeline(arguments(workspace, tmp_path / "b", teacher_base=str(other))).run()
    assert not (tmp_path / "b").exists()  # nothing written
    # the same tokenizer but an embedding of another size: found before the teacher stage, not at stage 3
    wider = tmp_path / "wider"
    tiny_model("llama", vocab_size=tiny_model("llama").config.vocab_size + 8).save_pretrained(wider)
    tiny_chat_tokenizer().save_pretrained(wider)
    with pytest.raises(ValueError, match="embedding rows"):
        Pipeline(arguments(workspace, tmp_path / "b", teacher_base=str(wider))).run()
    assert not (tmp_path / "b").exists()
    # through the command line: exit 2 and the message
    assert main(["pipeline", "--base", str(workspace / "base"), "--task", "sst2", "--output-dir", str(tmp_path / "c"),
                 "--data-dir", str(workspace / "sst2"), "--corpus", str(workspace / "corpus.txt"),
                 "--columns", "sentence=review"]) == 2
    assert "has no column 'review'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_demo_data_is_balanced_seeded_and_offline():
    rows = sentiment_reviews(100, seed=0)
    assert sum(r["label"] for r in rows) == 50 and rows == sentiment_reviews(100, seed=0)
    assert len({r["sentence"] for r in rows}) > 80
    assert rows != sentiment_reviews(100, seed=1)
    docs = stdlib_docstrings()
    assert len(docs) > 40 and sum(len(d["text"]) for d in docs) > 100_000


def test_evaluate_command_scores_a_checkpoint(workspace, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "validation.csv").write_text("review,stars\ngreat fun,1\nso dull,0\nfine film,1\n")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(workspace / "base"), "--task", "sst2", "--data-dir", str(data),
                 "--columns", "sentence=review", "label=stars", "--batch-size", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["examples"] == 3 and metrics["metrics"]["accuracy"] in (0, 100 / 3, 200 / 3, 100)
    assert f"sst2 (3 examples): accuracy {metrics['metrics']['accuracy']:.2f}" in printed
    assert main(["evaluate", "--model", str(workspace / "base"), "--task", "nope"]) == 2
    assert "known tasks: cnndm, mnli, qnli, sst2" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(workspace / "base"), "--task", "sst2", "--data-dir", str(data),
                 "--split", "test"]) == 2
    assert "has no test." in capsys.readouterr().err


def test_a_run_converts_with_its_weight_scheme_and_keeps_to_it(workspace, tmp_path):
    """``--weight-scale``: every BitNet row is converted with that scheme; an output directory holds one scheme,
    and a group size that does not divide the model's widths stops the run before any work."""
    out = tmp_path / "run"
    args = arguments(workspace, out, rows=["bitnet_sft"], stages=["bitnet_sft", "convert", "evaluate"], steps=1,
                     weight_scale="row")
    Pipeline(args).run()
    for stage in ("convert-none", "bitnet_sft/final", "bitnet_sft/packed"):
        assert json.loads((out / stage / "config.json").read_text())["bitnet_weight_scale"] == "row", stage
    with pytest.raises(ValueError, match="converted with scales per row .* use another --output-dir"):
        Pipeline(arguments(workspace, out, rows=["bitnet_sft"], weight_scale="group", group_size=32)).run()
    with pytest.raises(ValueError, match="group size 64 does not divide the input width 96 of down_proj"):
        Pipeline(arguments(workspace, tmp_path / "other", weight_scale="group", group_size=64)).run()
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="group size 48 must be a positive multiple of 32"):
        arguments(workspace, out, weight_scale="group", group_size=48)


def test_gptq_scheme_calibrates_on_task_prompts_and_checks_their_length_first(workspace, tmp_path):
    """``--weight-scheme gptq``: too few calibration tokens for the widest projection stop the run before any work,
    naming the --calibration-samples to ask for; with enough, BitNet-SFT's checkpoint records the scheme (its
    un-SubLN'd conversion calibrates too)."""
    wide = tmp_path / "wide"  # a 4096-wide FFN: more than one prompt's tokens
    tiny_model("llama", intermediate_size=4096).save_pretrained(wide)
    tiny_chat_tokenizer().save_pretrained(wide)
    with pytest.raises(ValueError, match=r"1 calibration prompts hold \d+ tokens; it needs at least 4096 .* "
                                         r"raise --calibration-samples to about \d+"):
        Pipeline(arguments(workspace, tmp_path / "few", base=str(wide), rows=["bitnet_sft"], weight_scheme="gptq",
                           calibration_samples=1)).run()
    assert not (tmp_path / "few").exists()
    out = tmp_path / "run"
    Pipeline(arguments(workspace, out, rows=["bitnet_sft"], stages=["bitnet_sft", "convert"], steps=1,
                       weight_scheme="gptq", calibration_samples=16)).run()
    assert json.loads((out / "convert-none" / "config.json").read_text())["bitnet_weight_scheme"] == "gptq"
    with pytest.raises(ValueError, match="converted with the gptq weight scheme, not absmean"):
        Pipeline(arguments(workspace, out, rows=["bitnet_sft"])).run()
