"""Tasks: formatting (chat template or plain), local and mapped data, the held-out split, and bad input."""

import json

import pytest

from bitnet_hf.tasks import TASKS, ClassificationTask, SummarizationTask, get_task, register_task, train_eval_splits
from bitnet_hf.tasks.base import split_file
from tiny import tiny_chat_tokenizer, tiny_tokenizer


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'sst3'; known tasks: cnndm, mnli, qnli, sst2"):
        get_task("sst3")


def test_builtin_tasks_point_at_the_papers_datasets():
    assert get_task("sst2").hub == ("nyu-mll/glue", "sst2")
    assert get_task("mnli").eval_split == "validation_matched"
    assert get_task("qnli").columns == ("question", "sentence", "label")
    assert get_task("cnndm").hub == ("abisee/cnn_dailymail", "3.0.0")
    assert get_task("cnndm").columns == ("article", "highlights")


def test_chat_template_prompt_and_answer_tokens():
    task, tok = get_task("sst2"), tiny_chat_tokenizer()
    example = {"sentence": "a fine film", "label": 1}
    prompt = task.prompt(example, tok)
    assert prompt == ("<s>system: Classify the sentiment of the review as positive or negative.|"
                      "<s>user: a fine film|<s>assistant: ")
    assert task.answer(example, tok) == "positive"
    from datasets import Dataset

    row = task.tokenize(Dataset.from_list([example]), tok, max_length=200)[0]
    mask = row["completion_mask"]
    answer_ids = [i for i, m in zip(row["input_ids"], mask) if m]
    assert tok.decode(answer_ids) == "positive</s>"  # the loss sees the label word and EOS only
    assert tok.decode(row["input_ids"][: mask.index(1)]) == prompt  # the template's own <s>, no extra BOS
    # calibration inputs: the same prompt tokens, one example a batch, at most `limit` of them
    inputs = task.prompt_inputs(Dataset.from_list([example, example]), tok, limit=5)
    assert len(inputs) == 2 and inputs[0]["input_ids"][0].tolist() == row["input_ids"][: mask.index(1)]
    assert inputs[0]["attention_mask"].all() and len(task.prompt_inputs(Dataset.from_list([example] * 3), tok, 1)) == 1


def test_plain_prompt_without_a_chat_template():
    task, tok = get_task("mnli"), tiny_tokenizer()
    example = {"premise": "p", "hypothesis": "h", "label": 2}
    assert task.prompt(example, tok) == ("Does the premise entail the hypothesis? Answer yes, maybe or no.\n\n"
                                         "Premise: p\nHypothesis: h\nAnswer:")
    assert task.answer(example, tok) == " no"


def test_label_words_whose_first_tokens_collide_are_refused():
    task = ClassificationTask(name="t", inputs=("x",), template="{x}", labels=("pos", "positive"))
    with pytest.raises(ValueError, match="start with the same token"):
        task.label_token_ids(tiny_chat_tokenizer())
    assert get_task("sst2").label_token_ids(tiny_chat_tokenizer()) == [
        tiny_chat_tokenizer().convert_tokens_to_ids(c) for c in "np"]


def test_local_files_with_a_column_mapping(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"s{i}", "sentiment": i % 2, "extra": 1} for i in range(6)])
    data = get_task("sst2").load("train", data_dir=tmp_path, columns={"sentence": "text", "label": "sentiment"})
    assert data.column_names == ["sentence", "label"]
    assert data["sentence"][:2] == ["s0", "s1"] and data["label"][:2] == [0, 1]


def test_csv_and_tsv_files(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    assert get_task("sst2").load("train", data_dir=tmp_path)["label"] == [1, 0]
    (tmp_path / "train.tsv").unlink()
    (tmp_path / "validation.csv").write_text("question,sentence,label\nq,s,yes\n")
    data = get_task("qnli").load("validation", data_dir=tmp_path)  # label words work as labels too
    assert get_task("qnli").label_index(data[0]) == 0


def test_missing_mapped_column_is_named(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "x", "label": 0}])
    with pytest.raises(ValueError, match="has no column 'sentence'"):
        get_task("sst2").load("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="has no column 'review'"):
        get_task("sst2").load("train", data_dir=tmp_path, columns={"sentence": "review"})
    with pytest.raises(ValueError, match="does not have"):
        get_task("sst2").load("train", data_dir=tmp_path, columns={"text": "x"})


def test_labels_outside_the_label_set_name_the_row(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 1}, {"sentence": "b", "label": 0},
                                           {"sentence": "c", "label": 3}])
    with pytest.raises(ValueError, match=r"row 2: label 3 is not in task 'sst2'.s label set"):
        get_task("sst2").load("train", data_dir=tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": -1}])  # GLUE's unlabeled test rows
    with pytest.raises(ValueError, match="row 0: label -1"):
        get_task("sst2").load("train", data_dir=tmp_path)


def test_missing_split_file_lists_what_is_there(tmp_path):
    write_jsonl(tmp_path / "dev.jsonl", [{"sentence": "a", "label": 1}])
    with pytest.raises(FileNotFoundError, match=r"no train\.\{jsonl.*it has: dev\.jsonl"):
        split_file(tmp_path, "train")


def test_held_out_split_is_disjoint_and_seeded(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": f"s{i}", "label": i % 2} for i in range(50)])
    task = get_task("sst2")
    a = train_eval_splits(task, data_dir=tmp_path, eval_size=10, train_size=20, seed=3)
    b = train_eval_splits(task, data_dir=tmp_path, eval_size=10, train_size=20, seed=3)
    assert len(a.eval) == 10 and len(a.train) == 20 and "held out of train" in a.eval_source
    assert not set(a.eval["sentence"]) & set(a.train["sentence"])
    assert a.eval["sentence"] == b.eval["sentence"] and a.train["sentence"] == b.train["sentence"]
    c = train_eval_splits(task, data_dir=tmp_path, eval_size=10, seed=4)
    assert c.eval["sentence"] != a.eval["sentence"]
    write_jsonl(tmp_path / "validation.jsonl", [{"sentence": "v", "label": 1}])
    d = train_eval_splits(task, data_dir=tmp_path)
    assert d.eval["sentence"] == ["v"] and len(d.train) == 50  # a real evaluation split is used as it is


def test_a_user_task_is_a_few_lines(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "spam", None)  # removed again after the test
    spam = register_task(ClassificationTask(name="spam", inputs=("text",), template="{text}",
                                            system="Is this message spam?", labels=("no", "yes")))
    assert get_task("spam") is spam
    write_jsonl(tmp_path / "train.jsonl", [{"text": "win money", "label": "yes"}])
    data = spam.load("train", data_dir=tmp_path)
    assert spam.answer(data[0], tiny_chat_tokenizer()) == "yes"


def test_summarization_cuts_the_document_not_the_template():
    task = SummarizationTask(name="s", inputs=("article",), target="highlights", template="{article}",
                             system="Summarize.", max_source_tokens=5)
    tok = tiny_chat_tokenizer()
    prompt = task.prompt({"article": "abcdefghij", "highlights": "x"}, tok)
    assert prompt == "<s>system: Summarize.|<s>user: abcde|<s>assistant: "
    assert task.answer({"article": "a", "highlights": " the gist. \n"}, tok) == "the gist."


def test_summarization_rejects_empty_text(tmp_path):
    write_jsonl(tmp_path / "validation.jsonl", [{"article": "a", "highlights": "b"}, {"article": "", "highlights": "c"}])
    with pytest.raises(ValueError, match="row 1: column 'article' is ''"):
        get_task("cnndm").load("validation", data_dir=tmp_path)
