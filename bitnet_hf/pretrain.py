"""BitDistill stage 2: continued pre-training of a BitNet model with the causal-LM loss on a general corpus."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments, default_data_collator

from .convert import save_trained_model
from .data import pack_corpus
from .distill import BitDistillConfig, BitDistillTrainer

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PretrainConfig(BitDistillConfig):
    """Stage 2's arguments: a ``BitDistillConfig`` whose distillation weights default to 0, the paper's stage 2
    (the causal-LM loss alone, over every token). Set ``logits_distill_weight`` (with a full-precision teacher)
    and ``quantization_warmup_steps`` to distill from the FP model and blend the quantizers in."""

    logits_distill_weight: float | None = field(default=0.0, metadata={
        "help": "weight of logits KD from the teacher (the FP model) over every token (default 0: off)"})
    attention_distill_weight: float | None = field(default=0.0, metadata={
        "help": "weight of the attention-relation KD (default 0: off)"})


def continue_pretraining(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         corpus: Dataset | IterableDataset, args: TrainingArguments, *, block_size: int = 512,
                         max_tokens: int | None = None, text_field: str = "text",
                         teacher: PreTrainedModel | str | None = None) -> Trainer:
    """Train ``model`` on ``corpus`` packed into ``block_size``-token blocks and return the finished ``Trainer``.

    ``max_tokens`` is a token budget: it sets ``args.max_steps`` to ``ceil(blocks / global batch)`` (give it or
    ``max_steps``, not both). Checkpointing, resuming (``args.resume_from_checkpoint``), schedulers and bf16 are
    the ``TrainingArguments``' own. The final model is saved atomically to ``<output_dir>/final`` with the tokenizer.

    With plain ``TrainingArguments`` the loss is the causal-LM cross-entropy (the paper's stage 2). With a
    ``PretrainConfig`` (or any ``BitDistillConfig``) the stage runs in ``BitDistillTrainer`` with its options, over
    every token of the blocks: ``quantization_warmup_steps`` blends the quantizers in, and
    ``logits_distill_weight`` adds logits KD from ``teacher`` (the full-precision model: dense soft targets instead
    of one-hot next tokens).
    """
    if teacher is not None and not isinstance(args, BitDistillConfig):
        raise ValueError("a teacher needs args=PretrainConfig(..., logits_distill_weight=...); plain "
                         "TrainingArguments train with the causal-LM loss alone")
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be >= 2")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and block_size > limit:
        raise ValueError(f"block_size={block_size} is longer than the model's max_position_embeddings={limit}")
    max_blocks = None
    if max_tokens is not None:
        if args.max_steps > 0:
            raise ValueError(f"give max_tokens ({max_tokens}) or max_steps ({args.max_steps}), not both")
        max_blocks = max_tokens // block_size
        if max_blocks < 1:
            raise ValueError(f"max_tokens={max_tokens} is less than one block of {block_size} tokens")
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        args.max_steps = math.ceil(max_blocks / global_batch)
    if isinstance(corpus, IterableDataset) and args.max_steps <= 0:
        raise ValueError("a streaming corpus has no length: give max_tokens or max_steps")
    packed = pack_corpus(corpus, tokenizer, block_size, text_field=text_field, max_blocks=max_blocks)
    if isinstance(packed, Dataset) and len(packed) == 0:
        raise ValueError(f"the corpus holds fewer than {block_size} tokens, not one block; use a smaller block_size")
    if isinstance(packed, Dataset):
        logger.info("continued pre-training on %d blocks of %d tokens (%.2fM tokens)", len(packed), block_size,
                    len(packed) * block_size / 1e6)
    if isinstance(args, BitDistillConfig):
        trainer: Trainer = BitDistillTrainer(model=model, teacher_model=teacher, args=args,
                                             train_dataset=packed.remove_columns("labels"), processing_class=tokenizer)
    else:
        trainer = Trainer(model=model, args=args, train_dataset=packed, data_collator=default_data_collator,
                          processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    out = save_trained_model(trainer, Path(args.output_dir) / "final")
    logger.info("saved the pre-trained model to %s", out)
    return trainer

