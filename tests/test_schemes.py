"""Weight schemes: absmean ternary scales per tensor (the paper's), per output row, or per group of input columns
(Block-Quant), from training through packing, the kernels, checkpoints and the command line."""

import json

import pytest
import torch
from tiny import FAMILIES, kernel, tiny_model, tokens
from transformers import AutoModelForCausalLM

from bitnet_hf import convert_to_bitnet, pack_bitnet, save_checkpoint
from bitnet_hf.cli import main
from bitnet_hf.models.kernels import cpu_kernel, int4pack_linear, int4pack_weight
from bitnet_hf.models.layers import INT4PACK_MAX_ROWS, BitLinear, PackedBitLinear
from bitnet_hf.models.quantization import (
    WeightScheme,
    dequantize_weights,
    fake_quantize_activations,
    quantize_weights,
)

SCHEMES = [("row", 0), ("group", 32)]


def test_scales_are_absmeans_of_their_block():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 64, generator=g) * torch.linspace(0.1, 3, 6)[:, None]  # rows of very different size
    assert WeightScheme() == WeightScheme("tensor", 0)
    q, s = WeightScheme().quantize(w)
    assert torch.equal(q, quantize_weights(w)[0])
    assert torch.equal(WeightScheme().fake_quantize(w), dequantize_weights(w))
    q, s = WeightScheme("row").quantize(w)
    assert s.shape == (6, 1) and torch.allclose(s[:, 0], w.abs().mean(1))
    assert torch.equal(q, (w / (s + 1e-5)).round().clamp(-1, 1).to(torch.int8))
    q, s = WeightScheme("group", 32).quantize(w)
    assert s.shape == (6, 2) and torch.allclose(s, w.view(6, 2, 32).abs().mean(-1))
    expected = (q.view(6, 2, 32) * s[..., None]).view(6, 64)
    assert torch.equal(WeightScheme("group", 32).fake_quantize(w), expected)
    # finer scales follow the rows: less error than one scale for the whole matrix
    error = {name: (WeightScheme(name, size).fake_quantize(w) - w).norm() for name, size in
             [("tensor", 0), *SCHEMES]}
    assert error["group"] <= error["row"] < error["tensor"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scale, group_size", SCHEMES)
def test_packed_model_reproduces_training_for_every_scheme(family, scale, group_size, tmp_path):
    """The scheme travels into the config and the packed scales; the packed model reproduces the training forward
    bit for bit on the torch kernel and to float rounding on the kernel chosen for it on CPU (per row: the C++
    kernels; per group: int4pack, whose groups of 32 hold them exactly, for a few bf16 rows); the warm-up blends the
    scheme's own quantizer in."""
    model = convert_to_bitnet(tiny_model(family), weight_scale=scale, group_size=group_size).eval()
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, BitLinear) and layer.scheme == WeightScheme(scale, group_size)
    x = tokens()
    inputs = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).logits
        layer.quantization_strength = 0.5
        half = layer(inputs)
        layer.quantization_strength = 1.0
        # the warm-up's blend uses the scheme's own quantizer: W + 0.5 (q(W) - W)
        w = layer.weight + 0.5 * (layer.scheme.fake_quantize(layer.weight) - layer.weight)
        normed = inputs if layer.sub_norm is None else layer.sub_norm(inputs)
        assert torch.equal(half, torch.nn.functional.linear(fake_quantize_activations(normed, 0.5), w, layer.bias))
    save_checkpoint(model, tmp_path / "train")
    packed = save_checkpoint(pack_bitnet(model, dtype=torch.float32), tmp_path / "packed")
    config = json.loads((packed / "config.json").read_text())
    assert (config["bitnet_weight_scale"], config["bitnet_group_size"]) == (scale, group_size)
    loaded = AutoModelForCausalLM.from_pretrained(packed, dtype=torch.float32).eval()
    packed_layer = loaded.model.layers[0].mlp.down_proj
    assert isinstance(packed_layer, PackedBitLinear)
    assert packed_layer.weight_scale.shape == WeightScheme(scale, group_size).scale_shape(layer.out_features,
                                                                                          layer.in_features)
    with torch.no_grad():
        with kernel("torch"):
            assert torch.equal(loaded(x).logits, expected)
        # per row: the C++ kernels (when built here) at any number of rows; per group: the kernel chosen here for
        # one bf16 row, the torch kernel for many (every route per kernel: test_kernels.py's routing test)
        chosen = cpu_kernel()
        decode, prefill = torch.zeros(1, layer.in_features), torch.zeros(2 * INT4PACK_MAX_ROWS, layer.in_features)
        if scale == "row":
            assert packed_layer.kernel_for(decode) == packed_layer.kernel_for(prefill) == chosen
        else:
            assert packed_layer.kernel_for(decode.bfloat16()) == chosen
            assert packed_layer.kernel_for(prefill.bfloat16()) == "torch"
        torch.testing.assert_close(loaded(x).logits, expected, rtol=1e-5, atol=1e-5)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "train", dtype=torch.float32).eval()
    assert again.model.layers[0].mlp.down_proj.scheme == WeightScheme(scale, group_size)
    with torch.no_grad():
        assert torch.equal(again(x).logits, expected)


