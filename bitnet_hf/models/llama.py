"""BitNet Llama (Llama 3.x, SmolLM2): the transformers Llama classes with BitNet linears and SubLN."""

from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel

from .base import BitNetConfigMixin, BitNetModelMixin


class BitNetLlamaConfig(BitNetConfigMixin, LlamaConfig):
    model_type = "bitnet_llama"


class BitNetLlamaModel(BitNetModelMixin, LlamaModel):
    config_class = BitNetLlamaConfig


class BitNetLlamaForCausalLM(BitNetModelMixin, LlamaForCausalLM):
    config_class = BitNetLlamaConfig


class BitNetLlamaForSequenceClassification(BitNetModelMixin, LlamaForSequenceClassification):
    config_class = BitNetLlamaConfig


BitNetLlamaConfig.register_for_auto_class()
BitNetLlamaModel.register_for_auto_class("AutoModel")
BitNetLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
BitNetLlamaForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
