"""The paper's quantizer table at our scale: BitNet-SFT and BitDistill (the recipe) on SST-2 under each weight
scheme, beside the scheme's held-out LM loss right after conversion.

Reads ``benchmarks/results/sst2-levers.jsonl`` (``sst2_probe.py`` records) and
``benchmarks/results/scheme-damage-smollm2.jsonl`` (``scheme_damage.py``), writes
``benchmarks/results/sst2-schemes.md``. A probe counts for a scheme when it ran the protocol's 150 steps x 16 at lr
1e-3 held then decayed over the last 30 steps, from a fresh conversion with that scheme, scored deployed:

* BitNet-SFT: SubLN none, cross-entropy only, no warm-up;
* BitDistill (recipe): SubLN paper, quantization warm-up over 100 steps, logits KD on the answer (lambda 10, T 5);
  and the same without the warm-up (ternary from the first step), for starts that are ternary-fitted already.

    python benchmarks/schemes_table.py [--levers FILE] [--damage FILE] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMES = [("absmean", "tensor", 0, "default (paper)"), ("absmean", "group", 64, "B: Block-Quant"),
           ("gptq", "row", 0, "G: GPTQ"), ("awq", "tensor", 0, "A: AWQ")]
PROTOCOL = {"steps": 150, "batch": 16, "lr": 1e-3, "scheduler": "warmup_stable_decay", "decay_steps": 30,
            "train_size": 2400, "seed": 42}
# sst2_probe.py options newer than some records: their value before
ADDED_LATER = {"seed": 42, "temperature": 5.0, "fp_lr_ratio": 1.0, "warmup_shape": "linear", "kd_tokens": "loss"}


def option(args: dict, name: str):  # noqa: ANN201 - any option value
    return args.get(name, ADDED_LATER.get(name))


def kind(args: dict) -> str | None:
    """``"sft"``, ``"recipe"`` or None for a probe outside the table's two protocols."""
    if any(option(args, k) != v for k, v in PROTOCOL.items()) or args.get("student") or args.get("base") or args.get("fp"):
        return None
    if args.get("gamma") or args.get("hidden") or any(option(args, k) != v for k, v in ADDED_LATER.items()):
        return None
    if args.get("subln") == "none" and not args.get("lam") and not args.get("warmup"):
        return "sft"
    if args.get("subln") == "paper" and args.get("lam") == 10 and args.get("warmup") in (0, 100):
        return "recipe" if args.get("warmup") else "cold"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levers", type=Path, default=RESULTS / "sst2-levers.jsonl")
    p.add_argument("--damage", type=Path, default=RESULTS / "scheme-damage-smollm2.jsonl")
    p.add_argument("--identity", type=Path, default=RESULTS / "awq-identity-sst2.jsonl",
                   help="benchmarks/awq_identity.py's records")
    p.add_argument("--output", type=Path, default=RESULTS / "sst2-schemes.md")
    a = p.parse_args()
    accuracy: dict[tuple, dict[str, tuple[float, str]]] = {}
    for line in a.levers.read_text().splitlines():
        record = json.loads(line)
        args = record["args"]
        if ("scoring" not in record or record["scoring"].startswith("training model") or record.get("variant")
                or not (k := kind(args))):
            continue  # scored in training, or another protocol
        key = (args.get("scheme", "absmean"), args.get("scale", "tensor"), args.get("group_size", 0))
        accuracy.setdefault(key, {})[k] = (record["metrics"]["accuracy"], record["name"])
    losses, fp_loss = {}, None
    for line in a.damage.read_text().splitlines():
        record = json.loads(line)
        losses[(record["scheme"], record["scale"], record["group_size"])] = record["loss"]
        fp_loss = record["fp_loss"]
    # AWQ conversions that leave the model bit for bit the absmean one (its search kept alpha 0 for every norm)
    # train exactly as the default does: their rows are the default's, by construction.
    identical = set()
    if a.identity.exists():
        records = [json.loads(line) for line in a.identity.read_text().splitlines()]
        identical = {r["subln"] for r in records if r["differing"] == 0}
    if {"paper", "none"} <= identical and ("awq", "tensor", 0) not in accuracy and ("absmean", "tensor", 0) in accuracy:
        accuracy[("awq", "tensor", 0)] = {k: (v[0], f"{v[1]}`, identical model: `awq_identity.py")
                                          for k, v in accuracy[("absmean", "tensor", 0)].items()}
    lines = [
        "# Weight schemes on SST-2 (the paper's B / G / A table), SmolLM2-135M-Instruct, 2 CPU cores", "",
        f"`python benchmarks/schemes_table.py` from `{a.levers.name}` and `{a.damage.name}`. Each accuracy: one "
        "`python benchmarks/sst2_probe.py` run (its name below; options in its record), 150 steps x 16 at lr 1e-3 "
        "held, decayed over the last 30 steps, from a fresh conversion with the scheme (calibrated on SST-2 training "
        "prompts: 32, or 128 for GPTQ / AWQ), scored deployed (packed, float32) on the 872 held-out examples. "
        "BitNet-SFT: no SubLN, cross-entropy only. BitDistill: the recipe (SubLN, quantization warm-up over 100 "
        "steps, logits KD on the answer, lambda 10, T 5; no relation KD, no stage 2); without the warm-up: the same, "
        "ternary from the first step. LM loss: held-out CNN/DailyMail "
        f"nats/token right after conversion with SubLN (`benchmarks/scheme_damage.py`; full precision "
        f"{fp_loss:.2f}).", "",
        "| scheme | scale | LM loss after conversion | BitNet-SFT | BitDistill (recipe) | gain | BitDistill without "
        "the warm-up |", "|---|---|---:|---:|---:|---:|---:|"]
    for scheme, scale, group, label in SCHEMES:
        found = accuracy.get((scheme, scale, group), {})
        if not found:
            continue
        loss = losses.get((scheme, scale, group))
        cells = [f"{found[k][0]:.2f} (`{found[k][1]}`)" if k in found else "not run" for k in ("sft", "recipe", "cold")]
        gain = f"{found['recipe'][0] - found['sft'][0]:+.2f}" if {"sft", "recipe"} <= found.keys() else "-"
        per = f"group of {group}" if scale == "group" else scale
        lines.append(f"| {label} | {per} | {'-' if loss is None else f'{loss:.2f}'} | {cells[0]} | {cells[1]} | "
                     f"{gain} | {cells[2]} |")
    a.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
