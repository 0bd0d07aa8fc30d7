import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Qwen3ForSequenceClassification,
)

import bitnet_hf
from bitnet_hf import BitLinear, SubLN, convert_to_bitnet
from bitnet_hf.convert import calibrate_subln
from bitnet_hf.models import BITNET_CLASS_FOR, CONFIG_CLASSES
from tiny import FAMILIES, tiny_config, tiny_model, tokens

MODEL_TYPES = {"qwen3": "bitnet_qwen3", "qwen2": "bitnet_qwen2", "llama": "bitnet_llama", "gemma3": "bitnet_gemma3"}


@pytest.mark.parametrize("family", FAMILIES)
def test_unquantized_conversion_reproduces_the_original_exactly(family):
    fp = tiny_model(family)
    x = tokens()
    with torch.no_grad():
        expected = fp(x).logits
        got = convert_to_bitnet(fp, subln="none", quantize=False)(x).logits
    assert torch.equal(got, expected)


def test_sequence_classification_conversion_is_exact():
    torch.manual_seed(0)
    fp = Qwen3ForSequenceClassification(tiny_config("qwen3", num_labels=3)).eval()
    bitnet = convert_to_bitnet(fp, subln="none", quantize=False)
    assert type(bitnet).__name__ == "BitNetQwen3ForSequenceClassification"
    x = tokens()
    with torch.no_grad():
        assert torch.equal(bitnet(x).logits, fp(x).logits)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("subln,per_layer", [("paper", {"o_proj", "down_proj"}), ("none", set()),
                                             ("all", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                      "down_proj"})])
def test_every_decoder_linear_is_bitnet_and_subln_sits_where_asked(family, subln, per_layer):
    model = convert_to_bitnet(tiny_model(family), subln=subln)
    assert model.config.model_type == MODEL_TYPES[family]
    for layer in model.model.layers:
        linears = {n.rsplit(".", 1)[-1]: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        assert len(linears) == 7 and all(isinstance(m, BitLinear) for m in linears.values())
        assert {n for n, m in linears.items() if m.sub_norm is not None} == per_layer
        for m in linears.values():
            if m.sub_norm is not None:
                assert torch.equal(m.sub_norm.weight, torch.ones_like(m.sub_norm.weight))
    assert type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is not BitLinear
    assert sum(isinstance(m, SubLN) for m in model.modules()) == len(per_layer) * len(model.model.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_classes_build_bitnet_models(family):
    fields = {k: v for k, v in tiny_config(family).to_dict().items() if k != "model_type"}
    config = AutoConfig.for_model(MODEL_TYPES[family], **fields)
    assert isinstance(config, CONFIG_CLASSES)
    assert type(AutoModelForCausalLM.from_config(config)).__name__.endswith("ForCausalLM")
    assert type(AutoModel.from_config(config)).__name__.endswith("Model")
    seq = AutoModelForSequenceClassification.from_config(config)
    assert type(seq).__name__.endswith("ForSequenceClassification") and type(seq).__name__.startswith("BitNet")
    assert isinstance(seq.model.layers[0].mlp.down_proj, BitLinear)
    # a fresh model initialises its SubLN gains to one (Gemma's RMSNorm rule would make them zero)
    assert torch.equal(seq.model.layers[0].mlp.down_proj.sub_norm.weight, torch.ones(96))


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="not a SubLN placement"):
        bitnet_hf.models.BitNetQwen3Config(bitnet_subln="post")
    with pytest.raises(ValueError, match="needs bitnet_quantize=True"):
        bitnet_hf.models.BitNetQwen3Config(bitnet_packed=True, bitnet_quantize=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_kv_cache_matches_full_recompute(family):
    model = convert_to_bitnet(tiny_model(family)).eval()
    x = tokens(batch=1, length=5)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = model.generate(x, use_cache=True, **kwargs)
    without_cache = model.generate(x, use_cache=False, **kwargs)
    assert with_cache.shape == (1, 13)
    assert torch.equal(with_cache, without_cache)


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_and_eager_attention_agree(family):
    fp = tiny_model(family)
    x = tokens()
    logits = {}
    for impl in ("sdpa", "eager"):
        fp.set_attn_implementation(impl)
        model = convert_to_bitnet(fp).eval()
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            logits[impl] = model(x).logits
    # Same math up to float reassociation; int8 rounding of a value at a .5 boundary may rarely flip.
    assert torch.allclose(logits["sdpa"], logits["eager"], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_checkpoint_round_trips_exactly(family, tmp_path):
    model = convert_to_bitnet(tiny_model(family), subln="all").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SubLN):
                m.weight.uniform_(0.5, 1.5)
    bitnet_hf.save_checkpoint(model, tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert type(loaded) is type(model) and loaded.config.bitnet_subln == "all"
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


def test_checkpoints_load_as_remote_code_without_the_plugin(tmp_path):
    """Training and deployment checkpoints of every family load with trust_remote_code in a process where
    bitnet_hf cannot be imported, and give the same logits; packed ones with a quantized head read their embedding
    rows from the file there too."""
    x = tokens()
    cases = {}
    for family in FAMILIES:
        model = convert_to_bitnet(tiny_model(family)).eval()
        packed = bitnet_hf.pack_bitnet(model, dtype=torch.float32)
        for kind, m in (("train", model), ("packed", packed)):
            path = tmp_path / f"{family}-{kind}"
            bitnet_hf.save_checkpoint(m, path)
            with torch.no_grad():
                torch.save(m(x).logits, path / "expected.pt")
            cases[str(path)] = type(m).__name__
    # finer weight scales (models/quantization.py's WeightScheme) travel as remote code too
    grouped = bitnet_hf.pack_bitnet(convert_to_bitnet(tiny_model("llama"), weight_scale="group", group_size=32).eval(),
                                    dtype=torch.float32)
    path = tmp_path / "llama-group-packed"
    bitnet_hf.save_checkpoint(grouped, path)
    with torch.no_grad():
        torch.save(grouped(x).logits, path / "expected.pt")
    cases[str(path)] = type(grouped).__name__
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "bitnet_hf.py").write_text("raise ImportError('bitnet_hf is not installed in this process')\n")
    script = textwrap.dedent(f"""
        import json, sys, torch
        try:
            import bitnet_hf
            sys.exit("bitnet_hf should not be importable here")
        except ImportError:
            pass
        from transformers import AutoModelForCausalLM
        x = torch.tensor({x.tolist()})
        result = {{}}
        for path in {list(cases)!r}:
            model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
            with torch.no_grad():
                same = torch.equal(model(x).logits, torch.load(path + "/expected.pt"))
            result[path] = [type(model).__name__, type(model).__module__.startswith("transformers_modules"), same]
            if path.endswith("-packed"):  # a quantized head: the embedding reads its rows from the file
                quantized = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32,
                                                                 bitnet_lm_head="int8").eval()
                embedding = quantized.get_input_embeddings()
                with torch.no_grad():
                    same_rows = torch.equal(embedding(x), model.get_input_embeddings()(x))
                result[path].append(type(embedding).__name__.startswith("FileRows") and same_rows)
        print(json.dumps(result))
    """)
    env = {**os.environ, "PYTHONPATH": str(blocker), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {path: [name, True, True] + [True] * path.endswith("-packed") for path, name in cases.items()}


def test_conversion_errors_name_the_problem():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="cannot convert GPT2LMHeadModel: bitnet-hf converts .*Qwen3ForCausalLM"):
        convert_to_bitnet(gpt2)
    bitnet = convert_to_bitnet(tiny_model("llama"))
    with pytest.raises(ValueError, match="already a BitNet model"):
        convert_to_bitnet(bitnet)
    with pytest.raises(ValueError, match="not a SubLN placement"):
        convert_to_bitnet("/nonexistent/path", subln="pre")


def test_every_bitnet_class_subclasses_its_transformers_class():
    for fp_class, bitnet_class in BITNET_CLASS_FOR.items():
        assert issubclass(bitnet_class, fp_class)
        assert fp_class.__module__.startswith("transformers.models.")
        assert getattr(transformers, fp_class.__name__) is fp_class


def test_calibrated_gain_is_the_median_token_rms():
    model = tiny_model("llama")
    name = "model.layers.1.self_attn.o_proj"
    captured = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    batches = [{"input_ids": tokens(seed=s)} for s in range(3)]
    gains = calibrate_subln(model, [name], batches, eps=1e-6)[name]
    handle.remove()
    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured[:3]])
    token_rms = torch.sqrt(x.pow(2).mean(-1) + 1e-6)
    assert gains.shape == (x.shape[1],)
    assert torch.allclose(gains, torch.full_like(gains, token_rms.median().item()))
    with pytest.raises(ValueError, match="empty"):
        calibrate_subln(model, [name], [], eps=1e-6)


