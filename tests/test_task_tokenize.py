"""Summarization training examples keep their prompt's end (the turn markers) when the document is too long."""

from __future__ import annotations

import pytest
from datasets import Dataset
from tiny import tiny_tokenizer

from bitnet_hf.tasks import get_task

CHAT_TEMPLATE = ("<s>{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}; {% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.mark.parametrize("chat", [True, False])
def test_a_long_document_is_cut_not_the_prompt_end(chat):
    tokenizer = tiny_tokenizer()
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    task = get_task("cnndm")
    data = Dataset.from_dict({"article": ["x" * 600, "a short story."], "highlights": ["short summary.", "story."]})
    long, short = task.tokenize(data, tokenizer, max_length=256)
    assert len(long["input_ids"]) == 256  # the document fills what the summary leaves (characters add up here)
    cut = long["completion_mask"].index(1)
    prompt, completion = tokenizer.decode(long["input_ids"][:cut]), tokenizer.decode(long["input_ids"][cut:])
    assert prompt.endswith("; assistant: " if chat else "Answer:") and "xxxxx" in prompt
    assert completion == ("short summary.</s>" if chat else " short summary.</s>")
    # A document that fits is left as it is: the same tokens as the plain prompt/completion tokenization.
    prompt = tokenizer(task.prompt({"article": "a short story."}, tokenizer), add_special_tokens=not chat)
    answer = tokenizer(task.answer({"highlights": "story."}, tokenizer), add_special_tokens=False)
    assert short["input_ids"] == prompt["input_ids"] + answer["input_ids"] + [tokenizer.eos_token_id]
