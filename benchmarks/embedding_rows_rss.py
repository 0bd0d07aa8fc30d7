"""Resident memory of embedding lookups in a quantized-head model: rows read with ``pread`` (``FileRowsEmbedding``,
what ``from_pretrained(..., bitnet_lm_head=...)`` sets up) against the same rows read through the checkpoint's
memory map (``F.embedding`` on the mapped matrix, what the model did before).

A random packed model of Qwen3-0.6B's shape (vocab 151936 x 1024, bf16) is written to a temporary folder, loaded
with the int4 head, and 96 random rows are looked up each way; printed: the process's RSS growth (``VmRSS``).

    python benchmarks/embedding_rows_rss.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bitnet_hf.bench import _memory_mib, prepare


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prepare(None, Path(tmp))
        model = AutoModelForCausalLM.from_pretrained(Path(tmp) / "packed", dtype=torch.bfloat16,
                                                     bitnet_lm_head="int4").eval()
        embedding = model.get_input_embeddings()
        ids = torch.randint(0, embedding.num_embeddings, (96, 1), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for name, lookup in [("pread (FileRowsEmbedding)", embedding),
                                 ("memory map (F.embedding)", lambda i: torch.nn.functional.embedding(i, embedding.weight))]:
                before = _memory_mib("VmRSS")
                for row in ids:
                    lookup(row[None])
                print(f"{name}: {len(ids)} lookups, RSS +{_memory_mib('VmRSS') - before:.1f} MiB")


if __name__ == "__main__":
    main()
