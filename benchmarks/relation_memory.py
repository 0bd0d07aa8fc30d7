"""Peak memory of the attention-relation KD (forward + backward) at sequence length 512: ours against the naive way.

The naive way builds the three (batch, heads, T, T) relation matrices of both models at once and lets autograd keep
the student's for the backward; ours builds a few relation heads at a time under activation checkpointing
(``bitnet_hf.distill.losses.attention_relation_distillation``). Each variant runs in a fresh process and reports
its peak resident memory above what the inputs already hold (CPU; on CUDA the same code shows the same ratio).

Shapes: student Qwen3-0.6B (Q 2048, K/V 1024 wide), teacher Qwen3-4B (Q 4096, K/V 1024), 32 relation heads.

    python benchmarks/relation_memory.py [--batch 4] [--length 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def naive(students, teachers, mask, heads):
    from bitnet_hf.distill.losses import relation_log_probs

    log_s = [relation_log_probs(s, heads, "scaled_dot", mask) for s in students]
    with torch.no_grad():
        log_t = [relation_log_probs(t, heads, "scaled_dot", mask) for t in teachers]
    pair = mask[:, None, :, None] & mask[:, None, None, :]
    total = sum((lt.exp() * (lt - ls)).masked_fill(~pair, 0).sum() for ls, lt in zip(log_s, log_t))
    return total / heads / mask.sum()


def ours(students, teachers, mask, heads):
    from bitnet_hf.distill.losses import attention_relation_distillation

    return attention_relation_distillation(students, teachers, mask, heads=heads)


def measure(variant: str, batch: int, length: int) -> dict:
    torch.manual_seed(0)
    heads = 32
    students = [torch.randn(batch, length, w, requires_grad=True) for w in (2048, 1024, 1024)]
    teachers = [torch.randn(batch, length, w) for w in (4096, 1024, 1024)]
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1:, length * 3 // 4:] = False  # some padding
    fn = naive if variant == "naive" else ours
    fn([s[:, :8] for s in students], [t[:, :8] for t in teachers], mask[:, :8], heads).backward()  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    loss = fn(students, teachers, mask, heads)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "loss": loss.item(), "peak_mib": (peak - base) / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--variant", choices=["naive", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.batch, args.length)))
        return
    rows = []
    for variant in ("naive", "ours"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--batch", str(args.batch),
                              "--length", str(args.length)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    one = args.batch * 32 * args.length**2 * 4 / 2**20
    print(f"relation KD, batch {args.batch}, T={args.length}, 32 relation heads; one fp32 relation tensor = "
          f"{one:.0f} MiB")
    print(f"{'variant':8} {'peak MiB':>9} {'seconds':>8} {'loss':>10}")
    for r in rows:
        print(f"{r['variant']:8} {r['peak_mib']:9.0f} {r['seconds']:8.2f} {r['loss']:10.6f}")
    print(f"peak memory: ours / naive = {rows[1]['peak_mib'] / rows[0]['peak_mib']:.3f}; "
          f"same loss: {abs(rows[0]['loss'] - rows[1]['loss']) <= 1e-5 * abs(rows[0]['loss'])}")


if __name__ == "__main__":
    main()
