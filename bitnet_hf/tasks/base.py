"""What a task is: how an example becomes a prompt/answer pair, where the data comes from, and how answers score.

A task formats text only; training (``BitDistillTrainer``) and scoring (``bitnet_hf.evaluation``) take it from
there. A user-defined classification task is a ``ClassificationTask`` with labels and a template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from ..data import _BUILDERS, load_text_dataset, require_columns, tokenize_prompt_completion


@dataclass(frozen=True, kw_only=True)
class Task:
    """A prompt template over some input columns, and where the data lives.

    Args:
        name: the task's name (``bitnet-hf ... --task NAME``).
        inputs: columns the template reads, e.g. ``("sentence",)``.
        template: the user message, a ``str.format`` template over ``inputs``.
        system: an instruction given as the system message of a chat template (or as a first paragraph without one).
        hub: ``(path, configuration)`` of the dataset on the Hub, used when no local files are given.
        eval_split: the split evaluated by default (GLUE test splits carry no labels).
    """

    kind: ClassVar[str]
    name: str
    inputs: tuple[str, ...]
    template: str
    system: str | None = None
    hub: tuple[str, str | None] | None = None
    eval_split: str = "validation"

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column an example of this task needs."""
        return self.inputs

    # ---- data ----

    def load(self, split: str = "train", *, data_dir: str | Path | None = None,
             columns: Mapping[str, str] | None = None) -> Dataset:
        """One split: ``data_dir/<split>.{jsonl,json,csv,tsv,parquet}`` when ``data_dir`` is given, else the Hub.

        ``columns`` maps this task's column names to the file's (``{"sentence": "text"}``). The result has exactly
        the task's columns, with labels checked (see ``check``).
        """
        if data_dir is None:
            if self.hub is None:
                raise ValueError(f"task {self.name!r} has no Hub dataset; give its files with data_dir")
            dataset = load_dataset(self.hub[0], self.hub[1], split=split)
            source = f"{self.hub[0]} ({split})"
        else:
            path = split_file(data_dir, split)
            dataset = load_text_dataset(path)
            source = str(path)
        mapping = dict(columns or {})
        unknown = sorted(set(mapping) - set(self.columns))
        if unknown:
            raise ValueError(f"column mapping names {unknown}, which task {self.name!r} does not have; its columns are "
                             f"{list(self.columns)}")
        wanted = [mapping.get(c, c) for c in self.columns]
        require_columns(dataset, wanted, source)
        dataset = dataset.select_columns(wanted).rename_columns({mapping[c]: c for c in mapping if mapping[c] != c})
        self.check(dataset, source)
        return dataset

    def check(self, dataset: Dataset, source: str) -> None:
        """Raise on examples this task cannot use (``source`` names them in the message): none at all, or an input
        that is not text (null, a number, blank)."""
        if len(dataset) == 0:
            raise ValueError(f"{source} holds no examples")
        _require_text(dataset, self.inputs, source)

    # ---- formatting ----

    def prompt(self, example: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
        """The prompt text: the tokenizer's chat template (system + user message, then the assistant's turn) when
        it has one, else the plain ``system`` paragraph, the message and ``Answer:``."""
        message = self.template.format(**{c: example[c] for c in self.inputs})
        if uses_chat_template(tokenizer):
            turns = ([{"role": "system", "content": self.system}] if self.system else []) + [
                {"role": "user", "content": message}]
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return (f"{self.system}\n\n" if self.system else "") + f"{message}\nAnswer:"

    def prompt_inputs(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, limit: int) -> list[dict[str, Any]]:
        """Model inputs of the prompts of the first ``limit`` examples, one example a batch, tokenized as the model
        sees them (SubLN calibration data)."""
        special = not uses_chat_template(tokenizer)
        return [dict(tokenizer(self.prompt(e, tokenizer), return_tensors="pt", add_special_tokens=special))
                for e in dataset.select(range(min(limit, len(dataset))))]

    def answer(self, example: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
        """The target text of an example (a space in front when there is no chat template)."""
        raise NotImplementedError

    def format(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        """Add ``prompt`` and ``completion`` text columns (the task's own columns stay)."""
        return dataset.map(lambda e: {"prompt": self.prompt(e, tokenizer), "completion": self.answer(e, tokenizer)},
                           desc=f"formatting {self.name}")

    def tokenize(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
        """Training examples: ``input_ids`` and ``completion_mask`` (the loss sees the answer and EOS only)."""
        formatted = self.format(dataset, tokenizer)
        return tokenize_prompt_completion(formatted, tokenizer, max_length,
                                          add_special_tokens=not uses_chat_template(tokenizer))


@dataclass(frozen=True, kw_only=True)
class ClassificationTask(Task):
    """Answer with one of ``labels`` (the label words); scored by accuracy.

    ``label_column`` holds the class index (an int into ``labels``) or the label word itself. Scoring compares the
    model's next-token scores of each label word's first token after the prompt, so first tokens must differ.
    """

    kind: ClassVar[str] = "classification"
    labels: tuple[str, ...]
    label_column: str = "label"

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task {self.name!r}: labels {self.labels} must be at least two distinct words")

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.inputs, self.label_column)

    def check(self, dataset: Dataset, source: str) -> None:
        """As ``Task.check``, and every label is an index into ``labels`` or one of the label words. Booleans are
        indices (``false`` 0, ``true`` 1), as in Python: a ``true``/``false`` column of a two-label task is read as
        0/1."""
        super().check(dataset, source)
        for row, value in enumerate(dataset[self.label_column]):
            if not (isinstance(value, int) and 0 <= value < len(self.labels)) and value not in self.labels:
                raise ValueError(f"{source}, row {row}: label {value!r} is not in task {self.name!r}'s label set "
                                 f"(0..{len(self.labels) - 1} or {', '.join(self.labels)}); unlabeled splits "
                                 "(GLUE test, label -1) cannot train or evaluate")

    def label_index(self, example: Mapping[str, Any]) -> int:
        value = example[self.label_column]
        return value if isinstance(value, int) else self.labels.index(value)

    def answer(self, example: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
        word = self.labels[self.label_index(example)]
        return word if uses_chat_template(tokenizer) else f" {word}"

    def label_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """The first token of each label word as the model sees it after a prompt; raises if two coincide."""
        prefix = "" if uses_chat_template(tokenizer) else " "
        ids = [tokenizer(prefix + word, add_special_tokens=False)["input_ids"][0] for word in self.labels]
        if len(set(ids)) != len(ids):
            raise ValueError(f"task {self.name!r}: label words {self.labels} start with the same token for this "
                             "tokenizer; choose label words whose first tokens differ")
        return ids


@dataclass(frozen=True, kw_only=True)
class SummarizationTask(Task):
    """Answer with a summary of the ``inputs[0]`` document; scored with ROUGE and BLEU against ``target``.

    The document is cut to ``max_source_tokens`` tokens before it is put in the template, so the instruction and
    the chat template's turn markers always survive; generation stops after ``max_new_tokens``.
    """

    kind: ClassVar[str] = "summarization"
    target: str
    max_source_tokens: int = 512
    max_new_tokens: int = 128

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.inputs, self.target)

    def check(self, dataset: Dataset, source: str) -> None:
        super().check(dataset, source)
        _require_text(dataset, (self.target,), source)

    def prompt(self, example: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
        document = self.inputs[0]
        ids = tokenizer(example[document], add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_source_tokens:
            example = {**example, document: tokenizer.decode(ids[: self.max_source_tokens])}
        return super().prompt(example, tokenizer)

    def tokenize(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
        """As ``Task.tokenize``, but a prompt too long for ``max_length`` loses the end of its document rather than
        its own end, so every training example keeps the turn markers the model sees before its summary."""
        document = self.inputs[0]
        special = not uses_chat_template(tokenizer)
        eos = 0 if tokenizer.eos_token_id is None else 1

        def fit(example: dict[str, Any]) -> dict[str, str]:
            summary = len(tokenizer(self.answer(example, tokenizer), add_special_tokens=False)["input_ids"]) + eos
            budget = max_length - min(summary, max(1, max_length // 2))  # tokenize_prompt_completion's split
            text = example[document]
            for _ in range(4):  # the parts' token counts and the whole's differ by a few at the seams
                prompt = self.prompt({**example, document: text}, tokenizer)
                over = len(tokenizer(prompt, add_special_tokens=special)["input_ids"]) - budget
                ids = tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_source_tokens]
                if over <= 0 or not ids:
                    break
                text = tokenizer.decode(ids[: max(0, len(ids) - over)])
            return {document: text}

        return super().tokenize(dataset.map(fit, desc=f"fitting {self.name} documents"), tokenizer, max_length)

    def answer(self, example: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
        text = example[self.target].strip()
        return text if uses_chat_template(tokenizer) else f" {text}"


def uses_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether prompts are made with the tokenizer's chat template (which then holds the special tokens itself)."""
    return bool(getattr(tokenizer, "chat_template", None))


def parse_columns(items: list[str]) -> dict[str, str]:
    """``["sentence=text", ...]`` (command-line column mappings) -> ``{"sentence": "text", ...}``."""
    bad = [item for item in items if item.count("=") != 1]
    if bad:
        raise ValueError(f"--columns {bad} must look like task_column=file_column")
    return dict(item.split("=") for item in items)


def split_file(data_dir: str | Path, split: str) -> Path:
    """``data_dir/<split>.<ext>`` for one readable extension; a clear error listing what is there otherwise."""
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"data directory {folder} does not exist")
    found = [folder / f"{split}{ext}" for ext in _BUILDERS if (folder / f"{split}{ext}").is_file()]
    if not found:
        have = sorted(p.name for p in folder.iterdir() if p.suffix in _BUILDERS)
        raise FileNotFoundError(f"{folder} has no {split}.{{jsonl,json,csv,tsv,parquet}} file (it has: "
                                f"{', '.join(have) or 'nothing readable'})")
    return found[0]


def has_split(data_dir: str | Path, split: str) -> bool:
    folder = Path(data_dir).expanduser()
    return any((folder / f"{split}{ext}").is_file() for ext in _BUILDERS)


@dataclass
class Splits:
    """Train and evaluation examples of a task, and where the evaluation ones came from."""

    train: Dataset
    eval: Dataset
    eval_source: str
    notes: list[str] = field(default_factory=list)


def train_eval_splits(task: Task, *, data_dir: str | Path | None = None, columns: Mapping[str, str] | None = None,
                      train_size: int | None = None, eval_size: int | None = None, seed: int = 0) -> Splits:
    """The task's training and evaluation examples. The evaluation split is the task's ``eval_split`` when it
    exists (on the Hub, or as a file in ``data_dir``); otherwise ``eval_size`` examples (default 10%, at most
    1,000) are held out of train, with ``seed``, and never trained on. ``train_size`` then subsamples train."""
    train = task.load("train", data_dir=data_dir, columns=columns)
    if data_dir is None or has_split(data_dir, task.eval_split):
        evaluation = task.load(task.eval_split, data_dir=data_dir, columns=columns)
        source = f"the {task.eval_split} split"
    else:
        size = eval_size if eval_size is not None else min(1000, max(1, len(train) // 10))
        if size >= len(train):
            raise ValueError(f"cannot hold out {size} of {len(train)} training examples for evaluation")
        parts = train.train_test_split(test_size=size, seed=seed, shuffle=True)
        train, evaluation = parts["train"], parts["test"]
        source = f"{size} examples held out of train (seed {seed})"
    if eval_size is not None and len(evaluation) > eval_size:
        evaluation = evaluation.shuffle(seed=seed).select(range(eval_size))
    if train_size is not None and train_size < len(train):
        train = train.shuffle(seed=seed).select(range(train_size))
    return Splits(train=train, eval=evaluation, eval_source=source)


def _require_text(dataset: Dataset, columns: Sequence[str], source: str) -> None:
    for column in columns:
        for row, value in enumerate(dataset[column]):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{source}, row {row}: column {column!r} is {value!r}, not text; remove the row or "
                                 "fill it in")
