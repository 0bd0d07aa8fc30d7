import json
import shutil
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

from bitnet_hf.cli import main
from tiny import tiny_model, tokens


@pytest.fixture
def fp_checkpoint(tmp_path):
    path = tmp_path / "fp"
    tiny_model("qwen3").save_pretrained(path)
    return path


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("convert", "pack", "generate"))


def test_every_command_has_help(capsys):
    """``bitnet-hf <command> --help`` answers for every command (a bare % in a help string used to crash argparse)."""
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    commands = listing[listing.index("{") + 1:listing.index("}")].split(",")
    assert {"convert", "pretrain", "distill", "pipeline", "evaluate", "bench"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0, command
        assert f"usage: bitnet-hf {command}" in capsys.readouterr().out, command


def test_console_script_is_installed():
    exe = shutil.which("bitnet-hf")
    assert exe is not None, "run `make install` (pip install -e .) to get the bitnet-hf command"
    done = subprocess.run([exe, "convert", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--subln" in done.stdout and "--calibration-data" in done.stdout


def test_convert_then_pack(fp_checkpoint, tmp_path, capsys):
    calibration = tmp_path / "texts.jsonl"
    calibration.write_text("\n".join(json.dumps({"sentence": "x" * n}) for n in range(1, 5)))
    # the tiny model has no tokenizer: calibration must say so, before writing anything
    assert main(["convert", str(fp_checkpoint), str(tmp_path / "bad"), "--calibration-data", str(calibration)]) == 2
    assert "has no tokenizer" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["convert", str(fp_checkpoint), str(tmp_path / "bad"), "--calibration-data", str(calibration),
                 "--calibration-samples", "0"]) == 2  # used to calibrate on 20 silently
    assert "--calibration-samples (0)" in capsys.readouterr().err and not (tmp_path / "bad").exists()

    assert main(["convert", str(fp_checkpoint), str(tmp_path / "bitnet"), "--subln", "all"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "bitnet")
    assert model.config.model_type == "bitnet_qwen3" and model.config.bitnet_subln == "all"
    assert main(["pack", str(tmp_path / "bitnet"), str(tmp_path / "packed")]) == 0
    out = capsys.readouterr().out
    assert "training checkpoint" in out and "deployment checkpoint" in out and "x smaller" in out
    packed = AutoModelForCausalLM.from_pretrained(tmp_path / "packed", dtype=torch.float32)
    assert packed.config.bitnet_packed
    with torch.no_grad():
        assert packed(tokens()).logits.isfinite().all()


def test_bad_input_fails_fast_with_a_clear_message(fp_checkpoint, tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("precious")
    assert main(["convert", str(fp_checkpoint), str(taken)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    assert main(["pack", str(fp_checkpoint), str(tmp_path / "p")]) == 2
    assert "convert it first" in capsys.readouterr().err

    assert main(["convert", str(fp_checkpoint), str(tmp_path / "b"), "--calibration-data", str(tmp_path / "no")]) == 2
    assert "does not exist" in capsys.readouterr().err

    gpt2 = tmp_path / "gpt2"
    from transformers import GPT2Config, GPT2LMHeadModel
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    assert main(["convert", str(gpt2), str(tmp_path / "g")]) == 2
    assert "model_type 'gpt2'" in capsys.readouterr().err


def test_bench_measures_every_variant_side_by_side(fp_checkpoint, tmp_path, capsys, caplog, monkeypatch):
    out = tmp_path / "result.md"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # slows decoding: said in the log and in the report
    variants = {"bf16", "packed", "packed+int4 head compiled", "packed (row scales)"}
    assert main(["bench", "--checkpoint", str(fp_checkpoint), "--prompt-tokens", "4", "--new-tokens", "3",
                 "--threads", "1", "--rounds", "2", "--variants", ",".join(variants), "--output", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["per_round"]) == variants and all(len(v) == 2 for v in result["per_round"].values())
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 for v in result["per_round"].values() for r in v)
    assert result["checkpoint_bytes"]["packed"] < result["checkpoint_bytes"]["bf16"]
    assert result["machine"]["omp_wait_policy"] == "PASSIVE" and "; OMP_WAIT_POLICY=PASSIVE." in out.read_text()
    assert "OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep" in caplog.text
    assert all(f["peak_rss_mib"] > 0 for f in result["final"].values())
    # a compiled variant: a first process compiled into the cache the measured one then started with
    assert set(result["first_compile"]) == {"packed+int4 head compiled"}
    assert result["first_compile"]["packed+int4 head compiled"]["model_rss_mib"] > 0
    assert result["load"]["packed+int4 head compiled"]["inductor_cache"] == {"hits": 1, "misses": 0}
    assert "as a server's first start does; that first process" in out.read_text()
    # row scales take the C++ kernel chosen here, like one scale per tensor
    from bitnet_hf.models.kernels import cpu_kernel
    assert result["load"]["packed (row scales)"]["kernel"] == result["load"]["packed"]["kernel"] == cpu_kernel()
    text = capsys.readouterr().out
    assert "| bf16 | torch (oneDNN) |" in text and "| packed |" in text and out.read_text().startswith(text.split("\n")[0])
    assert main(["bench", "--new-tokens", "1"]) == 2
    assert main(["bench", "--variants", "bf16,int2"]) == 2
    assert "unknown bench variant(s) ['int2']; choose from bf16, fp32" in capsys.readouterr().err


def test_calibration_texts_come_from_any_text_format(tmp_path):
    """``convert --calibration-data`` reads what the other commands read (text, JSONL, CSV, a folder), skips blank
    lines, stops at the sample count, and a missing column is named with the option that fixes it."""
    from bitnet_hf.cli import _read_texts

    (tmp_path / "a.txt").write_text("first line\n\n   \nsecond line\nthird line\n")
    assert _read_texts(tmp_path / "a.txt", "text", 2) == ["first line", "second line"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"sentence": s, "label": 1}) for s in ["one", "", "two", "three"]))
    assert _read_texts(rows, "sentence", 10) == ["one", "two", "three"]
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "part.csv").write_text("sentence,label\nfrom csv,0\nagain,1\n")
    assert _read_texts(tmp_path / "csv", "sentence", 10) == ["from csv", "again"]
    with pytest.raises(ValueError, match=r"no column 'text' \(columns: sentence, label\).*--\*-field"):
        _read_texts(rows, "text", 10)


def test_bench_report_compares_compiled_variants_with_compiled_bf16():
    """A compiled variant's fair baseline is bf16 compiled the same way: the report gives the median [min-max] of
    its per-round ratios to it, beside the ratios to eager bf16 in the table."""
    from bitnet_hf.bench import report

    def rounds(*decode: float) -> list[dict]:
        return [{"decode_tok_s": d, "prefill_tok_s": 100.0} for d in decode]

    names = ["bf16", "bf16 compiled", "packed+int4 head compiled"]
    result = {"subject": "s", "prompt_tokens": 4, "new_tokens": 4, "threads": 2, "rounds": 3,
              "per_round": dict(zip(names, [rounds(10, 10, 10), rounds(12, 14, 10), rounds(60, 56, 60)])),
              "final": {n: {"peak_rss_mib": 1.0, "model_rss_mib": 1.0} for n in names},
              "load": {n: {"kernel": "k"} for n in names}, "checkpoint_bytes": {n: 2**20 for n in names},
              "machine": {"cpu": "c", "logical_cpus": 2, "memory_gib": 1, "isa": [], "python": "3", "torch": "t",
                          "transformers": "t", "load_average_at_start": 0.0, "load_average_at_end": 0.0}}
    text = report(result)
    assert "| packed+int4 head compiled | k | 60.0 | 6.00 [5.60-6.00] |" in text  # against eager bf16
    # per round 60/12, 56/14, 60/10: median 5.00, range 4.00-6.00
    assert ("Against bf16 compiled (median [min-max] of per-round ratios): packed+int4 head compiled decode "
            "5.00 [4.00-6.00], prefill 1.00 [1.00-1.00].") in text
    del result["per_round"]["bf16 compiled"]
    assert "Against bf16 compiled" not in report(result)
