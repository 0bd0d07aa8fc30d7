"""The one mechanism every BitNet family uses: a config mixin carrying the BitNet choices and a model mixin that
swaps the decoder's ``nn.Linear`` layers for BitNet ones before transformers finalises the model.

A family is then a handful of subclasses (see ``qwen3.py``): its transformers config and model classes with
these mixins in front. Nothing of the family's modeling code is copied.

This file only imports torch, transformers and its own folder: it travels into saved checkpoints as remote code.
"""

from __future__ import annotations

import ctypes
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

from .layers import (
    LM_HEAD_MODES,
    BitLinear,
    FileRowsEmbedding,
    FusedProjections,
    PackedBitLinear,
    QuantizedLMHead,
    SubLN,
)
from .quantization import WEIGHT_SCHEMES, WeightScheme

SUBLN_PLACEMENTS = ("paper", "all", "none")


@dataclass(kw_only=True, repr=False)
class BitNetConfigMixin:
    """BitNet choices, added as fields to a family's config.

    Args:
        bitnet_subln: where SubLN (an RMSNorm on a projection's input) goes: ``"paper"`` in front of the attention
            output and FFN down projections (BitDistill), ``"all"`` in front of every decoder projection,
            ``"none"`` nowhere.
        bitnet_quantize: quantize weights (ternary) and activations (int8) in the forward. ``False`` is for checks:
            the model then computes exactly what its full-precision family computes, plus SubLN.
        bitnet_packed: deployment format: decoder projections hold 2-bit packed ternary weights and a scale
            (``PackedBitLinear``) instead of latent full-precision weights (``BitLinear``).
        bitnet_lm_head: how a packed causal LM multiplies with its output head on CPU: ``"full"`` with the stored
            weight (exact), ``"int8"`` or ``"int4"`` with a quantized copy made at load (``QuantizedLMHead``;
            faster, at the accuracy cost measured in the README), or ``"int4_exact_top"``: int4, with each token's
            64 highest logits recomputed from the stored rows (greedy decoding as with the exact head). The file is the same for all three; choose at
            load with ``from_pretrained(path, bitnet_lm_head="int8")``, which then also leaves the bf16
            embedding matrix in the file, memory-mapped, and reads looked-up rows from it (see
            ``BitNetModelMixin.from_pretrained``).
        bitnet_weight_scale: the ternary weights' scales (``WeightScheme``): ``"tensor"`` (one per matrix, the
            paper's), ``"row"`` (one per output row) or ``"group"`` (one per ``bitnet_group_size`` input columns of a
            row, Block-Quant).
        bitnet_group_size: the columns of a group (a multiple of 32) with ``bitnet_weight_scale="group"``; else 0.
        bitnet_weight_scheme: how the conversion chose the initial ternary values: ``"absmean"`` rounding (the
            paper's), ``"gptq"`` (``bitnet_hf.gptq``) or ``"awq"`` (``bitnet_hf.awq``). A record only: training and packing round the latent
            weights by absmean either way.
    """

    bitnet_subln: str = "paper"
    bitnet_quantize: bool = True
    bitnet_packed: bool = False
    bitnet_lm_head: str = "full"
    bitnet_weight_scale: str = "tensor"
    bitnet_group_size: int = 0
    bitnet_weight_scheme: str = "absmean"

    def __post_init__(self, **kwargs: Any) -> None:
        if self.bitnet_subln not in SUBLN_PLACEMENTS:
            raise ValueError(f"bitnet_subln={self.bitnet_subln!r} is not a SubLN placement; use one of {SUBLN_PLACEMENTS}")
        if self.bitnet_lm_head not in LM_HEAD_MODES:
            raise ValueError(f"bitnet_lm_head={self.bitnet_lm_head!r} is not one of {LM_HEAD_MODES}")
        WeightScheme.of(self)  # a ValueError for a scale layout that does not exist
        if self.bitnet_weight_scheme not in WEIGHT_SCHEMES:
            raise ValueError(f"bitnet_weight_scheme={self.bitnet_weight_scheme!r} is not one of {WEIGHT_SCHEMES}")
        if self.bitnet_packed and not self.bitnet_quantize:
            raise ValueError("bitnet_packed=True stores quantized weights, so it needs bitnet_quantize=True")
        super().__post_init__(**kwargs)


