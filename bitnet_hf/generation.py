"""Compiled decoding on CPU: ``generate`` with a static KV cache and ``torch.compile``'d decode steps.

transformers compiles the decode step of ``generate`` when the cache is static and a ``CompileConfig`` is set, but
by default on CUDA only. On CPU that compilation removes most of the eager per-token work (Python, dispatch, one
kernel per small op), which for a packed BitNet model is most of the time left once the ternary linears are fast:
``bitnet-hf bench`` measures it side by side. The packed linears' C++ kernel stays one opaque op in the graph.
"""

from __future__ import annotations

from typing import Any

from transformers import CompileConfig, PreTrainedModel


def compile_decoding(model: PreTrainedModel, **compile_options: Any) -> PreTrainedModel:
    """Make ``model.generate`` decode with a static cache and ``torch.compile``, on every device; returns ``model``.

    ``compile_options`` go to :class:`transformers.CompileConfig` (``backend``, ``mode``, ``fullgraph``, ...). The
    first ``generate`` compiles (about a minute for a 0.6B model on 2 cores; again when the batch size or the
    cache length grows); later calls reuse the compiled step. Results equal eager ones up to the float rounding of
    fused kernels (as for any compiled bf16 model, greedy text can then differ after near-ties). Undo with
    ``model.generation_config.compile_config = None`` and ``cache_implementation = None``.
    """
    config = CompileConfig(**compile_options)
    config._compile_all_devices = True  # transformers' switch to compile off CUDA too
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = config
    return model
