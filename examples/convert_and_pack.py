"""Stage 1 of BitDistill from Python: convert SmolLM2-135M-Instruct to BitNet (SubLN calibrated on SST-2
sentences), save the training checkpoint, pack it for deployment and generate with both. Offline.

    python examples/convert_and_pack.py [OUT_DIR]
"""

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import bitnet_hf
from bitnet_hf.offline import smollm2

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-out")
sst2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.jsonl"

source = smollm2()
tokenizer = AutoTokenizer.from_pretrained(source)
fp = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
with sst2.open() as f:
    texts = [json.loads(line)["sentence"] for _, line in zip(range(16), f)]

model = bitnet_hf.convert_to_bitnet(fp, subln="paper",
                                    calibration_batches=[dict(tokenizer(t, return_tensors="pt")) for t in texts])
bitnet_hf.save_checkpoint(model, out / "bitnet", tokenizer=tokenizer, overwrite=True)
bitnet_hf.save_checkpoint(bitnet_hf.pack_bitnet(model), out / "packed", tokenizer=tokenizer, overwrite=True)

# Not trained yet, so both print gibberish. They may differ: the packed file rounds embeddings, norms and lm_head to
# bf16 and this model's logits are nearly flat. The packed model equals the training model with those tensors
# rounded the same way bit for bit (tests/test_pack.py), and pack_bitnet(model, dtype=torch.float32) equals it as is.
prompt = tokenizer("The capital of France is", return_tensors="pt")
for name in ("bitnet", "packed"):
    loaded = AutoModelForCausalLM.from_pretrained(out / name, dtype=torch.float32)
    tokens = loaded.generate(**prompt, max_new_tokens=8, do_sample=False)
    print(f"{name:>7}: {tokenizer.decode(tokens[0, prompt['input_ids'].shape[1]:])!r}")
