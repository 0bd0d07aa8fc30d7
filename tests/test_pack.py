"""Deployment checkpoints: 2-bit packed ternary weights + one scale per tensor, everything else bf16.

Tolerance: none. The packed forward performs the very operations of the training model's quantized forward
(dequantize int8 activations and ternary weights, then one ``F.linear``), and the straight-through estimator is an
autograd function whose forward value is exactly the dequantized tensor. So the packed model reproduces the training
model bit for bit, once the training model's full-precision tensors are rounded to bf16 as the file stores them
(or exactly the training model itself with ``dtype=float32``). Greedy tokens are then equal as a consequence. This is the claim of the ``torch`` kernel, which these tests force; the
C++ kernels have their own (integer-exact) claim, checked in ``test_kernels.py``.
"""

import copy

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import bitnet_hf
from bitnet_hf import BitLinear, PackedBitLinear, convert_to_bitnet, pack_bitnet, save_checkpoint
from bitnet_hf.convert import size_report
from tiny import FAMILIES, kernel, tiny_model, tokens


@pytest.fixture(autouse=True)
def reference_kernel():
    with kernel("torch"):
        yield


def bf16_reference(model):
    """The training model with every tensor except the latent ternary weights rounded through bf16."""
    ref = copy.deepcopy(model)
    latent = {id(m.weight) for m in ref.modules() if isinstance(m, BitLinear)}
    with torch.no_grad():
        for p in ref.parameters():
            if id(p) not in latent:
                p.copy_(p.bfloat16().float())
    return ref


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_checkpoint_matches_the_quantized_training_forward(family, tmp_path):
    model = convert_to_bitnet(tiny_model(family)).eval()
    save_checkpoint(pack_bitnet(model), tmp_path / "packed")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed", dtype=torch.float32).eval()
    assert loaded.config.bitnet_packed
    linears = [m for m in loaded.modules() if isinstance(m, PackedBitLinear)]
    assert len(linears) == 7 * loaded.config.num_hidden_layers
    assert not any(isinstance(m, BitLinear) for m in loaded.modules())
    x = tokens(batch=4, length=32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, bf16_reference(model)(x).logits)
    prompt = tokens(batch=1, length=6)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(prompt, **kwargs), bf16_reference(model).generate(prompt, **kwargs))


def test_float32_pack_matches_the_training_model_itself():
    model = convert_to_bitnet(tiny_model("llama")).eval()
    x = tokens(batch=4, length=32)
    with torch.no_grad():
        assert torch.equal(pack_bitnet(model, dtype=torch.float32)(x).logits, model(x).logits)


def test_file_layout_and_size(tmp_path):
    model = convert_to_bitnet(tiny_model("qwen2", hidden_size=128, intermediate_size=256)).eval()
    packed = pack_bitnet(model)
    save_checkpoint(packed, tmp_path / "packed")
    with safe_open(tmp_path / "packed" / "model.safetensors", "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        q_proj = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert dtypes["model.layers.0.self_attn.q_proj.weight"] == "U8"
    assert dtypes["model.layers.0.self_attn.q_proj.weight_scale"] == "F32"
    assert dtypes["model.embed_tokens.weight"] == "BF16" and dtypes["lm_head.weight"] == "BF16"
    assert dtypes["model.layers.0.self_attn.o_proj.sub_norm.weight"] == "BF16"
    assert dtypes["model.layers.0.self_attn.q_proj.bias"] == "BF16"
    latent = model.model.layers[0].self_attn.q_proj.weight
    assert q_proj.shape == (latent.shape[0] // 4, latent.shape[1])
    from bitnet_hf.models.quantization import quantize_weights, unpack_ternary
    assert torch.equal(unpack_ternary(q_proj, latent.shape[0]), quantize_weights(latent)[0])
    report = size_report(packed)
    assert report["linear_weights"] == sum(m.weight.numel() for m in model.modules() if isinstance(m, BitLinear))
    assert report["packed_bytes"] * 7.5 <= report["bf16_bytes"]


def test_pack_refuses_what_it_cannot_pack():
    fp = tiny_model("llama")
    with pytest.raises(TypeError, match="convert it first"):
        pack_bitnet(fp)
    with pytest.raises(ValueError, match="bitnet_quantize=False"):
        pack_bitnet(convert_to_bitnet(fp, quantize=False))
    with pytest.raises(ValueError, match="already packed"):
        pack_bitnet(pack_bitnet(convert_to_bitnet(fp)))


def test_save_is_atomic(tmp_path, monkeypatch):
    model = convert_to_bitnet(tiny_model("llama"))
    out = tmp_path / "ckpt"
    save_checkpoint(model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="not empty"):
        save_checkpoint(model, out)

    def broken_save(self, path, **kwargs):
        (path / "model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old checkpoint is untouched
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no partial folder, no temporary left


KILLED_SAVE = """
import os, signal, sys
import transformers
from bitnet_hf import convert_to_bitnet, save_checkpoint
model = convert_to_bitnet(transformers.LlamaForCausalLM(transformers.LlamaConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)))
save_pretrained = type(model).save_pretrained
def killed_midway(self, path, **kwargs):
    save_pretrained(self, path, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # weights written, tokenizer and rename not done
type(model).save_pretrained = killed_midway
save_checkpoint(model, sys.argv[1])
"""


def test_a_save_killed_midway_leaves_nothing_the_next_save_keeps(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ckpt"
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(out)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [".ckpt.tmp"]  # the kill's leftover
    (tmp_path / ".ckpt.x1y2_abc.tmp").mkdir()  # what earlier versions' random temporary names (mkdtemp) left
    save_checkpoint(convert_to_bitnet(tiny_model("llama")), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


SERVE = """
import sys, torch, bitnet_hf
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
tokens = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
print(tokens.shape[1], sorted(m for m in ("transformers.trainer", "datasets", "bitnet_hf.convert",
                                          "bitnet_hf.distill") if m in sys.modules))
"""


def test_serving_a_packed_model_imports_no_training_code(tmp_path):
    """A process that loads and runs a packed model does not pay for the Trainer, datasets or our training code."""
    import subprocess
    import sys

    save_checkpoint(pack_bitnet(convert_to_bitnet(tiny_model("llama"))), tmp_path / "packed")
    out = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "packed")], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip().split("\n")[-1] == "7 []", out.stdout + out.stderr[-2000:]
