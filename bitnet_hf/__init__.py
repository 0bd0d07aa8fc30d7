"""bitnet-hf: turn Hugging Face LLMs into 1.58-bit BitNet models with BitDistill, and run them small.

Importing this package registers the BitNet families with transformers' Auto classes; that needs only torch and
transformers' model code. The rest (conversion, training: transformers' Trainer, datasets, accelerate) is imported
on first use of its name, so a process that only loads and runs a BitNet model does not pay for training.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import transformers

from .models import CONFIG_CLASSES, MODEL_CLASSES
from .models.layers import BitLinear, PackedBitLinear, SubLN

if TYPE_CHECKING:
    from .convert import convert_to_bitnet, pack_bitnet, save_checkpoint
    from .distill import BitDistillConfig, BitDistillTrainer
    from .generation import compile_decoding
    from .gguf_export import export_gguf
    from .pretrain import continue_pretraining

__version__ = "0.1.0"

# public name -> module that defines it, imported on first access (PEP 562)
_LAZY = {"convert_to_bitnet": ".convert", "pack_bitnet": ".convert", "save_checkpoint": ".convert",
         "BitDistillConfig": ".distill", "BitDistillTrainer": ".distill", "compile_decoding": ".generation",
         "continue_pretraining": ".pretrain", "export_gguf": ".gguf_export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_auto_classes() -> None:
    for config_class in CONFIG_CLASSES:
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for model_class in MODEL_CLASSES:
        # register_for_auto_class (in each family module) already recorded which Auto class the model belongs to.
        getattr(transformers, model_class._auto_class).register(model_class.config_class, model_class, exist_ok=True)


_register_auto_classes()

__all__ = ["BitDistillConfig", "BitDistillTrainer", "BitLinear", "PackedBitLinear", "SubLN", "compile_decoding",
           "continue_pretraining", "convert_to_bitnet", "export_gguf", "pack_bitnet", "save_checkpoint"]
