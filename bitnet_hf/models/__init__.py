"""BitNet model families. This folder is self-contained (torch + transformers only, same-folder relative imports):
a saved checkpoint carries the files a model needs, so it loads with ``trust_remote_code=True`` alone."""

from transformers import PreTrainedConfig, PreTrainedModel

from .gemma3 import BitNetGemma3Config, BitNetGemma3ForCausalLM, BitNetGemma3ForSequenceClassification, BitNetGemma3Model
from .llama import BitNetLlamaConfig, BitNetLlamaForCausalLM, BitNetLlamaForSequenceClassification, BitNetLlamaModel
from .qwen2 import BitNetQwen2Config, BitNetQwen2ForCausalLM, BitNetQwen2ForSequenceClassification, BitNetQwen2Model
from .qwen3 import BitNetQwen3Config, BitNetQwen3ForCausalLM, BitNetQwen3ForSequenceClassification, BitNetQwen3Model

CONFIG_CLASSES: tuple[type[PreTrainedConfig], ...] = (
    BitNetQwen3Config, BitNetQwen2Config, BitNetLlamaConfig, BitNetGemma3Config,
)
MODEL_CLASSES: tuple[type[PreTrainedModel], ...] = (
    BitNetQwen3Model, BitNetQwen3ForCausalLM, BitNetQwen3ForSequenceClassification,
    BitNetQwen2Model, BitNetQwen2ForCausalLM, BitNetQwen2ForSequenceClassification,
    BitNetLlamaModel, BitNetLlamaForCausalLM, BitNetLlamaForSequenceClassification,
    BitNetGemma3Model, BitNetGemma3ForCausalLM, BitNetGemma3ForSequenceClassification,
)
# The full-precision transformers class each BitNet class subclasses -> the BitNet class.
BITNET_CLASS_FOR: dict[type[PreTrainedModel], type[PreTrainedModel]] = {cls.__bases__[-1]: cls for cls in MODEL_CLASSES}
