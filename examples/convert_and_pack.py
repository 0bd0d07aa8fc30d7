"""Stage 1 of BitDistill from Python: convert a full-precision model (SmolLM2-135M-Instruct by default) to BitNet
with SubLN calibrated on SST-2 sentences, save the training checkpoint, pack it for deployment and generate with
both. Offline.

    python examples/convert_and_pack.py [OUT_DIR] [--model FP_FOLDER] [--calibration-data FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import bitnet_hf
from bitnet_hf.offline import smollm2

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("example-out"), help="output folder")
    parser.add_argument("--model", help="full-precision model folder (default: SmolLM2-135M-Instruct, offline)")
    parser.add_argument("--calibration-data", type=Path, default=SST2, help="JSONL file of texts for SubLN gains")
    parser.add_argument("--text-field", default="sentence", help="JSONL field holding the text")
    parser.add_argument("--prompt", default="The capital of France is")
    args = parser.parse_args(argv)

    source = args.model or smollm2()
    tokenizer = AutoTokenizer.from_pretrained(source)
    fp = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with args.calibration_data.open() as f:
        texts = [json.loads(line)[args.text_field] for _, line in zip(range(16), f)]

    model = bitnet_hf.convert_to_bitnet(fp, subln="paper",
                                        calibration_batches=[dict(tokenizer(t, return_tensors="pt")) for t in texts])
    bitnet_hf.save_checkpoint(model, args.out / "bitnet", tokenizer=tokenizer, overwrite=True)
    bitnet_hf.save_checkpoint(bitnet_hf.pack_bitnet(model), args.out / "packed", tokenizer=tokenizer, overwrite=True)

    # Not trained yet, so both print gibberish. They may differ: the packed file rounds embeddings, norms and lm_head
    # to bf16 and this model's logits are nearly flat. The packed model equals the training model with those tensors
    # rounded the same way bit for bit (tests/test_pack.py); pack_bitnet(model, dtype=torch.float32) equals it as is.
    prompt = tokenizer(args.prompt, return_tensors="pt")
    for name in ("bitnet", "packed"):
        loaded = AutoModelForCausalLM.from_pretrained(args.out / name, dtype=torch.float32)
        tokens = loaded.generate(**prompt, max_new_tokens=8, do_sample=False)
        print(f"{name:>7}: {tokenizer.decode(tokens[0, prompt['input_ids'].shape[1]:])!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