class BitNetModelMixin:
    """Put in front of a transformers ``PreTrainedModel`` subclass of a family to make it a BitNet model.

    Every ``nn.Linear`` inside the decoder blocks (``base_model.layers``) becomes a ``BitLinear`` (or a
    ``PackedBitLinear`` when ``config.bitnet_packed``); embeddings and the output head stay full precision.
    """

    # Projections that get a SubLN with the paper's placement; a family with other names overrides this.
    subln_targets: tuple[str, ...] = ("o_proj", "down_proj")
    # Sibling projections that read the same input; packed ones run as one kernel call (see FusedProjections).
    fused_projections: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

    def post_init(self) -> None:
        config = self.config
        eps = config.rms_norm_eps
        scheme = WeightScheme.of(config)
        for parent in self.base_model.layers.modules():
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear:
                    continue
                wants_norm = config.bitnet_subln == "all" or (config.bitnet_subln == "paper" and name in self.subln_targets)
                norm_eps = eps if wants_norm else None
                scheme.check(child.in_features, name)
                if config.bitnet_packed:
                    new: nn.Module = PackedBitLinear(child.in_features, child.out_features, child.bias is not None,
                                                     device=child.weight.device, dtype=child.weight.dtype,
                                                     sub_norm_eps=norm_eps, scheme=scheme)
                else:
                    new = BitLinear.from_linear(child, sub_norm_eps=norm_eps, quantize=config.bitnet_quantize,
                                                scheme=scheme)
                setattr(parent, name, new)
            if config.bitnet_packed:
                for names in self.fused_projections:
                    members = [getattr(parent, n, None) for n in names]
                    if (all(isinstance(m, PackedBitLinear) and m.sub_norm is None for m in members)
                            and len({m.in_features for m in members}) == 1):
                        group = FusedProjections(members)
                        for m in members:
                            m.fused = group
        if config.bitnet_lm_head not in LM_HEAD_MODES:  # set after __post_init__ by from_pretrained's kwargs
            raise ValueError(f"bitnet_lm_head={config.bitnet_lm_head!r} is not one of {LM_HEAD_MODES}")
        if config.bitnet_packed and config.bitnet_lm_head != "full" and isinstance(getattr(self, "lm_head", None),
                                                                                  nn.Linear):
            self.lm_head = QuantizedLMHead.from_linear(self.lm_head, config.bitnet_lm_head)
        super().post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``from_pretrained``; with a quantized head (``bitnet_lm_head="int8"|"int4"|...``) on CPU it then
        makes the head's quantized copy and maps the full-precision embedding/head matrix from the safetensors file
        (copy-on-write, read-only use) instead of holding it in RAM. The embedding reads the rows it looks up from
        the file (``FileRowsEmbedding``), so only those enter memory; gradients and ``save_pretrained`` still see
        the exact stored matrix (saving first copies it into RAM, so overwriting the very file it maps is safe).

        Unlike transformers' default, weights of the checkpoint's model that the file lacks (a layer ``config.json``
        declares but the weights do not hold), weights it holds that the model has no place for, and weights of
        another shape are an error, not a warning with random initialisation: a BitNet checkpoint holds exactly its
        model. A task class may start its own head fresh (``score`` of ``...ForSequenceClassification``, also of
        another shape with ``ignore_mismatched_sizes``), and a class without ``lm_head`` leaves the stored one."""
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
        except RuntimeError as error:  # transformers' "size mismatch ... ignore_mismatched_sizes" report
            if "mismatch" not in str(error):
                raise
            raise ValueError(f"{pretrained_model_name_or_path}: the weights do not match config.json (tensors of "
                             f"another shape: {str(error).strip()[:400]}); the checkpoint is damaged or its config.json "
                             "was edited: save the model again") from None
        own_head = {name for name, _ in model.named_children()} - {model.base_model_prefix, "lm_head"}
        if model.base_model is model:
            own_head = set()

        def outside_own_head(keys: Any) -> list[str]:
            names = (str(k[0] if isinstance(k, tuple) else k) for k in keys)
            return sorted(k for k in names if k.split(".")[0] not in own_head)

        missing = outside_own_head(info.get("missing_keys", ()))
        unexpected = sorted(k for k in info.get("unexpected_keys", ())
                            if hasattr(model, "lm_head") or not k.startswith("lm_head."))
        mismatched = outside_own_head(info.get("mismatched_keys", ()))
        if missing or unexpected or mismatched:
            found = "; ".join(f"{what} {_first(keys)}" for what, keys in (
                ("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)) if keys)
            raise ValueError(f"{pretrained_model_name_or_path}: the weights do not match config.json ({found}); the "
                             "checkpoint is damaged or its config.json was edited: save the model again")
        loaded = (model, info) if wants_info else model
        head = getattr(model, "lm_head", None)
        if isinstance(head, QuantizedLMHead) and head.weight.device.type == "cpu":
            options = {k: kwargs[k] for k in ("subfolder", "revision", "cache_dir") if kwargs.get(k) is not None}
            files = _safetensors_files(str(pretrained_model_name_or_path), options)
            embedding = model.get_input_embeddings()
            parameters = [embedding.weight, head.weight]
            # The quantized copy reads the whole matrix through a first mapping, released right after, so that none
            # of the pages it read stays resident; the parameters then point at a second, untouched one.
            head.prepare(head.weight.dtype, _file_views(model, parameters, files).get(id(head.weight), (None,))[0])
            views = _file_views(model, parameters, files)
            model._bitnet_mapped = []
            for parameter in parameters:
                if id(parameter) in views:
                    view, file = views.pop(id(parameter))
                    parameter.data = view
                    model._bitnet_mapped.append(parameter)
                    offset = view.storage_offset() * view.element_size()
                    if parameter is embedding.weight and isinstance(embedding, nn.Embedding):
                        FileRowsEmbedding.attach(embedding, file, offset)
                    if parameter is head.weight:
                        head.rows_source = (str(file), file.stat().st_ino, offset)
            _return_free_memory()
        return loaded

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        FileRowsEmbedding.detach(self.get_input_embeddings())
        if isinstance(getattr(self, "lm_head", None), QuantizedLMHead):
            self.lm_head.rows_source = None
        for parameter in getattr(self, "_bitnet_mapped", ()):
            parameter.data = parameter.data.clone()  # into RAM: the save may overwrite the mapped file
        self._bitnet_mapped = []
        return super().save_pretrained(*args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, SubLN):
            init.ones_(module.weight)
        elif isinstance(module, PackedBitLinear):
            # Packed weights always come from a checkpoint; a fresh one is all zeros with unit scale.
            init.zeros_(module.weight)
            init.ones_(module.weight_scale)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """transformers' ``push_to_hub``, with the BitNet model card where bitnet-hf is installed.

        With the plugin this is ``bitnet_hf.hub.push_model`` (same arguments, plus the card's ``results``,
        ``base_model`` and ``license``; returns the repository URL). A model loaded as remote code where the plugin
        is not installed pushes with transformers' own ``push_to_hub`` and its generic card.
        """
        # Imported here, inside try (which transformers' remote-code import check skips): this file travels as
        # remote code, where bitnet_hf may not be installed.
        try:
            from bitnet_hf.hub import push_model
        except ImportError:
            return super().push_to_hub(repo_id, **kwargs)
        return push_model(self, repo_id, **kwargs)


def _first(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _return_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``; elsewhere nothing): building the
    quantized head leaves tens of MB of freed temporaries between long-lived blocks, which RSS would keep."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _safetensors_files(path: str, options: dict[str, Any]) -> list[Path]:
    """The safetensors files of a local folder or an already downloaded Hub checkpoint (no network); none where
    they cannot be found (the matrices then simply stay in RAM)."""
    lookup = dict(options, local_files_only=True, _raise_exceptions_for_missing_entries=False)
    try:
        index = cached_file(path, SAFE_WEIGHTS_INDEX_NAME, **lookup)
        names = sorted(set(json.loads(Path(index).read_text())["weight_map"].values())) if index else [SAFE_WEIGHTS_NAME]
        files = [cached_file(path, name, **lookup) for name in names]
    except (OSError, ValueError, KeyError):
        return []
    return [Path(f) for f in files if f]


def _file_views(model: nn.Module, parameters: list[nn.Parameter], files: list[Path]
                ) -> dict[int, tuple[torch.Tensor, Path]]:
    """For each of ``parameters`` whose stored dtype and shape are the loaded ones, a view of its tensor in the
    safetensors ``files`` through a private, copy-on-write memory map (one per file), and that file, keyed by ``id``.
    The views are checked against the loaded values (first and last row), since they replace them."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):  # a tied matrix has several names
        names.setdefault(id(p), []).append(name)
    views: dict[int, tuple[torch.Tensor, Path]] = {}
    for file in files:
        with file.open("rb") as f:
            header_size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(header_size))
        storage = None
        for parameter in parameters:
            info = next((header[n] for n in names.get(id(parameter), []) if n in header), None)
            if (id(parameter) in views or info is None or _SAFETENSORS_DTYPES.get(info["dtype"]) != parameter.dtype
                    or list(parameter.shape) != info["shape"] or not parameter.is_contiguous()):
                continue
            start = 8 + header_size + info["data_offsets"][0]
            if start % parameter.element_size():
                continue
            if storage is None:
                storage = torch.UntypedStorage.from_file(str(file), shared=False, nbytes=file.stat().st_size)
            view = torch.empty(0, dtype=parameter.dtype).set_(storage, start // parameter.element_size(),
                                                               parameter.shape, parameter.stride())
            if torch.equal(view[:1], parameter[:1]) and torch.equal(view[-1:], parameter[-1:]):
                views[id(parameter)] = (view, file)
    return views
