"""The gptq weight scheme: ternary rounding with error compensation from calibration data, as the initial values of
a converted model (``bitnet_hf.gptq``)."""

import json

import pytest
import torch
from tiny import FAMILIES, save_tiny_checkpoint, tiny_model
from torch import nn

from bitnet_hf import convert_to_bitnet, pack_bitnet, save_checkpoint
from bitnet_hf.cli import main
from bitnet_hf.gptq import gptq_round, minimum_tokens
from bitnet_hf.models.layers import BitLinear
from bitnet_hf.models.quantization import WeightScheme

SCHEMES = [("tensor", 0), ("row", 0), ("group", 32)]


class OneLinear(nn.Module):
    """``input_ids`` -> a fixed table of correlated features -> one ternary linear."""

    def __init__(self, features: torch.Tensor, linear: BitLinear) -> None:
        super().__init__()
        self.features = features
        self.linear = linear

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(self.features[input_ids])


def correlated_features(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    """Inputs that live mostly in a few directions, as a transformer's do: what GPTQ's compensation exploits."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 8, generator=g) @ torch.randn(8, width, generator=g) + 0.1 * torch.randn(
        rows, width, generator=g)


@pytest.mark.parametrize("scale, group_size", SCHEMES)
def test_gptq_lowers_the_output_error_and_training_recomputes_its_values(scale, group_size):
    """On the calibration inputs, GPTQ's ternary values give a much smaller output error than absmean rounding
    of the same weights with the same scales; the rewritten latent weights round (absmean, as training and packing
    do every step) back to exactly GPTQ's values and to the full-precision weights' scales."""
    scheme = WeightScheme(scale, group_size)
    torch.manual_seed(0)
    fp = nn.Linear(64, 24, bias=False)
    layer = BitLinear.from_linear(fp, sub_norm_eps=None, quantize=True, scheme=scheme)
    original = fp.weight.detach().clone()
    features = correlated_features(200, 64)
    model = OneLinear(features, layer)
    batches = [{"input_ids": torch.arange(start, start + 100).view(4, 25)} for start in (0, 100)]
    absmean_values, scales = scheme.quantize(original)
    [result] = gptq_round(model, batches)
    assert result.name == "linear" and result.gptq_error < 0.7 * result.absmean_error

    values, new_scales = scheme.quantize(layer.weight)
    assert torch.allclose(new_scales, scales, rtol=1e-5)
    assert not torch.equal(values, absmean_values)  # GPTQ moved some values
    x = features

    def output_error(q: torch.Tensor) -> float:
        return float((x @ (original - scheme.dequantize(q, scales, torch.float32)).T).square().sum()
                     / (x @ original.T).square().sum())

    assert output_error(values) == pytest.approx(result.gptq_error, rel=1e-3)
    assert output_error(absmean_values) == pytest.approx(result.absmean_error, rel=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_gptq_conversion_records_the_scheme_and_packs_exactly(family, tmp_path):
    """``convert_to_bitnet(weight_scheme="gptq")`` on every family: the scheme goes into the config and survives
    save; the packed model (absmean of the rewritten latent weights) reproduces the training forward; the source
    model is left as it was. (That GPTQ brings a real model closer to its full-precision self is tested on
    SmolLM2, test_smollm2.py: random tiny models on random tokens show nothing either way.)"""
    fp = tiny_model(family)
    g = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(3, 256, (4, 32), generator=g)} for _ in range(2)]
    held_out = torch.randint(3, 256, (4, 32), generator=g)
    with torch.no_grad():
        expected = fp(held_out).logits
    absmean = convert_to_bitnet(fp, weight_scale="row", calibration_batches=batches)
    model = convert_to_bitnet(fp, weight_scale="row", calibration_batches=batches, weight_scheme="gptq").eval()
    with torch.no_grad():
        assert torch.equal(fp(held_out).logits, expected)  # the source model keeps its weights
        logits = model(held_out).logits
    assert model.config.bitnet_weight_scheme == "gptq" and absmean.config.bitnet_weight_scheme == "absmean"
    pairs = [(a, b) for a, b in zip(absmean.modules(), model.modules()) if isinstance(a, BitLinear)]
    assert any(not torch.equal(a.scheme.quantize(a.weight)[0], b.scheme.quantize(b.weight)[0]) for a, b in pairs)
    save_checkpoint(model, tmp_path / "gptq")
    assert json.loads((tmp_path / "gptq" / "config.json").read_text())["bitnet_weight_scheme"] == "gptq"
    packed = pack_bitnet(model, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(packed(held_out).logits, logits, atol=1e-4, rtol=1e-4)


def test_gptq_refuses_missing_or_too_little_calibration():
    with pytest.raises(ValueError, match="needs calibration_batches"):
        convert_to_bitnet(tiny_model("llama"), weight_scheme="gptq")
    with pytest.raises(ValueError, match="is not one of absmean, gptq, awq"):
        convert_to_bitnet(tiny_model("llama"), weight_scheme="smoothquant")
    model = convert_to_bitnet(tiny_model("llama"))
    assert minimum_tokens(model) == 96  # the intermediate width, the widest input
    with pytest.raises(ValueError, match="has 40 real tokens; it needs at least 96"):
        gptq_round(model, [{"input_ids": torch.ones(2, 30, dtype=torch.long),
                            "attention_mask": torch.tensor([[1] * 30, [1] * 10 + [0] * 20])}])


def test_cli_convert_with_gptq(tmp_path, capsys):
    src = save_tiny_checkpoint(tmp_path / "fp")
    text = tmp_path / "calibration.txt"
    text.write_text("\n".join(f"calibration sample number {i}: some ordinary words to read." for i in range(16)))
    assert main(["convert", str(src), str(tmp_path / "no"), "--scheme", "gptq"]) == 2
    assert "--scheme gptq needs --calibration-data" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    assert main(["convert", str(src), str(tmp_path / "out"), "--scheme", "gptq", "--scale", "row",
                 "--calibration-data", str(text)]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["bitnet_weight_scheme"] == "gptq" and config["bitnet_weight_scale"] == "row"
