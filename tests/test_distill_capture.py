"""Q/K/V capture: the projection outputs of one layer, from the normal forward, for every family and setting."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from bitnet_hf import convert_to_bitnet
from bitnet_hf.distill.capture import QKVCapture, decoder_layers, resolve_layer
from tiny import FAMILIES, tiny_model, tokens


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_captures_the_projection_outputs_of_one_layer(family):
    model = convert_to_bitnet(tiny_model(family))
    x = tokens(batch=2, length=7)
    attention = decoder_layers(model)[1].self_attn
    seen = {}
    handles = [attention.q_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("input", a[0]))]
    capture = QKVCapture(model, layer=-1)
    with capture:
        logits = model(x).logits
    handles[0].remove()
    q, k, v = capture.pop()
    assert capture.layer == 1
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert q.shape == (2, 7, config.num_attention_heads * head_dim)
    assert k.shape == v.shape == (2, 7, config.num_key_value_heads * head_dim)  # grouped-query: fewer K/V heads
    assert torch.equal(q, attention.q_proj(seen["input"])) and torch.equal(v, attention.v_proj(seen["input"]))
    assert q.requires_grad  # the student's states carry the graph back to its weights
    # Outside the `with` block nothing is kept, and the forward is unchanged by the hooks.
    with torch.no_grad():
        again = model(x).logits
    assert torch.equal(again, logits.detach())
    with pytest.raises(RuntimeError, match="did not run"):
        capture.pop()
    capture.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_same_states_with_sdpa_and_eager_attention():
    model = tiny_model("qwen3")
    x = tokens(batch=2, length=6)
    states = {}
    for impl in ("sdpa", "eager"):
        model.set_attn_implementation(impl)
        capture = QKVCapture(model, layer=1)
        with capture, torch.no_grad():
            model(x)
        states[impl] = capture.pop()
        capture.remove()
    for a, b in zip(states["sdpa"], states["eager"]):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_real_token_states_do_not_depend_on_the_padding_side(family):
    """Taken before RoPE, the states of the real tokens are the same with left and right padding."""
    model = tiny_model(family)
    seq = tokens(batch=1, length=5)
    pad = torch.zeros(1, 3, dtype=torch.long)
    out = {}
    for side, ids in (("right", torch.cat([seq, pad], 1)), ("left", torch.cat([pad, seq], 1))):
        mask = (torch.arange(8) < 5) if side == "right" else (torch.arange(8) >= 3)
        capture = QKVCapture(model, layer=1)
        with capture, torch.no_grad():
            model(ids, attention_mask=mask[None].long())
        out[side] = [s[0, mask] for s in capture.pop()]
        capture.remove()
    for a, b in zip(out["right"], out["left"]):
        assert torch.allclose(a, b, atol=1e-5)


def test_works_through_a_peft_lora_model():
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora_q = decoder_layers(model)[1].self_attn.q_proj
    with torch.no_grad():
        for p in lora_q.lora_B.parameters():
            p.normal_()  # a trained adapter, so that it changes the output
    capture = QKVCapture(model, layer=1)
    with capture, torch.no_grad():
        model(tokens(batch=1, length=4))
    q, _, _ = capture.pop()
    base = model.get_base_model()
    with model.disable_adapter():
        capture2 = QKVCapture(base, layer=1)
        with capture2, torch.no_grad():
            base(tokens(batch=1, length=4))
        q_base, _, _ = capture2.pop()
    assert not torch.allclose(q, q_base)  # the adapter's contribution is in the captured Q


def test_layer_resolution():
    model = tiny_model("llama", num_hidden_layers=5)
    assert resolve_layer(model, None) == 4  # 80% of the depth, as 22 of 28
    assert resolve_layer(tiny_model("llama", num_hidden_layers=28), None) == 22
    assert resolve_layer(model, -2) == 3 and resolve_layer(model, 0) == 0
    with pytest.raises(ValueError, match=r"attention_distill_layer=5 is out of range .* 5 layers"):
        resolve_layer(model, 5)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layer(model, -6)
