"""The SST-2 lever probes as one Markdown table: ``benchmarks/results/sst2-levers.jsonl`` (what
``benchmarks/sst2_probe.py --record`` appends, plus an optional ``student_note`` describing a ``--student``
checkpoint) -> ``benchmarks/results/sst2-levers.md``.

    python benchmarks/levers_table.py [--record FILE] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def row(record: dict) -> str:
    a, accuracy = record["args"], record["metrics"]["accuracy"]
    converted = f"converted{' from the FP16-SFT teacher' if a.get('base') else ''}, SubLN {a.get('subln', 'paper')}"
    scheme, scale = a.get("scheme", "absmean"), a.get("scale", "tensor")
    if (scheme, scale) != ("absmean", "tensor"):
        per = f"per group of {a['group_size']}" if scale == "group" else f"per {scale}"
        converted += f"; {scheme} {per} ({a.get('calibration', 32)} prompts)"
    start = "FP model" if a.get("fp") else record.get("student_note") or (
        a.get("student") and _student(a["student"])) or converted
    warmup = a.get("warmup") or 0
    warmup = f"{warmup:g} steps" if warmup >= 1 else (f"{warmup:.2f} of the steps" if warmup else "-")
    if a.get("warmup") and a.get("warmup_shape", "linear") != "linear":
        warmup += f", {a['warmup_shape']}"
    lam = a.get("lam") or 0
    logits = f"{lam:g}, {'all tokens' if a.get('kd_tokens') == 'all' else 'answer'}" if lam else "-"
    if lam and a.get("temperature", 5.0) != 5.0:
        logits += f", T={a['temperature']:g}"
    gamma = a.get("gamma") or 0
    relation = f"{gamma:g}, {a.get('kind', 'scaled_dot')}" if gamma else "-"
    hidden = f"{a['hidden']:g}" if a.get("hidden") else "-"
    schedule = a.get("scheduler", "cosine")
    if schedule == "warmup_stable_decay":
        schedule = f"constant, decay over the last {a['decay_steps']} steps"
    if a.get("fp_lr_ratio", 1.0) != 1.0:
        schedule += f"; full-precision parameters at {a['fp_lr_ratio']:g}x"
    if record.get("variant") and not record.get("scoring", "").startswith("training model"):
        schedule += f"; {record['variant']}"  # a wrapper script's change (benchmarks/*_probe.py)
    if record.get("scoring", "").startswith("training model"):  # scored unpacked: another weight scale
        start += f"; {record['scoring'].split('(')[1].split(')')[0]}"
        in_training, deployed = f"{accuracy:.2f} (float32)", "-"
    elif "scoring" in record:  # scored deployed, in float32, by the probe itself
        in_training, deployed = "-", f"**{accuracy:.2f}**"
    else:  # scored as the model was at the end of training, with the scoring of the time (SDPA, shifted positions)
        in_training = f"{accuracy:.2f}"
        deployed = f"**{record['rescored']['deployed']:.2f}**" if "rescored" in record else "-"
    return (f"| {record['name']} | {start} | {a['steps']} x {a.get('batch', 16)} ({a.get('train_size', 2400)} ex.) | "
            f"{a.get('lr', 2e-4):g} {schedule} | {warmup} | {logits} | {relation} | {hidden} | "
            f"{in_training} | {deployed} | {record.get('train_seconds', 0) / 60:.0f} |")


def _student(path: str) -> str:
    name = Path(path).name
    return f"`{name}` (block-wise reconstruction)" if name.startswith("reconstructed") else f"`{name}`"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", type=Path, default=RESULTS / "sst2-levers.jsonl")
    p.add_argument("--output", type=Path, default=RESULTS / "sst2-levers.md")
    a = p.parse_args()
    records = [json.loads(line) for line in a.record.read_text().splitlines() if line.strip()]
    lines = [
        "# SST-2 recovery levers, SmolLM2-135M-Instruct, 2 CPU cores",
        "",
        "Each row: one `python benchmarks/sst2_probe.py` run (its options are in the JSON record). Stage 3 only (no "
        "continued pre-training), bf16 autocast; accuracy on 872 SST-2 train examples held out (seed 42, never "
        "trained on); teacher for the KD terms: the last `teacher100` above the row (FP16-SFT, 100 steps; retrained "
        "in a later session). Minutes: training only, on a shared machine.",
        "",
        "Accuracy *deployed*: the packed model (the FP model's bf16 values) computed in float32, where the scores do "
        "not depend on the batch size: what the pipeline reports (`sst2_probe.py` scores so since the 600-step run; "
        "`benchmarks/rescore_probe.py` rescored a saved model). *In training*: the earlier probes' own score of the "
        "training model at the end of its run, with the scoring of the time (SDPA attention on left-padded batches, "
        "shifted positions), which a ternary model's rounding ties move by about half a point.",
        "",
        "| Run | Student | Steps x batch | LR | Quantization warm-up | Logits KD (lambda, tokens) | Relation KD "
        "(gamma, kind) | Hidden KD | Accuracy in training | Accuracy deployed | Minutes |",
        "|---|---|---|---|---|---|---|---|---:|---:|---:|",
        *(row(r) for r in records),
        "",
    ]
    a.output.write_text("\n".join(lines))
    print(a.output.read_text())


if __name__ == "__main__":
    main()
