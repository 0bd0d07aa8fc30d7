"""Which quantizer breaks a converted model? Held-out LM loss of SmolLM2-135M-Instruct with BitNet's ternary
weights only, int8 activations only, both, and ternary weights everywhere but one group of projections.

No training and no SubLN: the linears of the decoder blocks multiply with the library's dequantized values
(``dequantize_weights``: absmean ternary; ``dequantize_activations``: per-token absmax int8). Text: the first
articles of ``../shared/data/cnndm/validation.jsonl`` (or --data), 256 tokens each.

    python benchmarks/quantization_damage.py [--data PATH] [--articles 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bitnet_hf.models.quantization import dequantize_activations, dequantize_weights
from bitnet_hf.offline import smollm2

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnndm" / "validation.jsonl"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
SETTINGS = {  # name: (ternary weights, int8 activations, projections left in full precision)
    "full precision": (False, False, ()),
    "int8 activations": (False, True, ()),
    "ternary weights": (True, False, ()),
    "both (BitNet)": (True, True, ()),
    "ternary, attention kept FP": (True, False, ATTENTION),
    "ternary, MLP kept FP": (True, False, MLP),
    "ternary, down_proj kept FP": (True, False, ("down_proj",)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--articles", type=int, default=8)
    args = parser.parse_args()
    path = smollm2()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with args.data.open(encoding="utf-8") as f:
        texts = [json.loads(line)["article"] for _, line in zip(range(args.articles), f)]
    ids = torch.stack([torch.tensor(tokenizer(t)["input_ids"][:256]) for t in texts])
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    weights = {n: m.weight.detach().clone() for n, m in linears.items()}
    ternary = {n: dequantize_weights(w) for n, w in weights.items()}
    quantize_inputs = {"on": False}

    def quantize_input(module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> tuple[torch.Tensor] | None:
        return (dequantize_activations(inputs[0]),) if quantize_inputs["on"] else None

    for m in linears.values():
        m.register_forward_pre_hook(quantize_input)
    print("| setting | held-out LM loss (nats/token) |\n|---|---|")
    for name, (weights_ternary, activations_int8, kept) in SETTINGS.items():
        for n, m in linears.items():
            m.weight.data = ternary[n] if weights_ternary and not n.endswith(kept) else weights[n]
        quantize_inputs["on"] = activations_int8
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        print(f"| {name} | {loss:.3f} |", flush=True)


if __name__ == "__main__":
    main()