def test_calibration_ignores_padding():
    model = tiny_model("qwen3")
    name = "model.layers.0.mlp.down_proj"
    a, b = tokens(batch=1, length=9, seed=3), tokens(batch=1, length=5, seed=4)
    padded = torch.cat([a, torch.cat([b, torch.zeros(1, 4, dtype=torch.long)], 1)])
    mask = torch.cat([torch.ones(1, 9), torch.cat([torch.ones(1, 5), torch.zeros(1, 4)], 1)]).long()
    separate = calibrate_subln(model, [name], [{"input_ids": a}, {"input_ids": b}], eps=1e-6)[name]
    together = calibrate_subln(model, [name], [{"input_ids": padded, "attention_mask": mask}], eps=1e-6)[name]
    assert torch.allclose(separate, together, rtol=1e-4)


# Not Gemma 3: its post-attention / post-FFN norms undo any per-token scaling of the projection inputs, so an
# uncalibrated SubLN already costs it almost nothing there and calibration has nothing to win.
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_calibration_keeps_the_unquantized_model_closer_to_the_original(family):
    fp = tiny_model(family)
    x = tokens(batch=4, length=16, seed=7)
    batches = [{"input_ids": tokens(batch=4, length=16, seed=s)} for s in range(4)]
    with torch.no_grad():
        ref = fp(x).logits
        plain = convert_to_bitnet(fp, quantize=False)(x).logits
        calibrated = convert_to_bitnet(fp, quantize=False, calibration_batches=batches)(x).logits
    err_plain, err_cal = (plain - ref).norm() / ref.norm(), (calibrated - ref).norm() / ref.norm()
    assert err_cal < 0.5 * err_plain, (err_plain.item(), err_cal.item())


def test_loading_checks_the_weights_against_the_config(tmp_path):
    """A BitNet checkpoint loads exactly its model: a layer the weights lack is an error (not random weights); a
    task class may start its own head and leaves the causal LM's untied lm_head."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    model = bitnet_hf.convert_to_bitnet(tiny_model("qwen2"))
    assert not model.config.tie_word_embeddings
    bitnet_hf.save_checkpoint(model, tmp_path / "ckpt")
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ckpt", num_labels=2)
    assert classifier.score.weight.shape[0] == 2
    bitnet_hf.save_checkpoint(bitnet_hf.convert_to_bitnet(tiny_model("llama")), tmp_path / "llama")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="the weights do not match config.json .*missing model.layers.2"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
