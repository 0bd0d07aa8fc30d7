"""Score a model that ``benchmarks/sst2_probe.py --save`` saved as the pipeline scores a row: packed (bf16 beside
the ternary weights), computed in float32 (scores that do not depend on the batch size: checked at 32 and 8), on
the 872 held-out SST-2 examples (seed 42); also the training checkpoint itself (float32 latent weights, quantized on
the fly).

    python benchmarks/rescore_probe.py runs/kdans-warm100-600-model
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from bitnet_hf import pack_bitnet
from bitnet_hf.evaluation import evaluate_model
from bitnet_hf.tasks import get_task, train_eval_splits

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a BitNet training checkpoint saved by sst2_probe.py --save")
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    task = get_task("sst2")
    held_out = train_eval_splits(task, data_dir=DATA, train_size=2400, eval_size=872, seed=42).eval
    trained = AutoModelForCausalLM.from_pretrained(a.model)
    deployed = pack_bitnet(trained).float()
    for batch_size in (32, 8):
        result = evaluate_model(deployed, tokenizer, task, held_out, batch_size=batch_size, progress=False)
        print(f"deployed (packed), float32, batch {batch_size}: accuracy {result.metrics['accuracy']:.2f}")
    result = evaluate_model(trained.float(), tokenizer, task, held_out, batch_size=32, progress=False)
    print(f"training checkpoint, float32: accuracy {result.metrics['accuracy']:.2f}")


if __name__ == "__main__":
    main()
