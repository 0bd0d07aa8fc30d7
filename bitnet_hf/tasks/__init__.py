"""The paper's tasks (SST-2, MNLI, QNLI, CNN/DailyMail) and the registry ``get_task`` reads.

A new classification task is a few lines::

    from bitnet_hf.tasks import ClassificationTask, register_task
    register_task(ClassificationTask(name="spam", inputs=("text",), template="{text}",
                                     system="Is this message spam? Answer yes or no.", labels=("no", "yes")))
"""

from __future__ import annotations

from .base import ClassificationTask, Splits, SummarizationTask, Task, train_eval_splits

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` known to ``get_task`` and the command line by its name."""
    TASKS[task.name] = task
    return task


def get_task(name: str | Task) -> Task:
    """The task called ``name`` (a ``Task`` is returned as it is); unknown names list the known ones."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


register_task(ClassificationTask(
    name="sst2", hub=("nyu-mll/glue", "sst2"), inputs=("sentence",), template="{sentence}",
    system="Classify the sentiment of the review as positive or negative.", labels=("negative", "positive")))
register_task(ClassificationTask(
    name="mnli", hub=("nyu-mll/glue", "mnli"), eval_split="validation_matched", inputs=("premise", "hypothesis"),
    template="Premise: {premise}\nHypothesis: {hypothesis}",
    system="Does the premise entail the hypothesis? Answer yes, maybe or no.", labels=("yes", "maybe", "no")))
register_task(ClassificationTask(
    name="qnli", hub=("nyu-mll/glue", "qnli"), inputs=("question", "sentence"),
    template="Question: {question}\nSentence: {sentence}",
    system="Does the sentence contain the answer to the question? Answer yes or no.", labels=("yes", "no")))
register_task(SummarizationTask(
    name="cnndm", hub=("abisee/cnn_dailymail", "3.0.0"), inputs=("article",), target="highlights",
    template="{article}", system="Summarize the news article in a few sentences."))

__all__ = ["TASKS", "ClassificationTask", "Splits", "SummarizationTask", "Task", "get_task", "register_task",
           "train_eval_splits"]
