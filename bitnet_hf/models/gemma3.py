"""BitNet Gemma 3 (text model): the transformers Gemma 3 text classes with BitNet linears and SubLN."""

from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Gemma3TextForSequenceClassification, Gemma3TextModel

from .base import BitNetConfigMixin, BitNetModelMixin


class BitNetGemma3Config(BitNetConfigMixin, Gemma3TextConfig):
    model_type = "bitnet_gemma3"


class BitNetGemma3Model(BitNetModelMixin, Gemma3TextModel):
    config_class = BitNetGemma3Config


class BitNetGemma3ForCausalLM(BitNetModelMixin, Gemma3ForCausalLM):
    config_class = BitNetGemma3Config


class BitNetGemma3ForSequenceClassification(BitNetModelMixin, Gemma3TextForSequenceClassification):
    config_class = BitNetGemma3Config


BitNetGemma3Config.register_for_auto_class()
BitNetGemma3Model.register_for_auto_class("AutoModel")
BitNetGemma3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
BitNetGemma3ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
