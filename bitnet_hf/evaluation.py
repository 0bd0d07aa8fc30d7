"""Scoring a model on a task: classification accuracy by label-word scores (or greedy generation), and
summarization ROUGE-1/2/L/Lsum (``rouge-score``) and BLEU (``sacrebleu``) of greedy summaries; tokens/s beside."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .tasks import ClassificationTask, SummarizationTask, Task
from .tasks.base import uses_chat_template

CLASSIFICATION_METHODS = ("score", "generate")


@dataclass
class Evaluation:
    """Metrics of one model on one task split (percentages), and the speed measured while computing them."""

    task: str
    metrics: dict[str, float]
    examples: int
    tokens_per_second: float
    seconds: float
    predictions: list[str]
    scores: list[list[float]] | None = None  # label-word logits of each example (classification by score)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metrics": self.metrics, "examples": self.examples,
                "tokens_per_second": self.tokens_per_second, "seconds": self.seconds}


def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, dataset: Dataset, *,
                   batch_size: int = 16, method: str = "score", max_new_tokens: int | None = None,
                   progress: bool = True) -> Evaluation:
    """Score ``model`` on ``dataset`` (examples of ``task``, e.g. from ``task.load``), in batches, greedily.

    Classification, ``method="score"``: one forward per example; the prediction is the label word whose first
    token scores highest after the prompt (tokens/s counts prompt tokens). The scores do not depend on the batch
    size in float32 for packed models, whose kernels sum integers (equal to 1e-5 in ``tests/test_evaluation.py``; a
    training model's float GEMMs may round by batch shape on some CPUs and flip a rounding tie): left-padded
    prompts keep the positions they have alone, and attention runs eager for the call, because SDPA takes other
    kernels for padded batches and its float differences flip int8 activation rounding ties, which a ternary model
    amplifies (0.6 logits on SmolLM2).
    In bf16 the matmuls themselves round differently with the batch shape (0.4 logits on SmolLM2 at batch 32):
    score in float32 for numbers that do not depend on the batch size. ``method="generate"``: greedy
    generation, right when the text is the label word (anything else is wrong); tokens/s counts generated tokens.
    Summarization: greedy generation of at most ``max_new_tokens`` (default: the task's), ROUGE and BLEU.
    """
    if method not in CLASSIFICATION_METHODS:
        raise ValueError(f"method={method!r} is not one of {CLASSIFICATION_METHODS}")
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    missing = [c for c in task.columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the evaluation dataset has no column {missing} for task {task.name!r}; load it with "
                         "task.load(...)")
    label_ids = task.label_token_ids(tokenizer) if isinstance(task, ClassificationTask) else None
    prompts = [task.prompt(example, tokenizer) for example in dataset]
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation and last-position scoring both want the prompt's end aligned
    attention = model.config._attn_implementation
    special = not uses_chat_template(tokenizer)
    predictions: list[str] = []
    scores: list[list[float]] = []
    counted = 0
    start = time.perf_counter()
    try:
        if label_ids is not None and method == "score" and attention != "eager":
            model.set_attn_implementation("eager")  # SDPA picks other kernels for padded batches: see the docstring
        bar = tqdm(range(0, len(prompts), batch_size), desc=f"evaluating {task.name}", unit="batch",
                   disable=not progress)
        for i in bar:
            batch = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=special).to(model.device)
            with torch.no_grad():
                if label_ids is not None and method == "score":
                    # each prompt at the positions it has alone (generate does the same for left padding)
                    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                    logits = model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1, label_ids]
                    scores += logits.float().tolist()
                    predictions += [task.labels[j] for j in logits.argmax(-1).tolist()]
                    counted += int(batch["attention_mask"].sum())
                    continue
                limit = max_new_tokens or (task.max_new_tokens if isinstance(task, SummarizationTask) else 1 + max(
                    len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in task.labels))
                out = model.generate(**batch, do_sample=False, max_new_tokens=limit, pad_token_id=_pad_id(tokenizer))
            new = out[:, batch["input_ids"].shape[1]:]
            eos = tokenizer.eos_token_id
            counted += int(sum((row != eos).sum() if eos is not None else row.numel() for row in new))
            predictions += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        if model.config._attn_implementation != attention:
            model.set_attn_implementation(attention)
        model.train(was_training)
    seconds = time.perf_counter() - start
    if isinstance(task, ClassificationTask):
        gold = [task.labels[task.label_index(e)] for e in dataset]
        metrics = {"accuracy": 100.0 * sum(p == g for p, g in zip(predictions, gold)) / len(gold)}
    else:
        metrics = summarization_metrics(predictions, list(dataset[task.target]))
    return Evaluation(task=task.name, metrics=metrics, examples=len(dataset), tokens_per_second=counted / seconds,
                      seconds=seconds, predictions=predictions, scores=scores or None)


def summarization_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F1 (``rouge-score``, Porter stemming; Lsum over newline-split sentences) and corpus BLEU
    (``sacrebleu``, its default 13a tokenization), all in percent."""
    from rouge_score import rouge_scorer, scoring
    from sacrebleu.metrics import BLEU

    kinds = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
    aggregator = scoring.BootstrapAggregator()
    for prediction, reference in zip(predictions, references):
        aggregator.add_scores(scorer.score(_sentence_lines(reference), _sentence_lines(prediction)))
    result = aggregator.aggregate()
    metrics = {kind: 100.0 * result[kind].mid.fmeasure for kind in kinds}
    metrics["bleu"] = BLEU().corpus_score(predictions, [references]).score
    return metrics


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _sentence_lines(text: str) -> str:
    """One sentence a line, which ROUGE-Lsum expects (CNN/DM highlights already are; generated text is split)."""
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s)


def decode_speed(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, *, new_tokens: int = 32,
                 repeats: int = 3) -> float:
    """Greedy batch-1 decoding speed in tokens/s: the median of ``repeats`` timed ``generate`` calls that each
    produce exactly ``new_tokens`` tokens after ``prompt`` (one untimed warm-up call first)."""
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=not uses_chat_template(tokenizer))
    batch = batch.to(model.device)
    # eos_token_id=None rather than min_new_tokens, whose vocabulary-wide mask at every step would be timed too
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=_pad_id(tokenizer))
    times = []
    with torch.no_grad():
        model.generate(**batch, **{**kwargs, "max_new_tokens": 2})
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(**batch, **kwargs)
            times.append(time.perf_counter() - start)
    return new_tokens / sorted(times)[len(times) // 2]
