"""Where a decode step of a packed Qwen3-0.6B-shaped model goes, part by part, outside ``generate``.

Times, for one token (batch 1, bf16 activations, 2 threads), the 28 layers' ternary linears as the model calls them
(q/k/v fused, o, gate/up fused, down: 105 MB of 2-bit weights, read from DRAM) and the 151936 x 1024 output head
in each ``bitnet_lm_head`` mode. Subtracting both from the per-token time of ``bitnet-hf bench`` leaves what the
rest of transformers' forward and ``generate`` costs per token.

    python benchmarks/decode_breakdown.py
"""

from __future__ import annotations

import statistics
import time

import torch

from bitnet_hf.models.kernels import cpu_kernel, ternary_linear
from bitnet_hf.models.layers import FusedProjections, PackedBitLinear, QuantizedLMHead


def packed(in_features: int, out_features: int) -> PackedBitLinear:
    layer = PackedBitLinear(in_features, out_features, bias=False, dtype=torch.bfloat16)
    layer.weight.copy_(torch.randint(0, 256, layer.weight.shape, dtype=torch.uint8))
    return layer


def timed(step, repeats: int = 15, warmup: int = 3) -> float:  # noqa: ANN001
    """Median milliseconds of ``repeats`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    kernel = cpu_kernel()
    blocks = []
    for _ in range(28):
        qkv, gate_up = [packed(1024, 2048), packed(1024, 1024), packed(1024, 1024)], [packed(1024, 3072),
                                                                                     packed(1024, 3072)]
        FusedProjections(qkv), FusedProjections(gate_up)
        blocks.append((qkv, [packed(2048, 1024)], gate_up, [packed(3072, 1024)]))
    x = {k: torch.randn(1, k).bfloat16() for k in (1024, 2048, 3072)}
    weight_bytes = sum(m.weight.numel() for block in blocks for group in block for m in group)

    def layers() -> None:
        for block in blocks:
            for group in block:
                ternary_linear(x[group[0].in_features], group, kernel)

    with torch.no_grad():
        ms = timed(layers)
        print(f"kernel {kernel}: 28 layers of ternary linears {ms:.2f} ms/token "
              f"({weight_bytes / 2**20:.0f} MiB of weights, {weight_bytes / ms / 1e6:.1f} GB/s)")
        head = torch.nn.Linear(1024, 151936, bias=False, dtype=torch.bfloat16)
        h = torch.randn(1, 1, 1024).bfloat16()
        for mode in ("full", "int8", "int4"):
            module = head if mode == "full" else QuantizedLMHead.from_linear(head, mode)
            print(f"lm_head {mode}: {timed(lambda: module(h)):.2f} ms/token")


if __name__ == "__main__":
    main()
