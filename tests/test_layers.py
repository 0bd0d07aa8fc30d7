import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from bitnet_hf import BitLinear, PackedBitLinear, SubLN, convert_to_bitnet
from bitnet_hf.models.quantization import quantize_activations, quantize_weights
from tiny import tiny_model, tokens


def _linear(bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(12, 8, bias=bias)


def test_bitlinear_is_a_linear_sharing_the_parameters():
    linear = _linear()
    layer = BitLinear.from_linear(linear, sub_norm_eps=None, quantize=True)
    assert isinstance(layer, nn.Linear)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    assert layer.sub_norm is None


def test_bitlinear_without_quantization_is_exactly_linear():
    linear = _linear()
    layer = BitLinear.from_linear(linear, sub_norm_eps=None, quantize=False)
    x = torch.randn(3, 5, 12)
    assert torch.equal(layer(x), linear(x))


def test_bitlinear_forward_follows_the_formulas():
    linear = _linear()
    layer = BitLinear.from_linear(linear, sub_norm_eps=None, quantize=True)
    x = torch.randn(3, 5, 12)
    xq, g = quantize_activations(x)
    wq, s = quantize_weights(linear.weight)
    expected = F.linear(xq.float() * (g / 127), wq.float() * s, linear.bias)
    assert torch.equal(layer(x), expected)
    assert not torch.allclose(layer(x), linear(x), atol=1e-3)  # quantization does change the output


def test_bitlinear_gradients_reach_the_latent_weights():
    layer = BitLinear.from_linear(_linear(), sub_norm_eps=None, quantize=True)
    x = torch.randn(4, 12, requires_grad=True)
    layer(x).sum().backward()
    xq, g = quantize_activations(x.detach())
    # straight-through: dL/dW = upstream^T @ (dequantized x), dL/dx = upstream @ (dequantized W)
    assert torch.allclose(layer.weight.grad, torch.ones(4, 8).T @ (xq.float() * g / 127), atol=1e-5)
    wq, s = quantize_weights(layer.weight.detach())
    assert torch.allclose(x.grad, torch.ones(4, 8) @ (wq.float() * s), atol=1e-5)
    assert torch.equal(layer.bias.grad, torch.full((8,), 4.0))


def test_subln_is_rmsnorm_on_the_input():
    layer = BitLinear.from_linear(_linear(), sub_norm_eps=1e-6, quantize=False)
    with torch.no_grad():
        layer.sub_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 12) * 7
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.sub_norm.weight
    assert torch.allclose(layer(x), F.linear(normed, layer.weight, layer.bias), atol=1e-5)
    assert isinstance(layer.sub_norm, SubLN)


@pytest.mark.parametrize("bias,out", [(True, 8), (False, 6)])
def test_packed_linear_matches_the_quantized_forward(bias, out):
    torch.manual_seed(0)
    layer = BitLinear(12, out, bias=bias, sub_norm_eps=1e-6)
    with torch.no_grad():
        layer.sub_norm.weight.uniform_(0.5, 2.0)
    packed = PackedBitLinear.from_bitlinear(layer, torch.float32)
    assert packed.weight.dtype == torch.uint8 and packed.weight.shape == ((out + 3) // 4, 12)
    assert packed.weight_scale.item() == pytest.approx(layer.weight.abs().mean().item())
    x = torch.randn(3, 12)
    assert torch.equal(packed(x), layer(x))


def test_peft_lora_wraps_bitlinear():
    model = convert_to_bitnet(tiny_model("qwen3"))
    x = tokens()
    with torch.no_grad():
        before = model(x).logits
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    q_proj = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, BitLinear)
    with torch.no_grad():
        assert torch.equal(peft_model(x).logits, before)  # LoRA B starts at zero
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    peft_model(x).logits.sum().backward()
    assert q_proj.lora_A["default"].weight.grad is not None
