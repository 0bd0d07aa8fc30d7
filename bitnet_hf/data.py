"""Data for training: prompt/completion examples for distillation, and text corpora packed into blocks for
continued pre-training. Everything is a ``datasets`` dataset (map-style or streaming)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset, load_dataset
from transformers import PreTrainedTokenizerBase

# File suffix -> the `datasets` builder that reads it.
_BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet",
             ".csv": "csv", ".tsv": "csv"}


def load_text_dataset(source: str | Path, *, name: str | None = None, split: str = "train",
                      streaming: bool = False) -> Dataset | IterableDataset:
    """Local text / JSONL / JSON / parquet / CSV / TSV files (a file, a folder of them, or a glob) or a Hub
    dataset name; ``streaming`` reads lazily, for corpora larger than memory or disk."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _BUILDERS)
    elif path.is_file():
        files = [path]
    elif any(ch in str(source) for ch in "*?["):
        files = sorted(p for p in Path().glob(str(source)) if p.suffix in _BUILDERS)
    elif path.suffix in _BUILDERS or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source} does not exist")
    else:  # a Hub dataset name
        return load_dataset(str(source), name, split=split, streaming=streaming)
    if not files:
        raise FileNotFoundError(f"{source} holds no {'/'.join(sorted(_BUILDERS))} files")
    suffixes = {p.suffix for p in files}
    builders = {_BUILDERS.get(s) for s in suffixes}
    if None in builders:
        raise ValueError(f"{source}: cannot read {sorted(suffixes)} files; use one of {sorted(_BUILDERS)}")
    if len(builders) > 1:
        raise ValueError(f"{source} mixes file kinds {sorted(suffixes)}; give one kind at a time")
    empty = [str(p) for p in files if p.stat().st_size == 0]
    if empty:  # datasets' builders fail on them with a bare StopIteration
        raise ValueError(f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty; give files with data")
    builder = builders.pop()
    kwargs: dict[str, Any] = {"delimiter": "\t"} if suffixes == {".tsv"} else {}
    return load_dataset(builder, data_files=[str(p) for p in files], split="train", streaming=streaming, **kwargs)


def require_columns(dataset: Dataset | IterableDataset, columns: Sequence[str], what: str) -> None:
    have = dataset.column_names
    if have is None:  # a streaming dataset whose features are unknown until read
        have = list(next(iter(dataset)).keys())
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{what} has no column {', '.join(map(repr, missing))} (columns: {', '.join(have)}); "
                         f"name the right one with the matching --*-field option")


def iter_texts(dataset: Dataset | IterableDataset, field: str, what: str) -> Iterator[str]:
    """The non-blank texts of column ``field``, stripped, row by row (a large file's column is not read whole);
    a missing column is an error naming ``what``."""
    require_columns(dataset, [field], what)
    for row in dataset.select_columns([field]):
        text = row[field]
        if isinstance(text, str) and text.strip():
            yield text.strip()


def tokenize_prompt_completion(dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase,
                               max_length: int, *, prompt_field: str = "prompt",
                               completion_field: str = "completion",
                               add_special_tokens: bool = True) -> Dataset | IterableDataset:
    """``input_ids`` = prompt tokens + completion tokens + EOS, and ``completion_mask`` (1 on completion + EOS).

    Text is taken as it is (a task module applies chat templates before this; a prompt that already holds the
    template's special tokens wants ``add_special_tokens=False``). Longer than ``max_length``: the
    completion keeps up to half of it and the prompt is cut at its end to fit.
    """
    require_columns(dataset, [prompt_field, completion_field], "the dataset")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = tokenizer(batch[prompt_field], add_special_tokens=add_special_tokens)["input_ids"]
        completions = tokenizer(batch[completion_field], add_special_tokens=False)["input_ids"]
        ids, masks = [], []
        for p, c in zip(prompts, completions):
            c = (c + eos)[: max(1, max_length // 2)] if len(p) + len(c) + len(eos) > max_length else c + eos
            p = p[: max_length - len(c)]
            ids.append(p + c)
            masks.append([0] * len(p) + [1] * len(c))
        return {"input_ids": ids, "completion_mask": masks}

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def pack_corpus(dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase, block_size: int, *,
                text_field: str = "text", max_blocks: int | None = None) -> Dataset | IterableDataset:
    """Tokenize documents, join them with EOS and cut the stream into ``block_size`` blocks (``input_ids`` and
    ``labels``); the tail of each 1,000-document batch that does not fill a block is dropped (as transformers'
    ``run_clm.py``). ``max_blocks`` stops after that many blocks (a token budget)."""
    require_columns(dataset, [text_field], "the corpus")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def blocks(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer([t for t in batch[text_field] if t], add_special_tokens=False)["input_ids"]
        stream = list(chain.from_iterable(doc + eos for doc in ids))
        cut = len(stream) // block_size * block_size
        out = [stream[i:i + block_size] for i in range(0, cut, block_size)]
        return {"input_ids": out, "labels": [list(b) for b in out]}

    packed = dataset.map(blocks, batched=True, batch_size=1000, remove_columns=dataset.column_names)
    if max_blocks is not None:
        packed = packed.take(max_blocks) if isinstance(packed, IterableDataset) else packed.select(
            range(min(max_blocks, len(packed))))
    return packed


@dataclass
class CompletionCollator:
    """Pads ``input_ids`` (and ``completion_mask``) to the longest example and builds ``attention_mask`` and
    ``labels``: the input ids, with -100 on padding and, when ``completion_only``, on prompt tokens."""

    pad_token_id: int
    completion_only: bool = False
    padding_side: str = "right"

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.completion_only and any("completion_mask" not in e for e in examples):
            raise ValueError("completion-only loss needs a `completion_mask` in every example (prompt/completion "
                             "data); use loss_tokens='all' for plain text")
        length = max(len(e["input_ids"]) for e in examples)

        def pad(values: Sequence[int], fill: int) -> list[int]:
            extra = [fill] * (length - len(values))
            return extra + list(values) if self.padding_side == "left" else list(values) + extra

        input_ids = torch.tensor([pad(e["input_ids"], self.pad_token_id) for e in examples])
        attention_mask = torch.tensor([pad([1] * len(e["input_ids"]), 0) for e in examples])
        counted = attention_mask.bool()
        if self.completion_only:
            counted &= torch.tensor([pad(e["completion_mask"], 0) for e in examples]).bool()
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": input_ids.masked_fill(~counted, -100)}