@pytest.mark.parametrize("scale, group_size", [("tensor", 0), *SCHEMES])
def test_int4pack_holds_every_scale_layout_exactly(scale, group_size):
    g = torch.Generator().manual_seed(1)
    scheme = WeightScheme(scale, group_size)
    q, s = scheme.quantize(torch.randn(40, 96, generator=g))
    x = torch.randn(5, 96, generator=g)
    packed, scales = int4pack_weight(q, s.reshape(scheme.scale_shape(40, 96)), torch.float32)
    expected = x @ scheme.dequantize(q, s, torch.float32).T
    torch.testing.assert_close(int4pack_linear(x, packed, scales, 40), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(weight_scale="channel"), "weight scale 'channel' is not one of tensor, row, group"),
    (dict(weight_scale="group", group_size=48), "group size 48 must be a positive multiple of 32"),
    (dict(weight_scale="group"), "group size 0 must be a positive multiple of 32"),
    (dict(weight_scale="row", group_size=32), "only applies to --scale group"),
    (dict(weight_scale="group", group_size=64), "group size 64 does not divide the input width 96 of down_proj"),
])
def test_bad_schemes_are_refused_before_any_work(bad, match, tmp_path, capsys):
    source = tmp_path / "fp"
    tiny_model("llama").save_pretrained(source)
    with pytest.raises(ValueError, match=match):
        convert_to_bitnet(str(source), **bad)
    flags = ["--scale", bad["weight_scale"], *(["--group-size", str(bad["group_size"])] if "group_size" in bad else [])]
    if bad["weight_scale"] == "channel":  # argparse's choices say it first
        with pytest.raises(SystemExit):
            main(["convert", str(source), str(tmp_path / "out"), *flags])
    else:
        assert main(["convert", str(source), str(tmp_path / "out"), *flags]) == 2
        assert match.split(" of ")[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_command_records_the_scheme(tmp_path):
    source = tmp_path / "fp"
    tiny_model("qwen3").save_pretrained(source)
    assert main(["convert", str(source), str(tmp_path / "out"), "--scale", "group", "--group-size", "32"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["bitnet_weight_scale"], config["bitnet_group_size"]) == ("group", 32)
    assert main(["pack", str(tmp_path / "out"), str(tmp_path / "packed")]) == 0
    layer = AutoModelForCausalLM.from_pretrained(tmp_path / "packed").model.layers[1].self_attn.o_proj
    assert layer.weight_scale.shape == (64, 2)


@pytest.mark.parametrize("saved, claimed", [("row", ("tensor", 0)), ("tensor", ("group", 32))])
def test_packed_scales_that_do_not_match_the_scheme_are_an_error(saved, claimed, tmp_path):
    """A packed checkpoint whose config.json claims another scheme than its stored scales: an error naming the
    mismatch, never scales re-initialised to one."""
    model = pack_bitnet(convert_to_bitnet(tiny_model("llama"), weight_scale=saved).eval())
    path = save_checkpoint(model, tmp_path / "packed")
    config = json.loads((path / "config.json").read_text())
    config["bitnet_weight_scale"], config["bitnet_group_size"] = claimed
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"weights do not match config.json \(tensors of another shape"):
        AutoModelForCausalLM.from_pretrained(path)
