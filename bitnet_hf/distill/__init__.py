"""BitDistill stage 3: distillation losses, Q/K/V capture and the ``BitDistillTrainer``."""

from .capture import QKVCapture
from .config import BitDistillConfig
from .losses import attention_relation_distillation, logits_distillation
from .trainer import BitDistillTrainer

__all__ = ["BitDistillConfig", "BitDistillTrainer", "QKVCapture", "attention_relation_distillation",
           "logits_distillation"]
