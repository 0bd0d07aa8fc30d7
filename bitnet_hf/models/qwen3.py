"""BitNet Qwen3: the transformers Qwen3 classes with BitNet linears and SubLN."""

from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification, Qwen3Model

from .base import BitNetConfigMixin, BitNetModelMixin


class BitNetQwen3Config(BitNetConfigMixin, Qwen3Config):
    model_type = "bitnet_qwen3"


class BitNetQwen3Model(BitNetModelMixin, Qwen3Model):
    config_class = BitNetQwen3Config


class BitNetQwen3ForCausalLM(BitNetModelMixin, Qwen3ForCausalLM):
    config_class = BitNetQwen3Config


class BitNetQwen3ForSequenceClassification(BitNetModelMixin, Qwen3ForSequenceClassification):
    config_class = BitNetQwen3Config


BitNetQwen3Config.register_for_auto_class()
BitNetQwen3Model.register_for_auto_class("AutoModel")
BitNetQwen3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
BitNetQwen3ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
