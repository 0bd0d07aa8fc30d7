"""A fine-tuned BitNet classifier deployed in llama.cpp: its SST-2 accuracy there, beside ours.

Exports MODEL (a BitNet training or packed checkpoint) with ``bitnet_hf.export_gguf`` and scores the held-out SST-2
examples of ``benchmarks/sst2_probe.py`` (872 examples of ``../shared/data/sst2`` train, seed 42) three ways, each
as ``bitnet-hf evaluate`` scores (the label word whose first token scores highest after the prompt):

* ours, deployed: the packed model in float32 (per-token int8 activations, BitNet's forward);
* ours without the activation quantizer (what llama.cpp's ``bitnet`` graph computes for F16 weights);
* llama.cpp (llama-cpp-python) on the GGUF file, ``--type`` q4_0 (activations in q8_0 blocks of 32) or f16.

    python benchmarks/llama_cpp_accuracy.py MODEL [--type q4_0] [--limit 872]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import bitnet_hf.models.layers as layers
from bitnet_hf import export_gguf, pack_bitnet, save_checkpoint
from bitnet_hf.evaluation import evaluate_model
from bitnet_hf.tasks import get_task, train_eval_splits
from bitnet_hf.tasks.base import uses_chat_template

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def main() -> None:
    import llama_cpp

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--type", default="q4_0", choices=["q4_0", "f16", "tq2_0", "tq1_0"])
    p.add_argument("--limit", type=int, default=872)
    a = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    task = get_task("sst2")
    examples = train_eval_splits(task, data_dir=DATA, train_size=2400, eval_size=872, seed=42).eval
    examples = examples.select(range(min(a.limit, len(examples))))
    labels = np.array(examples["label"])
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        packed_dir = a.model
        if not getattr(model.config, "bitnet_packed", False):
            packed_dir = save_checkpoint(pack_bitnet(model), Path(tmp) / "packed", tokenizer=tokenizer)
        packed = AutoModelForCausalLM.from_pretrained(packed_dir, dtype=torch.float32)
        ours = evaluate_model(packed, tokenizer, task, examples, batch_size=32).metrics["accuracy"]
        original = layers.fake_quantize_activations
        layers.fake_quantize_activations = lambda x, strength: x  # the reference forward of the packed layers
        try:
            train = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32) if packed_dir == a.model \
                else model
            plain = evaluate_model(train, tokenizer, task, examples, batch_size=32).metrics["accuracy"]
        finally:
            layers.fake_quantize_activations = original
        path = export_gguf(packed_dir, Path(tmp) / f"model-{a.type}.gguf", weight_type=a.type)
        llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=torch.get_num_threads(), logits_all=True, verbose=False)
        label_ids = task.label_token_ids(tokenizer)
        special = not uses_chat_template(tokenizer)  # as evaluate_model tokenizes the prompts
        start = time.perf_counter()
        predictions = []
        for example in examples:
            ids = tokenizer(task.prompt(example, tokenizer), add_special_tokens=special)["input_ids"]
            llm.reset()
            llm.eval(ids)
            predictions.append(int(np.argmax(np.array(llm.scores[len(ids) - 1])[label_ids])))
        seconds = time.perf_counter() - start
        llm.close()
    theirs = 100 * float((np.array(predictions) == labels).mean())
    print(f"| scored as | SST-2 accuracy ({len(labels)} held out) |\n|---|---:|\n"
          f"| ours, deployed (per-token int8 activations) | {ours:.2f} |\n"
          f"| ours, activations not quantized | {plain:.2f} |\n"
          f"| llama.cpp, {a.type.upper()} | {theirs:.2f} |\n\nllama.cpp scored in {seconds:.0f} s")


if __name__ == "__main__":
    main()
