"""Evaluation: batched, left-padded scoring equals one-at-a-time scoring; metrics match the libraries."""

import pytest
import torch
from datasets import Dataset

from bitnet_hf.evaluation import decode_speed, evaluate_model, summarization_metrics
from bitnet_hf.tasks import SummarizationTask, get_task
from tiny import tiny_chat_tokenizer, tiny_model

SENTENCES = ["a", "a fine film", "dull", "the plot is utterly dull and long", "fun!", "meh, ok"]


def sst2_data():
    return Dataset.from_list([{"sentence": s, "label": i % 2} for i, s in enumerate(SENTENCES)])


def test_label_scoring_in_batches_equals_one_example_at_a_time():
    model, tok, task = tiny_model("llama"), tiny_chat_tokenizer(), get_task("sst2")
    data = sst2_data()
    ids = task.label_token_ids(tok)
    expected = []
    for example in data:
        batch = tok(task.prompt(example, tok), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logits = model(**batch).logits[0, -1, ids]
        expected.append(task.labels[int(logits.argmax())])
    result = evaluate_model(model, tok, task, data, batch_size=4, progress=False)
    assert result.predictions == expected
    gold = [task.labels[label] for label in data["label"]]
    assert result.metrics["accuracy"] == pytest.approx(100 * sum(p == g for p, g in zip(expected, gold)) / 6)
    assert result.examples == 6 and result.tokens_per_second > 0
    assert tok.padding_side == "right"  # restored


@pytest.mark.parametrize("packed", [False, True], ids=["bitnet", "packed"])
def test_ternary_scores_do_not_depend_on_the_batch_size(packed):
    """A ternary model amplifies float differences (an int8 activation rounding tie flips, 30 layers carry it on):
    with SDPA and shifted positions, left-padded batches scored differently from one prompt at a time. In float32
    the scores of every batch size are now those of the prompt alone (eager attention), to float rounding."""
    from bitnet_hf import convert_to_bitnet, pack_bitnet

    tok, task = tiny_chat_tokenizer(), get_task("sst2")
    model = convert_to_bitnet(tiny_model("llama"), subln="paper")
    model.set_attn_implementation("eager")
    if packed:
        model = pack_bitnet(model, dtype=torch.float32)
    data = Dataset.from_list([{"sentence": " ".join(["so"] * n) + " good", "label": n % 2} for n in range(0, 40, 3)])
    ids = task.label_token_ids(tok)
    alone = []
    for example in data:
        batch = tok(task.prompt(example, tok), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            alone.append(model(**batch).logits[0, -1, ids].tolist())
    model.set_attn_implementation("sdpa")  # what from_pretrained gives; scoring runs eager, then restores it
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append((kw["attention_mask"], kw["position_ids"])),
                                           with_kwargs=True)
    # Packed: the kernels sum integers, exact at any batch shape. The training forward multiplies dequantized floats:
    # on some CPUs (an AMD EPYC here) the float GEMM rounds by batch shape and may flip one rounding tie (measured:
    # 8e-4 on one score), so there the scores agree to 1e-2 and every prediction is the same.
    tolerance = 1e-5 if packed else 1e-2
    for batch_size in (1, 4, len(data)):
        result = evaluate_model(model, tok, task, data, batch_size=batch_size, progress=False)
        assert torch.tensor(result.scores) == pytest.approx(torch.tensor(alone), abs=tolerance, rel=0)
        assert torch.equal(torch.tensor(result.scores).argmax(-1), torch.tensor(alone).argmax(-1))
    hook.remove()
    # each left-padded prompt at the positions it has alone (what a real model needs: shifted positions changed
    # SmolLM2's float32 scores by 0.87 even with eager attention)
    for mask, positions in seen:
        assert torch.equal(positions[mask.bool()], torch.cat([torch.arange(int(n)) for n in mask.sum(1)]))
    assert model.config._attn_implementation == "sdpa"  # restored


def test_generation_scoring_equals_greedy_generation():
    model, tok, task = tiny_model("llama"), tiny_chat_tokenizer(), get_task("sst2")
    data = sst2_data()
    result = evaluate_model(model, tok, task, data, batch_size=3, method="generate", max_new_tokens=4,
                            progress=False)
    for example, prediction in zip(data, result.predictions):
        batch = tok(task.prompt(example, tok), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**batch, do_sample=False, max_new_tokens=4, pad_token_id=tok.pad_token_id)
        assert prediction == tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    gold = [task.labels[label] for label in data["label"]]
    assert result.metrics["accuracy"] == 100 * sum(p == g for p, g in zip(result.predictions, gold)) / 6


def test_summarization_metrics_match_rouge_score_and_sacrebleu():
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    refs = ["the cat sat on the mat.\nit was happy.", "stocks fell sharply on monday."]
    preds = ["the cat sat on a mat. it was glad.", "stocks fell on monday."]
    metrics = summarization_metrics(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for kind in ("rouge1", "rouge2", "rougeL"):
        mean = sum(scorer.score(r, p)[kind].fmeasure for r, p in zip(refs, preds)) / 2
        assert metrics[kind] == pytest.approx(100 * mean, abs=1e-6)
    assert metrics["bleu"] == pytest.approx(BLEU().corpus_score(preds, [refs]).score)
    assert summarization_metrics(refs, refs)["rougeLsum"] == pytest.approx(100)
    assert summarization_metrics(["zzz qqq"], ["the cat"])["rouge1"] == 0


def test_summarization_evaluation_generates_at_most_the_limit():
    model, tok = tiny_model("llama"), tiny_chat_tokenizer()
    task = SummarizationTask(name="s", inputs=("article",), target="highlights", template="{article}",
                             max_source_tokens=20, max_new_tokens=5)
    data = Dataset.from_list([{"article": "a long article " * 5, "highlights": "short."}] * 3)
    result = evaluate_model(model, tok, task, data, batch_size=2, progress=False)
    assert set(result.metrics) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu"}
    assert all(0 <= v <= 100 for v in result.metrics.values())
    assert all(len(p) <= 5 for p in result.predictions)  # character tokens: at most 5 of them


def test_bad_evaluation_input():
    model, tok, task = tiny_model("llama"), tiny_chat_tokenizer(), get_task("sst2")
    with pytest.raises(ValueError, match="method='sample'"):
        evaluate_model(model, tok, task, sst2_data(), method="sample")
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(model, tok, task, sst2_data().select([]))
    with pytest.raises(ValueError, match=r"no column \['label'\]"):
        evaluate_model(model, tok, task, sst2_data().remove_columns("label"))


def test_decode_speed_counts_the_requested_tokens(monkeypatch):
    model, tok = tiny_model("llama"), tiny_chat_tokenizer()
    lengths = []
    original = model.generate

    def generate(**kwargs):
        out = original(**kwargs)
        lengths.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(model, "generate", generate)
    assert decode_speed(model, tok, "hello", new_tokens=7, repeats=3) > 0
    assert lengths == [2, 7, 7, 7]  # one warm-up call, then exactly new_tokens each time
