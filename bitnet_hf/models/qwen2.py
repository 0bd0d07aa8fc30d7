"""BitNet Qwen2 (Qwen2.5): the transformers Qwen2 classes with BitNet linears and SubLN."""

from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2Model

from .base import BitNetConfigMixin, BitNetModelMixin


class BitNetQwen2Config(BitNetConfigMixin, Qwen2Config):
    model_type = "bitnet_qwen2"


class BitNetQwen2Model(BitNetModelMixin, Qwen2Model):
    config_class = BitNetQwen2Config


class BitNetQwen2ForCausalLM(BitNetModelMixin, Qwen2ForCausalLM):
    config_class = BitNetQwen2Config


class BitNetQwen2ForSequenceClassification(BitNetModelMixin, Qwen2ForSequenceClassification):
    config_class = BitNetQwen2Config


BitNetQwen2Config.register_for_auto_class()
BitNetQwen2Model.register_for_auto_class("AutoModel")
BitNetQwen2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
BitNetQwen2ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
