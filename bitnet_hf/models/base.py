"""The one mechanism every BitNet family uses: a config mixin carrying the BitNet choices and a model mixin that
swaps the decoder's ``nn.Linear`` layers for BitNet ones before transformers finalises the model.

A family is then a handful of subclasses (see ``qwen3.py``): its transformers config and model classes with
these mixins in front. Nothing of the family's modeling code is copied.

This file only imports torch, transformers and its own folder: it travels into saved checkpoints as remote code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import initialization as init

from .layers import LM_HEAD_MODES, BitLinear, FusedProjections, PackedBitLinear, QuantizedLMHead, SubLN

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
            faster, at the accuracy cost measured in the README). The file is the same for all three; choose at
            load with ``from_pretrained(path, bitnet_lm_head="int8")``.
    """

    bitnet_subln: str = "paper"
    bitnet_quantize: bool = True
    bitnet_packed: bool = False
    bitnet_lm_head: str = "full"

    def __post_init__(self, **kwargs: Any) -> None:
        if self.bitnet_subln not in SUBLN_PLACEMENTS:
            raise ValueError(f"bitnet_subln={self.bitnet_subln!r} is not a SubLN placement; use one of {SUBLN_PLACEMENTS}")
        if self.bitnet_lm_head not in LM_HEAD_MODES:
            raise ValueError(f"bitnet_lm_head={self.bitnet_lm_head!r} is not one of {LM_HEAD_MODES}")
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
        for parent in self.base_model.layers.modules():
            for name, child in list(parent.named_children()):
                if type(child) is not nn.Linear:
                    continue
                wants_norm = config.bitnet_subln == "all" or (config.bitnet_subln == "paper" and name in self.subln_targets)
                norm_eps = eps if wants_norm else None
                if config.bitnet_packed:
                    new: nn.Module = PackedBitLinear(child.in_features, child.out_features, child.bias is not None,
                                                     device=child.weight.device, dtype=child.weight.dtype,
                                                     sub_norm_eps=norm_eps)
                else:
                    new = BitLinear.from_linear(child, sub_norm_eps=norm_eps, quantize=config.bitnet_quantize)
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
