"""bitnet-hf: turn Hugging Face LLMs into 1.58-bit BitNet models with BitDistill, and run them small.

Importing this package registers the BitNet families with transformers' Auto classes.
"""

import transformers

from .convert import convert_to_bitnet, pack_bitnet, save_checkpoint
from .distill import BitDistillConfig, BitDistillTrainer
from .generation import compile_decoding
from .pretrain import continue_pretraining
from .models import CONFIG_CLASSES, MODEL_CLASSES
from .models.layers import BitLinear, PackedBitLinear, SubLN

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    for config_class in CONFIG_CLASSES:
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for model_class in MODEL_CLASSES:
        # register_for_auto_class (in each family module) already recorded which Auto class the model belongs to.
        getattr(transformers, model_class._auto_class).register(model_class.config_class, model_class, exist_ok=True)


_register_auto_classes()

__all__ = ["BitDistillConfig", "BitDistillTrainer", "BitLinear", "PackedBitLinear", "SubLN", "compile_decoding",
           "continue_pretraining", "convert_to_bitnet", "pack_bitnet", "save_checkpoint"]
