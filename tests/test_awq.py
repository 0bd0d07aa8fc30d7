"""The awq weight scheme: activation-aware input-channel scaling folded into the norms' gains, as the starting
point of a converted model (``bitnet_hf.awq``)."""

import json

import pytest
import torch
from tiny import FAMILIES, kernel, save_tiny_checkpoint, tiny_model

from bitnet_hf import convert_to_bitnet, pack_bitnet, save_checkpoint
from bitnet_hf.awq import awq_scale
from bitnet_hf.cli import main
from bitnet_hf.models.layers import BitLinear
from bitnet_hf.warmup import set_quantization_strength


def calibration(seed: int = 3, count: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 256, (4, 32), generator=g)} for _ in range(count)]


def with_outlier_channels(model):
    """Large gains on a few channels of every decoder norm, and small weights on those channels in the linears
    reading them: the case AWQ is for, large activations on channels that absmean rounding sets to zero."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name and param.dim() == 1:
                param[:4] = 8.0
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight",
                              "up_proj.weight")):
                param[:, :4] /= 8
    return model


def full_precision(model, x):
    set_quantization_strength(model, 0.0)
    try:
        with torch.no_grad():
            return model(x).logits
    finally:
        set_quantization_strength(model, 1.0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("subln", ["paper", "all", "none"])
def test_awq_keeps_the_full_precision_function_and_lowers_the_error(family, subln, tmp_path):
    """Every family and SubLN placement: the scaling changes weights and gains (new tensors: the source model keeps
    its own) but not what the model computes with the quantizers off; per norm, the chosen alpha's output error is
    at most absmean rounding's and, on channels with outliers, clearly below it; under ``--subln none``, o_proj and
    down_proj (no norm in front) keep their weights. The scheme is recorded and the model packs exactly."""
    fp = with_outlier_channels(tiny_model(family))
    source = {k: v.clone() for k, v in fp.state_dict().items()}
    batches, held_out = calibration(), calibration(seed=4, count=1)[0]["input_ids"]
    absmean = convert_to_bitnet(fp, subln=subln, calibration_batches=batches).eval()
    forced = convert_to_bitnet(fp, subln=subln, calibration_batches=batches)
    results = awq_scale(forced, batches, alphas=(0.5,))  # every norm scaled
    assert all(torch.equal(v, fp.state_dict()[k]) for k, v in source.items())
    torch.testing.assert_close(full_precision(forced, held_out), full_precision(absmean, held_out),
                               rtol=1e-4, atol=1e-4)
    pairs = {name: (a, b) for (name, a), b in zip(absmean.named_modules(), forced.modules()) if isinstance(a, BitLinear)}
    moved = {name for name, (a, b) in pairs.items() if not torch.equal(a.weight, b.weight)}
    unscaled = {n for n in pairs if n.endswith(("o_proj", "down_proj"))} if subln == "none" else set()
    assert moved == {n for r in results for n in r.linears} == set(pairs) - unscaled

    model = convert_to_bitnet(fp, subln=subln, calibration_batches=batches, weight_scheme="awq").eval()
    assert model.config.bitnet_weight_scheme == "awq"
    results = awq_scale(convert_to_bitnet(fp, subln=subln, calibration_batches=batches), batches)
    assert all(r.awq_error <= r.absmean_error for r in results)
    assert sum(r.awq_error for r in results) < 0.9 * sum(r.absmean_error for r in results)
    readers = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # the linears reading the outlier channels
    chosen = [r.alpha for r in results if r.linears[0].endswith(readers)]
    assert sum(alpha > 0 for alpha in chosen) > 0.75 * len(chosen)  # (SubLN "all" renormalises before some)

    save_checkpoint(model, tmp_path / "awq")
    assert json.loads((tmp_path / "awq" / "config.json").read_text())["bitnet_weight_scheme"] == "awq"
    with torch.no_grad(), kernel("torch"):  # the packed model is the trained one, bit for bit
        assert torch.equal(pack_bitnet(model, dtype=torch.float32)(held_out).logits, model(held_out).logits)


def test_awq_refuses_missing_or_too_little_calibration(tmp_path, capsys):
    with pytest.raises(ValueError, match="the awq weight scheme needs calibration_batches"):
        convert_to_bitnet(tiny_model("llama"), weight_scheme="awq")
    model = convert_to_bitnet(tiny_model("llama"))
    with pytest.raises(ValueError, match="AWQ calibration has 30 real tokens; it needs at least 96"):
        awq_scale(model, [{"input_ids": torch.ones(1, 30, dtype=torch.long)}])
    src = save_tiny_checkpoint(tmp_path / "fp")
    assert main(["convert", str(src), str(tmp_path / "no"), "--scheme", "awq"]) == 2
    assert "--scheme awq needs --calibration-data" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    text = tmp_path / "calibration.txt"
    text.write_text("\n".join(f"calibration sample number {i}: some ordinary words to read." for i in range(16)))
    assert main(["convert", str(src), str(tmp_path / "out"), "--scheme", "awq", "--calibration-data", str(text)]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["bitnet_weight_scheme"] == "awq"
