import pytest
import torch
from transformers.integrations.bitnet import VALUES_PER_ITEM as transformers_values_per_item
from transformers.integrations.bitnet import pack_weights, unpack_weights

from bitnet_hf.models.quantization import (
    EPS,
    VALUES_PER_ITEM,
    fake_quantize_activations,
    fake_quantize_weights,
    pack_ternary,
    quantize_activations,
    quantize_weights,
    unpack_ternary,
)


def test_weights_absmean_ternary_by_hand():
    w = torch.tensor([[0.3, -0.05, 1.2], [-0.6, 0.0, 0.1]])
    q, s = quantize_weights(w)
    assert s.item() == pytest.approx(2.25 / 6)  # mean |W|
    # W / s = [0.8, -0.13, 3.2, -1.6, 0, 0.27] -> round -> clamp to [-1, 1]
    assert q.tolist() == [[1, 0, 1], [-1, 0, 0]]
    assert q.dtype == torch.int8
    assert torch.equal(fake_quantize_weights(w), q.float() * s)


def test_activations_per_token_absmax_int8_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [0.01, 0.02, -0.04]])
    q, g = quantize_activations(x)
    assert g.squeeze(-1).tolist() == pytest.approx([2.0, 0.0, 0.04])
    assert q[0].tolist() == [63, -127, 32]  # 127 x / (2 + eps) = 63.5-, -126.99, 31.75
    assert q[1].tolist() == [0, 0, 0]  # eps keeps an all-zero token finite
    assert q[2].tolist() == [round(127 * 0.01 / (0.04 + EPS)), round(127 * 0.02 / (0.04 + EPS)), -127]
    assert torch.allclose(fake_quantize_activations(x), q.float() * g / 127)


def test_quantizers_keep_dtype_and_compute_in_float32():
    w = torch.randn(16, 8, dtype=torch.bfloat16)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert fake_quantize_weights(w).dtype == torch.bfloat16
    assert fake_quantize_activations(x).dtype == torch.bfloat16
    q32, s32 = quantize_weights(w.float())
    q16, s16 = quantize_weights(w)
    assert torch.equal(q16, q32) and s16 == s32


def test_straight_through_gradients():
    w = torch.randn(6, 5, requires_grad=True)
    x = torch.randn(4, 5, requires_grad=True)
    upstream = torch.randn(6, 5)
    (fake_quantize_weights(w) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)  # identity gradient through round/clamp
    upstream = torch.randn(4, 5)
    (fake_quantize_activations(x) * upstream).sum().backward()
    assert torch.equal(x.grad, upstream)


@pytest.mark.parametrize("rows", [4, 5, 7, 8, 13, 64])
def test_packing_is_bit_for_bit_transformers_layout(rows):
    q = torch.randint(-1, 2, (rows, 11), dtype=torch.int8)
    ours = pack_ternary(q)
    theirs = pack_weights(q.to(torch.int16).clone())
    assert ours.dtype == torch.uint8 and ours.shape == ((rows + 3) // 4, 11)
    assert torch.equal(ours, theirs)
    assert torch.equal(q, q.clone())  # pack_ternary leaves its input alone (pack_weights adds 1 in place)
    assert torch.equal(unpack_ternary(ours, rows), q)
    # transformers' unpack_weights is torch.compile'd; its plain function gives the same rows back
    theirs_unpacked = unpack_weights._torchdynamo_orig_callable(ours, torch.int8)
    assert torch.equal(theirs_unpacked[:rows], unpack_ternary(ours, rows))
    assert VALUES_PER_ITEM == transformers_values_per_item


def test_packing_layout_by_hand():
    # transformers' layout: row block i of ceil(rows / 4) rows goes to bits 2i..2i+1, values stored as q + 1
    q = torch.tensor([[-1], [0], [1], [1]], dtype=torch.int8)
    assert pack_ternary(q).item() == (0 << 0) | (1 << 2) | (2 << 4) | (2 << 6)


def test_pack_rejects_non_ternary():
    with pytest.raises(ValueError, match="quantize the weights first"):
        pack_ternary(torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="2-D"):
        pack_ternary(torch.zeros(3, dtype=torch.int8))


def test_quantization_strength_blends_latent_and_quantized():
    """Warm-up strength s: ``x + s (q(x) - x)``; 0 is the identity, 1 exactly the quantizer; gradients pass through."""
    from bitnet_hf.models.quantization import dequantize_activations, dequantize_weights

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 32, generator=g).requires_grad_()
    x = torch.randn(3, 32, generator=g)
    assert torch.equal(fake_quantize_weights(w, 0.0), w)
    assert torch.equal(fake_quantize_weights(w, 1.0), dequantize_weights(w))
    half = fake_quantize_weights(w, 0.5)
    assert torch.allclose(half, (w + dequantize_weights(w)) / 2, atol=1e-6)
    half.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    assert torch.allclose(fake_quantize_activations(x, 0.25), x + 0.25 * (dequantize_activations(x) - x), atol=1e-6)
