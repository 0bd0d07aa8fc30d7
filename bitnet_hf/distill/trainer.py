"""``BitDistillTrainer``: BitDistill stage 3 (and plain BitNet-SFT) as a ``transformers.Trainer``."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from ..data import CompletionCollator, tokenize_prompt_completion
from ..models.layers import BitLinear, PackedBitLinear
from ..warmup import QuantizationWarmup, not_a_bitnet_model
from .capture import QKVCapture, projection_widths, resolve_layer
from .config import BitDistillConfig
from .losses import (
    attention_relation_distillation,
    hidden_layer_map,
    hidden_state_distillation,
    logits_distillation,
)

logger = logging.getLogger(__name__)


class TokenCounts(NamedTuple):
    """Tokens of a whole optimizer step (all accumulated micro-batches, all processes when averaging across them):
    ``labels``, the tokens CE counts; ``rows``, the real tokens the relation KD counts; ``next``, the real tokens
    followed by a real token (logits KD over ``"all"`` tokens)."""

    labels: torch.Tensor
    rows: torch.Tensor
    next: torch.Tensor


class BitDistillTrainer(Trainer):
    """A ``Trainer`` whose loss is ``CE + lambda * logits_KD + gamma * attention_KD`` against a frozen teacher.

    Args:
        model: the student, a BitNet model (or a path to one).
        teacher_model: the full-precision teacher, a model, a ``PeftModel`` or a path. It is frozen, kept in eval
            mode and prepared by accelerate for the same devices as the student (ZeRO-3: sharded by DeepSpeed as
            well). It may be wider or deeper than the student; the vocabulary must be the same. Leave it out with
            both weights at 0 for plain fine-tuning (the BitNet-SFT baseline).
        args: a ``BitDistillConfig``.
        train_dataset / eval_dataset: tokenized examples (``input_ids``, optional ``completion_mask``) or text
            examples with ``prompt`` and ``completion`` columns, tokenized here with ``processing_class``.
        data_collator: default ``CompletionCollator``, which pads and builds ``labels`` from ``args.loss_tokens``.

    The three terms are logged separately (``ce``, ``logits_kd``, ``attention_kd``, unweighted) with the loss.
    Every term is a sum over tokens divided by the token count of the whole optimizer step, so gradient
    accumulation and data parallelism give the loss of one big batch.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, model: PreTrainedModel | nn.Module | str | None = None,
                 teacher_model: PreTrainedModel | nn.Module | str | None = None, args: BitDistillConfig | None = None,
                 data_collator: Any = None, train_dataset: Dataset | IterableDataset | None = None,
                 eval_dataset: Dataset | IterableDataset | dict[str, Dataset] | None = None,
                 processing_class: PreTrainedTokenizerBase | None = None, **kwargs: Any) -> None:
        if not isinstance(args, BitDistillConfig):
            raise TypeError(f"args must be a BitDistillConfig, got {type(args).__name__}")
        if isinstance(model, str):
            model = load_for_training(model, args)
        lam, gamma = args.logits_distill_weight, args.attention_distill_weight + args.hidden_distill_weight
        if isinstance(teacher_model, str):
            teacher_model = load_for_training(teacher_model, args, dtype="auto")
        if teacher_model is None and (lam > 0 or gamma > 0):
            raise ValueError(f"logits_distill_weight={lam}, attention_distill_weight={args.attention_distill_weight} "
                             f"and hidden_distill_weight={args.hidden_distill_weight} need a teacher_model; pass one, "
                             "or set the weights to 0 for plain fine-tuning (BitNet-SFT)")
        if teacher_model is not None and lam == 0 and gamma == 0:
            warnings.warn("every distillation weight is 0, so the teacher is not used; it is not loaded on the devices",
                          stacklevel=2)
            teacher_model = None

        layers = self._check_teacher(model, teacher_model, args) if teacher_model is not None else None

        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train_dataset")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare_dataset(v, processing_class, args, f"eval_dataset[{k!r}]")
                            for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval_dataset")
        if args.loss_tokens is None:
            sample = train_dataset if train_dataset is not None else eval_dataset
            has_mask = sample is not None and not isinstance(sample, dict) and "completion_mask" in (
                sample.column_names or [])
            args.loss_tokens = "completion" if has_mask else "all"
        if data_collator is None:
            pad_id = _pad_token_id(model, processing_class)
            side = processing_class.padding_side if processing_class is not None else "right"
            data_collator = CompletionCollator(pad_id, completion_only=args.loss_tokens == "completion",
                                               padding_side=side)

        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)

        if args.quantization_warmup_steps > 0:
            self.add_callback(QuantizationWarmup(args.quantization_warmup_steps, args.quantization_warmup_shape))
        self.teacher = None
        self._captures: tuple[QKVCapture, QKVCapture] | None = None
        if teacher_model is not None:
            if layers is not None:
                self._captures = (QKVCapture(model, layers[0]), QKVCapture(teacher_model, layers[1]))
            teacher_model.eval().requires_grad_(False)
            self.teacher = self._prepare_teacher(teacher_model)
        self._term_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._term_batches: dict[str, int] = defaultdict(int)
        self._term_last_step = 0

    # ---- checks before any work ----

    @staticmethod
    def _check_teacher(student: nn.Module, teacher: nn.Module, args: BitDistillConfig) -> tuple[int, int] | None:
        """Raise on a teacher that cannot teach this student; the (student, teacher) relation layers."""
        # `ds_shape`: under DeepSpeed ZeRO-3 a loaded model's weights are partitioned and `shape` is empty.
        s_vocab, t_vocab = (getattr(w, "ds_shape", w.shape)[0] for w in (
            m.get_output_embeddings().weight for m in (student, teacher)))
        if s_vocab != t_vocab:
            raise ValueError(f"the teacher's vocabulary has {t_vocab} entries and the student's {s_vocab}; logits "
                             "distillation needs the same vocabulary (a teacher of the student's own family/tokenizer)")
        if any(isinstance(m, (BitLinear, PackedBitLinear)) and getattr(m, "quantize", True) for m in teacher.modules()):
            warnings.warn("the teacher has ternary BitNet layers; BitDistill's teacher is the full-precision model "
                          "fine-tuned on the task (stage 0), is this the right checkpoint?", stacklevel=3)
        if args.hidden_distill_weight > 0:
            widths = [getattr(m.config, "hidden_size", None) for m in (student, teacher)]
            if widths[0] != widths[1]:
                raise ValueError(f"hidden_distill_weight={args.hidden_distill_weight} needs the same hidden width in "
                                 f"student and teacher, got {widths[0]} and {widths[1]}; set it to 0 for this teacher")
        if args.attention_distill_weight > 0:
            layers = []
            for name, model in (("student", student), ("teacher", teacher)):
                try:
                    layers.append(resolve_layer(model, args.attention_distill_layer))
                except ValueError as error:
                    raise ValueError(f"the {name}: {error}") from None
            for name, model, layer in zip(("student", "teacher"), (student, teacher), layers):
                widths = projection_widths(model, layer)
                if any(w % args.relation_heads for w in widths):
                    raise ValueError(f"relation_heads={args.relation_heads} does not divide the {name}'s Q/K/V widths "
                                     f"{widths} at layer {layer}; pick a common divisor of all of them")
            return layers[0], layers[1]
        return None

    @staticmethod
    def _prepare_dataset(dataset: Any, tokenizer: PreTrainedTokenizerBase | None, args: BitDistillConfig,
                         what: str) -> Any:
        if dataset is None:
            return None
        if isinstance(dataset, Dataset) and len(dataset) == 0:
            raise ValueError(f"{what} is empty")
        columns = dataset.column_names or []
        if "input_ids" in columns or not isinstance(dataset, (Dataset, IterableDataset)):
            return dataset
        if {"prompt", "completion"} <= set(columns):
            if tokenizer is None:
                raise ValueError(f"{what} holds prompt/completion text; pass processing_class=tokenizer to tokenize it")
            return tokenize_prompt_completion(dataset, tokenizer, args.max_length)
        raise ValueError(f"{what} needs `input_ids` (tokenized) or `prompt` and `completion` columns; it has "
                         f"{', '.join(columns)}")

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Place the teacher like the student: DeepSpeed (sharded under ZeRO-3), or accelerate's evaluation-mode
        preparation (device, mixed precision) otherwise. Under FSDP the teacher is replicated on each process."""
        if self.is_deepspeed_enabled:
            import deepspeed

            config = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
            config.pop("optimizer", None)
            config.pop("scheduler", None)
            if config.get("zero_optimization", {}).get("stage") != 3:
                config["zero_optimization"] = {"stage": 0}
            engine, *_ = deepspeed.initialize(model=teacher, config=config)
            return engine.eval()
        if self.is_fsdp_enabled:
            teacher.to(self.accelerator.device)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    # ---- the optimizer ----

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The ``Trainer``'s optimizer, with the full-precision parameters (everything but the latent weights of
        ternary layers) at ``full_precision_lr_ratio`` times the learning rate, in groups of their own."""
        optimizer = super().create_optimizer(model)
        ratio = self.args.full_precision_lr_ratio
        if ratio == 1.0:
            return optimizer
        ternary = {id(m.weight) for m in (model or self.model).modules() if isinstance(m, BitLinear)}
        if not ternary:
            raise not_a_bitnet_model(f"full_precision_lr_ratio={ratio} (1: one learning rate for all) is set")
        groups = []
        for group in optimizer.param_groups:
            kept = [p for p in group["params"] if id(p) in ternary]
            other = [p for p in group["params"] if id(p) not in ternary]
            groups += [{**group, "params": kept}] if kept else []
            groups += [{**group, "params": other, "lr": group["lr"] * ratio}] if other else []
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    # ---- the loss ----

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int,
                          device: torch.device) -> tuple[list, TokenCounts]:
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        return batches, self._count(batches, device, across_processes=True)

    def _count(self, batches: list[dict[str, torch.Tensor]], device: torch.device,
               across_processes: bool) -> TokenCounts:
        counts = torch.zeros(3, dtype=torch.long, device=device)
        for batch in batches:
            counts[0] += batch["labels"][:, 1:].ne(-100).sum().to(device)
            counts[1] += batch["attention_mask"].sum().to(device)
            counts[2] += _followed_by_real(batch["attention_mask"]).sum().to(device)
        if across_processes and self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return TokenCounts(*counts.clamp(min=1))

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor | tuple[torch.Tensor, Any]:
        counts = num_items_in_batch if isinstance(num_items_in_batch, TokenCounts) else self._count(
            [inputs], inputs["input_ids"].device, across_processes=False)
        args = self.args
        if "labels" not in inputs or "attention_mask" not in inputs:
            raise ValueError(f"the batch has {sorted(inputs)}; BitDistillTrainer needs `labels` and `attention_mask` "
                             "(its default CompletionCollator builds both)")
        labels, attention_mask = inputs["labels"], inputs["attention_mask"]
        model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}

        student_capture = self._captures[0] if self._captures else contextlib.nullcontext()
        hidden = self.teacher is not None and args.hidden_distill_weight > 0
        every = self.teacher is not None and args.logits_distill_weight > 0 and args.logits_distill_tokens == "all"
        # Logits only where a term reads them: the positions that predict a label (the answer tokens of a
        # prompt/completion batch, a few of each row), unless logits KD covers every token. The head's matmul and
        # the vocabulary-wide tensors of the other positions cost 7% of a SmolLM2 SST-2 step (student alone; the
        # teacher's head is spared too): `python benchmarks/train_step.py`, 4.15 against 4.47 s.
        # Every position when the outputs are returned (evaluation's ``compute_metrics`` aligns them with labels).
        target = labels[:, 1:]
        counted = target.ne(-100)
        positions = None if every or return_outputs else counted.any(0).nonzero().squeeze(1)
        extra = {"output_hidden_states": True} if hidden else {}
        if positions is not None:
            extra["logits_to_keep"] = positions
            target, counted = target[:, positions], counted[:, positions]
        with student_capture:
            outputs = model(**model_inputs, **extra)
        logits = outputs.logits if positions is not None else outputs.logits[:, :-1]
        terms = {"ce": F.cross_entropy(logits[counted].float(), target[counted], reduction="sum") / counts.labels}

        if self.teacher is not None:
            teacher_capture = self._captures[1] if self._captures else contextlib.nullcontext()
            with torch.no_grad(), teacher_capture:
                teacher_outputs = self.teacher(**model_inputs, **extra)
            if args.logits_distill_weight > 0:
                teacher_logits = teacher_outputs.logits if positions is not None else teacher_outputs.logits[:, :-1]
                terms["logits_kd"] = logits_distillation(
                    logits, teacher_logits, _followed_by_real(attention_mask) if every else counted,
                    temperature=args.distill_temperature, normalizer=counts.next if every else counts.labels)
            if self._captures:
                terms["attention_kd"] = attention_relation_distillation(
                    self._captures[0].pop(), self._captures[1].pop(), attention_mask.bool(),
                    heads=args.relation_heads, kind=args.relation_kind, weights=args.qkv_weights,
                    normalizer=counts.rows)
            if hidden:
                student_states, teacher_states = outputs.hidden_states[1:], teacher_outputs.hidden_states[1:]
                pairs = hidden_layer_map(len(student_states), len(teacher_states))
                terms["hidden_kd"] = hidden_state_distillation(student_states, [teacher_states[j] for j in pairs],
                                                               attention_mask, normalizer=counts.rows)

        weights = self._weights()
        loss = sum(weights[name] * value for name, value in terms.items())
        if not torch.isfinite(loss):
            bad = next((n for n, v in terms.items() if not torch.isfinite(v)), "total")
            raise FloatingPointError(f"step {self.state.global_step + 1}: the {bad} term of the loss is "
                                     f"{terms.get(bad, loss).item()} (terms: "
                                     f"{ {n: v.item() for n, v in terms.items()} }); lower the learning rate or the "
                                     "distillation weights, or train in fp32/bf16 instead of fp16")
        self._record(terms, "train" if model.training else "eval")
        if args.average_tokens_across_devices and args.world_size > 1 and model.training:
            # Every process divided by the global token count; DDP averages gradients, so undo its 1/world_size.
            loss = loss * args.world_size
        return (loss, outputs) if return_outputs else loss

    # ---- logging the terms ----

    def _weights(self) -> dict[str, float]:
        args = self.args
        return {"ce": 1.0, "logits_kd": args.logits_distill_weight, "attention_kd": args.attention_distill_weight,
                "hidden_kd": args.hidden_distill_weight}

    def _record(self, terms: dict[str, torch.Tensor], mode: str) -> None:
        sums = self._term_sums[mode]
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + value.detach().float()
        self._term_batches[mode] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train" if "loss" in logs else None
        sums = self._term_sums.get(mode) if mode else None
        if sums:
            names = list(sums)
            values = torch.stack([torch.as_tensor(sums[n], device=self.args.device) for n in names])
            if mode == "train":
                # Each micro-batch holds its share of the step's term; steps since the last log average them.
                steps = max(1, self.state.global_step - self._term_last_step)
                self._term_last_step = self.state.global_step
                global_norm = self.args.average_tokens_across_devices and self.args.world_size > 1
                values = self.accelerator.reduce(values, reduction="sum" if global_norm else "mean") / steps
            else:
                values = self.accelerator.reduce(values, reduction="mean") / self._term_batches[mode]
            prefix = "eval_" if mode == "eval" else ""
            # In place: evaluate() returns this very dict, so the eval terms are in its metrics too. Beside each
            # distillation term, what it adds to the loss (its weight times it): the balance of the terms.
            weights = self._weights()
            for name, value in zip(names, values.tolist()):
                logs[prefix + name] = value
                if name != "ce":
                    logs[f"{prefix}{name}_weighted"] = weights[name] * value
            sums.clear()
            self._term_batches[mode] = 0
        super().log(logs, start_time)


def load_for_training(path: str | os.PathLike, args: TrainingArguments, *, dtype: str | torch.dtype = torch.float32
                      ) -> PreTrainedModel:
    """A checkpoint loaded to train (or teach) under ``args``: float32 latent weights by default and, when training
    runs on the CPU, eager attention: PyTorch's CPU flash-attention backward is slow for short sequences (an SST-2
    step of SmolLM2 takes 1.33x as long with it, ``benchmarks/train_step.py``). The math is the same."""
    cpu = args.device.type == "cpu"
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **({"attn_implementation": "eager"} if cpu else {}))


def _followed_by_real(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions ``0..T-2`` whose token and next token are real: where a next-token distribution is defined."""
    real = attention_mask.bool()
    return real[:, :-1] & real[:, 1:]


def _pad_token_id(model: nn.Module, tokenizer: PreTrainedTokenizerBase | None) -> int:
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    config = getattr(model, "config", None)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return value
    return 0
