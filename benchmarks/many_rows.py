"""The ternary kernel against PyTorch's bf16 ``F.linear`` (oneDNN) as the rows per call grow (prefill, batches).

For SmolLM2-135M's and Qwen3-0.6B's FFN shapes, bf16 activations, 2 threads: the active packed kernel (``vnni``
here; from 128 rows on it multiplies through oneDNN's int8 GEMM), the ``torch`` path (unpack + bf16 ``F.linear``), and
``F.linear`` on a bf16 weight of the same shape (what the full-precision model runs). The three are timed in turn,
call by call, 9 times after a warm-up (so a busy machine slows all three alike), and the medians are printed.

    python benchmarks/many_rows.py
"""

from __future__ import annotations

import statistics
import time

import torch
from decode_breakdown import packed  # the folder of a script run as a file is on sys.path

from bitnet_hf.models.kernels import cpu_kernel, ternary_linear


def main() -> None:
    torch.set_num_threads(2)
    kernel = cpu_kernel()
    print(f"| shape (in x out) | rows | {kernel} ms | unpack + bf16 ms | bf16 F.linear ms | {kernel} / bf16 |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for in_features, out_features in [(576, 1536), (1024, 3072)]:
            layer = packed(in_features, out_features)
            dense = torch.randn(out_features, in_features).bfloat16()
            for rows in (1, 32, 128, 256, 2048):
                x = torch.randn(rows, in_features).bfloat16()
                steps = {"ternary": lambda: ternary_linear(x, [layer], kernel),
                         "unpack": lambda: layer.reference_forward(x),
                         "bf16": lambda: torch.nn.functional.linear(x, dense)}
                times: dict[str, list[float]] = {name: [] for name in steps}
                for round_ in range(10):
                    for name, step in steps.items():
                        start = time.perf_counter()
                        step()
                        if round_:  # the first round warms up
                            times[name].append(1000 * (time.perf_counter() - start))
                ternary, unpack, bf16 = (statistics.median(times[name]) for name in steps)
                print(f"| {in_features} x {out_features} | {rows} | {ternary:.2f} | {unpack:.2f} | {bf16:.2f} "
                      f"| {ternary / bf16:.2f} |")


if __name__ == "__main__":
    main()
