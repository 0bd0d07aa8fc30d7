"""Compiled decoding on CPU: ``generate`` with a static KV cache and ``torch.compile``'d decode steps.

transformers compiles the decode step of ``generate`` when the cache is static and a ``CompileConfig`` is set, but
by default on CUDA only. On CPU that compilation removes most of the eager per-token work (Python, dispatch, one
kernel per small op), which for a packed BitNet model is most of the time left once the ternary linears are fast:
``bitnet-hf bench`` measures it side by side. The packed linears' C++ kernel stays one opaque op in the graph.

On CPU the model's SDPA attention is also swapped for :func:`decode_attention`, registered with transformers'
``AttentionInterface``: SDPA itself, except for one query token, where PyTorch's CPU flash-attention kernel costs
about 0.27 ms a layer (7 ms a token on 28 layers, a quarter of the compiled decode step) for a few microseconds of
arithmetic, and plain matmuls with a float32 softmax compile into a handful of fused loops.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface, CompileConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

DECODE_ATTENTION = "bitnet_sdpa_decode"


def decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for one query token on CPU (decoding): ``softmax(q k^T * scaling +
    mask) v`` with the softmax in float32, as transformers' eager attention computes it. Takes SDPA's masks."""
    if query.shape[2] != 1 or query.device.type != "cpu" or dropout or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(_computed_once(query), key.transpose(2, 3)) * scale
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = _computed_once(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype))
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _computed_once(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself; under ``torch.compile``, a tensor inductor computes into a buffer before its users run.
    Inductor turns a matmul with one query row into a sum of products and inlines the producers of its operands
    into that loop: the query's normalisation and rotary embedding (vector ``cos`` and ``sin`` for every element)
    were then computed again for every cached position, and the softmax's ``exp`` for every block of the head
    dimension: ~0.15 ms a layer on a 71-position cache, 4 ms a token on Qwen3-0.6B's 28 layers, growing with the
    cache. ``inductor_force_stride_order`` is inductor's own prim for "this tensor, in a buffer of these strides"
    (a no-op when it already has them)."""
    if not torch.compiler.is_compiling():
        return x
    from torch._inductor import inductor_prims  # noqa: F401  (registers the prim; compiling has imported inductor)

    return torch.ops.prims.inductor_force_stride_order(x, x.stride())


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


def compile_decoding(model: PreTrainedModel, **compile_options: Any) -> PreTrainedModel:
    """Make ``model.generate`` decode with a static cache and ``torch.compile``, on every device; returns ``model``.

    ``compile_options`` go to :class:`transformers.CompileConfig` (``backend``, ``mode``, ``fullgraph``, ...). The
    first ``generate`` compiles (about a minute for a 0.6B model on 2 cores; again when the batch size or the
    cache length grows); later calls reuse the compiled step. A CPU model with SDPA attention gets
    :func:`decode_attention` (SDPA but for one query token). Results equal eager ones up to the float rounding of
    fused kernels (as for any compiled bf16 model, greedy text can then differ after near-ties).

    On CPU, without ``mode`` or ``options``, the decode step is this model's own function (its own code object,
    so its compiled graphs are never tried for another model) and compiles without guards on the model's modules
    (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``): checking them costs ~2.5 ms a token on the
    Qwen3-0.6B shape, a tenth of a compiled step. So the compiled step assumes the model does not change: after
    changing it (its dtype, a layer, ``train()``), call ``compile_decoding`` again, which compiles a new step.
    Undo with ``model.generation_config.compile_config = None``, ``cache_implementation = None`` and
    ``model.set_attn_implementation("sdpa")``.
    """
    model.__dict__.pop("get_compiled_call", None)  # a step from an earlier call
    cpu_defaults = model.device.type == "cpu" and not {"mode", "options"} & set(compile_options)
    if cpu_defaults:  # mode "reduce-overhead" (transformers' default) is CUDA graphs: nothing on CPU
        compile_options = {**compile_options, "mode": None,
                           "options": {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}}
    config = CompileConfig(**compile_options)
    config._compile_all_devices = True  # transformers' switch to compile off CUDA too
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = config
    if cpu_defaults:
        step = torch.compile(_own_step(model), **config.to_dict())
        default = type(model).get_compiled_call.__get__(model)
        model.get_compiled_call = lambda compile_config=None: (
            step if compile_config in (None, config) else default(compile_config))
    if model.device.type == "cpu" and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(DECODE_ATTENTION)
    return model


def _own_step(model: PreTrainedModel) -> Callable[..., Any]:
    """``model(...)`` as a function with a code object of its own: dynamo keeps compiled graphs per code object,
    so graphs compiled without module guards are only ever tried for this model."""
    def step(*args: Any, **kwargs: Any) -> Any:
        return model(*args, **kwargs)

    code = step.__code__.replace(co_name=f"decode_step_{id(model):x}")
    return types.FunctionType(code, step.__globals__, code.co_name, None, step.__closure__)
