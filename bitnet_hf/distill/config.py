"""The options of BitDistill stage 3: ``DistillOptions`` (the recipe's choices, one source for the trainer, the
pipeline and the model card) and ``BitDistillConfig`` (``TrainingArguments`` plus those choices)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from ..warmup import WARMUP_SHAPES
from .losses import RELATION_KINDS

# The paper's weights (lambda for logits KD, gamma for attention-relation KD) per kind of task.
PRESETS: dict[str, tuple[float, float]] = {"classification": (10.0, 1e5), "summarization": (1.0, 1e3)}
LOSS_TOKENS = ("all", "completion")
LOGITS_DISTILL_TOKENS = ("loss", "all")


@dataclass(kw_only=True)
class DistillOptions:
    """What BitDistill's stage 3 does beside plain fine-tuning: ``L = CE + lambda * logits_KD + gamma *
    attention_KD``, and how the quantizers come in. ``BitDistillConfig`` and the pipeline's arguments both are
    these options (declared here once, with their defaults and checks); the model card lists them.

    Args:
        distill_preset: ``"classification"`` (lambda 10, gamma 1e5) or ``"summarization"`` (lambda 1, gamma 1e3);
            it fills whichever of the two weights is left unset. Without a preset: classification's.
        logits_distill_weight: lambda, the weight of ``KL(teacher || student)`` of the output distributions at
            temperature ``distill_temperature`` (times ``T^2``). 0 turns it off.
        attention_distill_weight: gamma, the weight of the MiniLM-v2 multi-head Q/K/V relation KD at one layer.
            0 turns it off. With both weights 0 and no teacher the trainer does plain fine-tuning (BitNet-SFT).
        distill_temperature: ``T`` of the logits KD.
        attention_distill_layer: the layer whose Q/K/V relations are distilled, the same index in student and
            teacher (negative counts from the end). Default: the layer at 80% of each model's depth (22 of 28).
        relation_heads: relation heads the concatenated Q/K/V heads are re-split into (must divide every Q/K/V
            width of both models); the same count on both sides makes a teacher of another width usable.
        relation_kind: ``"scaled_dot"`` (``softmax(A A^T / sqrt(d_r))``, MiniLM-v2 and the paper) or ``"cosine"``
            (cosine similarity at temperature 1, the authors' code).
        qkv_weights: weights of the Q, K and V relation terms.
        hidden_distill_weight: the weight of hidden-state KD: the MSE between the RMS-normalised outputs of every
            student layer and of the teacher layer at the same relative depth, averaged over layers and real tokens
            (needs the same hidden width). 0 (default, the paper) turns it off.
        logits_distill_tokens: the tokens logits KD counts: ``"loss"``, the ones CE counts (``loss_tokens``), or
            ``"all"`` real tokens, prompt included (the authors' code: dozens of soft targets per classification
            example instead of the answer's two).
        quantization_warmup_steps: optimizer steps over which the BitNet quantizers are blended in, from full
            precision to ternary (``bitnet_hf.warmup``), or a fraction of the stage's steps when below 1 (like
            ``warmup_steps``); 0 (default): ternary from the first step.
        quantization_warmup_shape: how the strength rises over the warm-up: ``"linear"`` (default) or
            ``"cubic"`` (``1 - (1 - t)^3``, gradual pruning's schedule).
        full_precision_lr_ratio: the learning rate of the parameters that stay full precision (embeddings, the
            head, norms, SubLN gains) as a fraction of ``learning_rate``, which the ternary layers' latent weights
            train at. 1 (default): one learning rate for all.
    """

    distill_preset: str | None = field(default=None, metadata={
        "help": "classification (lambda 10, gamma 1e5) or summarization (lambda 1, gamma 1e3)",
        "choices": sorted(PRESETS)})
    logits_distill_weight: float | None = field(default=None, metadata={
        "help": "lambda, weight of the logits KD (default: from the preset, 10)"})
    attention_distill_weight: float | None = field(default=None, metadata={
        "help": "gamma, weight of the attention-relation KD (default: from the preset, 1e5)"})
    distill_temperature: float = field(default=5.0, metadata={"help": "temperature of the logits KD"})
    attention_distill_layer: int | None = field(default=None, metadata={
        "help": "layer for the relation KD, negative from the end (default: 80%% of the depth)"})
    relation_heads: int = field(default=32, metadata={"help": "relation heads Q/K/V are re-split into"})
    relation_kind: str = field(default="scaled_dot", metadata={
        "help": "scaled_dot (MiniLM-v2, the paper) or cosine (the authors' code)", "choices": list(RELATION_KINDS)})
    qkv_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0], metadata={
        "help": "weights of the Q, K, V relation terms"})
    hidden_distill_weight: float = field(default=0.0, metadata={
        "help": "weight of the hidden-state KD (per-layer MSE of RMS-normalised hidden states; 0: off)"})
    logits_distill_tokens: str = field(default="loss", metadata={
        "help": "tokens logits KD counts: loss (the CE tokens) or all real tokens, prompt included",
        "choices": list(LOGITS_DISTILL_TOKENS)})
    quantization_warmup_steps: float = field(default=0, metadata={
        "help": "steps over which the quantizers are blended in from full precision, or a fraction of the stage's "
        "steps when < 1 (0: ternary from the start)"})
    quantization_warmup_shape: str = field(default="linear", metadata={
        "help": "how the quantization strength rises over the warm-up: linear, or cubic (1 - (1 - t)^3)",
        "choices": list(WARMUP_SHAPES)})
    full_precision_lr_ratio: float = field(default=1.0, metadata={
        "help": "learning rate of the full-precision parameters (embeddings, head, norms) as a fraction of "
        "learning_rate, which the ternary layers train at (1: one learning rate)"})

    def __post_init__(self) -> None:
        if self.distill_preset is not None and self.distill_preset not in PRESETS:
            raise ValueError(f"distill_preset={self.distill_preset!r} is not one of {sorted(PRESETS)}")
        lam, gamma = PRESETS[self.distill_preset or "classification"]
        if self.logits_distill_weight is None:
            self.logits_distill_weight = lam
        if self.attention_distill_weight is None:
            self.attention_distill_weight = gamma
        for name in ("logits_distill_weight", "attention_distill_weight", "hidden_distill_weight",
                     "quantization_warmup_steps", "full_precision_lr_ratio"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value} must be a finite number >= 0")
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature={self.distill_temperature} must be > 0")
        if self.relation_heads < 1:
            raise ValueError(f"relation_heads={self.relation_heads} must be >= 1")
        if self.relation_kind not in RELATION_KINDS:
            raise ValueError(f"relation_kind={self.relation_kind!r} is not one of {RELATION_KINDS}")
        self.qkv_weights = [float(w) for w in self.qkv_weights]
        if len(self.qkv_weights) != 3 or min(self.qkv_weights) < 0:
            raise ValueError(f"qkv_weights={self.qkv_weights} must be three weights >= 0 (Q, K, V)")
        if self.quantization_warmup_shape not in WARMUP_SHAPES:
            raise ValueError(f"quantization_warmup_shape={self.quantization_warmup_shape!r} is not one of "
                             f"{WARMUP_SHAPES}")
        if self.logits_distill_tokens not in LOGITS_DISTILL_TOKENS:
            raise ValueError(f"logits_distill_tokens={self.logits_distill_tokens!r} is not one of "
                             f"{LOGITS_DISTILL_TOKENS}")

    def distill_options(self) -> dict[str, Any]:
        """These options as a dict (for another ``DistillOptions``: ``BitDistillConfig(**options, ...)``)."""
        return {f.name: getattr(self, f.name) for f in fields(DistillOptions)}


@dataclass(kw_only=True)
class BitDistillConfig(TrainingArguments, DistillOptions):
    """Training arguments for ``BitDistillTrainer``: every ``TrainingArguments`` field, every ``DistillOptions``
    field (the distillation choices, with the paper's defaults), and:

    Args:
        loss_tokens: the tokens CE counts: ``"all"`` real (non-padding) tokens, or ``"completion"`` tokens only
            (prompt/completion data). Default: ``"completion"`` when the dataset has a completion mask, else
            ``"all"``. The relation KD always spans all real tokens, prompt included.
        max_length: examples given as ``prompt``/``completion`` text are tokenized and cut to this many tokens.
    """

    loss_tokens: str | None = field(default=None, metadata={
        "help": "tokens CE counts: all or completion (default: completion for prompt/completion data)",
        "choices": list(LOSS_TOKENS)})
    max_length: int = field(default=512, metadata={"help": "tokens per example when the trainer tokenizes text"})
    # Evaluation reports the loss and its terms; gathering every eval logit (the Trainer's default) costs
    # batch x length x vocab floats per step for nothing here.
    prediction_loss_only: bool = field(default=True, metadata={"help": "evaluate the loss only, keep no logits"})
    # The collator needs the dataset's own columns (completion_mask, prompt/completion text).
    remove_unused_columns: bool = field(default=False, metadata={"help": "drop dataset columns the model's forward "
                                                                 "does not take (keep False for BitDistillTrainer)"})

    def __post_init__(self) -> None:
        DistillOptions.__post_init__(self)
        if self.loss_tokens is not None and self.loss_tokens not in LOSS_TOKENS:
            raise ValueError(f"loss_tokens={self.loss_tokens!r} is not one of {LOSS_TOKENS}")
        if self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} must be >= 2")
        if self.max_steps == 0:
            raise ValueError("max_steps=0 trains nothing: give a positive number of steps, or -1 to train "
                             "num_train_epochs epochs")
        TrainingArguments.__post_init__(self)
