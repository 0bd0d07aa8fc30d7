"""Whether AWQ changes SmolLM2-135M-Instruct at all when calibrated on SST-2 prompts (as ``sst2_probe.py --scheme
awq`` converts it): converts with ``weight_scheme="awq"`` and with absmean rounding from the same prompts, and
counts the tensors that differ, for each SubLN placement given; appends one JSON line a placement to ``--output``
(read by ``benchmarks/schemes_table.py``).

    python benchmarks/awq_identity.py [paper none] [--calibration 128] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from bitnet_hf import convert_to_bitnet
from bitnet_hf.offline import smollm2
from bitnet_hf.tasks import get_task, train_eval_splits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("subln", nargs="*", default=["paper", "none"])
    p.add_argument("--calibration", type=int, default=128, help="SST-2 training prompts (sst2_probe.py's split)")
    p.add_argument("--output", type=Path, default=RESULTS / "awq-identity-sst2.jsonl")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # AWQ logs its error before and after
    base = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(base)
    task = get_task("sst2")
    splits = train_eval_splits(task, data_dir=DATA, train_size=2400, eval_size=872, seed=42)
    batches = list(task.prompt_inputs(splits.train, tokenizer, a.calibration))
    for subln in a.subln:
        awq = convert_to_bitnet(base, subln=subln, calibration_batches=batches, weight_scheme="awq").state_dict()
        absmean = convert_to_bitnet(base, subln=subln,
                                    calibration_batches=None if subln == "none" else batches).state_dict()
        differ = [k for k in absmean if not torch.equal(absmean[k], awq[k])]
        print(f"SubLN {subln}: {len(differ)} of {len(absmean)} tensors differ from the absmean conversion"
              + (f" ({', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''})" if differ else ""), flush=True)
        with a.output.open("a") as f:
            f.write(json.dumps({"subln": subln, "calibration": a.calibration, "differing": len(differ),
                                "tensors": len(absmean)}) + "\n")


if __name__ == "__main__":
    main()
