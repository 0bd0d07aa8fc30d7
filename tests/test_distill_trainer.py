"""BitDistillConfig and BitDistillTrainer: the loss, its terms, accumulation, the teacher, and bad input."""

import json
import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import HfArgumentParser

import bitnet_hf
from bitnet_hf import BitDistillConfig, BitDistillTrainer, convert_to_bitnet
from bitnet_hf.data import CompletionCollator
from bitnet_hf.distill import QKVCapture, attention_relation_distillation, logits_distillation
from bitnet_hf.distill.losses import hidden_layer_map
from tiny import VOCAB, tiny_model


def token_dataset(n=8, seed=0, completion=False, lo=4, hi=12):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in torch.randint(lo, hi, (n,), generator=g).tolist():
        row = {"input_ids": torch.randint(3, VOCAB, (length,), generator=g).tolist()}
        if completion:
            row["completion_mask"] = [0] * (length - 2) + [1, 1]
        rows.append(row)
    return Dataset.from_list(rows)


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, report_to=[],
                save_strategy="no", logging_steps=1, relation_heads=4, learning_rate=1e-3, disable_tqdm=True,
                use_cpu=True, dataloader_pin_memory=False)
    return BitDistillConfig(**{**base, **kw})


def pair(family="llama"):
    teacher = tiny_model(family, seed=1)
    student = convert_to_bitnet(tiny_model(family, seed=0))
    return student, teacher


# ---- config ----

def test_config_defaults_presets_and_parsing(tmp_path):
    c = BitDistillConfig(output_dir=str(tmp_path))
    assert (c.logits_distill_weight, c.attention_distill_weight, c.distill_temperature) == (10.0, 1e5, 5.0)
    assert (c.relation_heads, c.relation_kind, c.qkv_weights, c.attention_distill_layer) == (32, "scaled_dot",
                                                                                             [1.0, 1.0, 1.0], None)
    s = BitDistillConfig(output_dir=str(tmp_path), distill_preset="summarization")
    assert (s.logits_distill_weight, s.attention_distill_weight) == (1.0, 1e3)
    assert BitDistillConfig(output_dir=str(tmp_path), distill_preset="summarization",
                            logits_distill_weight=3.0).logits_distill_weight == 3.0
    parser = HfArgumentParser(BitDistillConfig)
    (cli,) = parser.parse_args_into_dataclasses(["--output-dir", str(tmp_path), "--qkv-weights", "1", "0", "2",
                                                 "--attention-distill-layer", "-3", "--relation-kind", "cosine"])
    assert (cli.qkv_weights, cli.attention_distill_layer, cli.relation_kind) == ([1.0, 0.0, 2.0], -3, "cosine")
    (tmp_path / "c.yaml").write_text(f"output_dir: {tmp_path}\ndistill_preset: summarization\nrelation_heads: 8\n")
    (from_yaml,) = parser.parse_yaml_file(str(tmp_path / "c.yaml"))
    assert (from_yaml.attention_distill_weight, from_yaml.relation_heads) == (1e3, 8)
    (tmp_path / "c.json").write_text(json.dumps({"output_dir": str(tmp_path), "loss_tokens": "all"}))
    (from_json,) = parser.parse_json_file(str(tmp_path / "c.json"))
    assert from_json.loss_tokens == "all"


@pytest.mark.parametrize("bad, message", [
    (dict(distill_preset="translation"), "distill_preset='translation'"),
    (dict(logits_distill_weight=-1.0), "logits_distill_weight=-1.0 must be a finite number >= 0"),
    (dict(attention_distill_weight=float("nan")), "attention_distill_weight=nan must be a finite number >= 0"),
    (dict(distill_temperature=0.0), "distill_temperature=0.0 must be > 0"),
    (dict(relation_heads=0), "relation_heads=0"),
    (dict(relation_kind="dot"), "relation_kind='dot'"),
    (dict(qkv_weights=[1.0, 1.0]), "three weights"),
    (dict(loss_tokens="prompt"), "loss_tokens='prompt'"),
    (dict(logits_distill_tokens="prompt"), "logits_distill_tokens='prompt'"),
    (dict(max_steps=0), "max_steps=0 trains nothing"),
    (dict(quantization_warmup_steps=-1), "quantization_warmup_steps=-1 must be a finite number >= 0"),
    (dict(quantization_warmup_shape="cosine"), "quantization_warmup_shape='cosine' is not one of"),
    (dict(full_precision_lr_ratio=float("inf")), "full_precision_lr_ratio=inf must be a finite number >= 0"),
])
def test_config_rejects_bad_values(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        BitDistillConfig(output_dir=str(tmp_path), **bad)


def test_exported_from_the_package():
    assert bitnet_hf.BitDistillConfig is BitDistillConfig and bitnet_hf.BitDistillTrainer is BitDistillTrainer
    assert callable(bitnet_hf.convert_to_bitnet) and callable(bitnet_hf.continue_pretraining)


# ---- the loss ----

def test_loss_is_ce_plus_weighted_terms_computed_by_hand(tmp_path):
    student, teacher = pair()
    trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path, attention_distill_layer=1),
                                train_dataset=token_dataset(completion=True))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    student.train()
    loss = trainer.compute_loss(student, batch)

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    captures = QKVCapture(student, 1), QKVCapture(teacher, 1)
    with captures[0]:
        s_logits = student(**inputs).logits
    with captures[1], torch.no_grad():
        t_logits = teacher(**inputs).logits
    target = batch["labels"][:, 1:]
    counted = target.ne(-100)
    assert trainer.args.loss_tokens == "completion" and counted.sum() == 4 * 2 - 4 + 4  # 2 per row, minus shift
    ce = torch.nn.functional.cross_entropy(s_logits[:, :-1][counted], target[counted])
    ld = logits_distillation(s_logits[:, :-1], t_logits[:, :-1], counted, temperature=5.0)
    ad = attention_relation_distillation(captures[0].pop(), captures[1].pop(), batch["attention_mask"].bool(),
                                         heads=4)
    want = ce + 10 * ld + 1e5 * ad
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert ld.item() > 0 and ad.item() > 0


def test_logits_kd_over_all_real_tokens(tmp_path):
    """``logits_distill_tokens="all"``: CE still counts the answers, logits KD every real token followed by a real
    one (the prompt included), divided by their count."""
    student, teacher = pair()
    args = config(tmp_path, attention_distill_weight=0.0, logits_distill_tokens="all")
    trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=args,
                                train_dataset=token_dataset(completion=True))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert not batch["attention_mask"].all()  # right padding is in the batch
    loss = trainer.compute_loss(student, batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        s_logits, t_logits = student(**inputs).logits[:, :-1], teacher(**inputs).logits[:, :-1]
    target = batch["labels"][:, 1:]
    counted = target.ne(-100)
    real = batch["attention_mask"].bool()
    every = real[:, :-1] & real[:, 1:]
    assert every.sum() > 2 * counted.sum()
    ce = torch.nn.functional.cross_entropy(s_logits[counted], target[counted])
    per_token = [logits_distillation(s_logits[b, t], t_logits[b, t], temperature=5.0).item()
                 for b, t in every.nonzero().tolist()]
    want = ce.item() + 10 * sum(per_token) / len(per_token)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_hidden_state_kd_pairs_layers_and_is_computed_by_hand(tmp_path):
    """``hidden_distill_weight``: per-layer MSE of RMS-normalised hidden states over real tokens, a deeper teacher's
    layers paired by relative depth; a teacher of another width is refused before training."""
    student = convert_to_bitnet(tiny_model("llama", seed=0))
    teacher = tiny_model("llama", seed=1, num_hidden_layers=4)
    args = config(tmp_path, logits_distill_weight=0.0, attention_distill_weight=0.0, hidden_distill_weight=3.0)
    trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=args,
                                train_dataset=token_dataset(completion=True))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    loss = trainer.compute_loss(student, batch)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        s_out = student(**inputs, output_hidden_states=True)
        t_out = teacher(**inputs, output_hidden_states=True)
    layers = student.config.num_hidden_layers
    assert hidden_layer_map(layers, 4) == [1, 3] and layers == 2
    real = batch["attention_mask"].bool()

    def unit(h):
        return h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    mse = sum(((unit(s_out.hidden_states[1 + i]) - unit(t_out.hidden_states[1 + j])) ** 2).mean(-1)[real].sum()
              for i, j in enumerate([1, 3])) / 2 / real.sum()
    target = batch["labels"][:, 1:]
    counted = target.ne(-100)
    ce = torch.nn.functional.cross_entropy(s_out.logits[:, :-1][counted], target[counted])
    assert loss.item() == pytest.approx(ce.item() + 3.0 * mse.item(), rel=1e-5)
    assert hidden_layer_map(3, 3) == [0, 1, 2] and hidden_layer_map(2, 3) == [1, 2]
    wide = tiny_model("llama", seed=1, hidden_size=128)
    with pytest.raises(ValueError, match="needs the same hidden width in student and teacher"):
        BitDistillTrainer(model=student, teacher_model=wide, args=args, train_dataset=token_dataset())


def refuses_a_full_precision_model(tmp_path, **bitnet_only):
    """Training a full-precision model with a BitNet-only setting stops, naming what the model lacks."""
    fp = BitDistillTrainer(model=tiny_model("llama"), args=config(tmp_path, logits_distill_weight=0.0,
                                                                  attention_distill_weight=0.0, **bitnet_only),
                           train_dataset=token_dataset())
    setting = next(iter(bitnet_only))
    with pytest.raises(ValueError, match=f"{setting}.* has no BitLinear layers: it is not a BitNet training model"):
        fp.train()


def test_quantization_warmup_follows_the_step(tmp_path):
    """The quantizers are blended in linearly over ``quantization_warmup_steps`` (here a fraction of the steps:
    4 of 6) and are fully on after training."""
    from transformers import TrainerCallback

    from bitnet_hf import BitLinear

    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append({m.quantization_strength for m in model.modules() if isinstance(m, BitLinear)})

    student = convert_to_bitnet(tiny_model("llama"))
    trainer = BitDistillTrainer(model=student, args=config(tmp_path, max_steps=6, quantization_warmup_steps=4 / 6,
                                                            logits_distill_weight=0.0, attention_distill_weight=0.0),
                                train_dataset=token_dataset(n=24), callbacks=[Probe()])
    trainer.train()
    assert seen == [{0.0}, {0.25}, {0.5}, {0.75}, {1.0}, {1.0}]
    assert {m.quantization_strength for m in student.modules() if isinstance(m, BitLinear)} == {1.0}
    refuses_a_full_precision_model(tmp_path, quantization_warmup_steps=2)
    # the cubic shape, 1 - (1 - t)^3: 0, 0.578125, 0.875, 0.984375, then on
    seen.clear()
    student = convert_to_bitnet(tiny_model("llama"))
    BitDistillTrainer(model=student, args=config(tmp_path, max_steps=6, quantization_warmup_steps=4,
                                                 quantization_warmup_shape="cubic", logits_distill_weight=0.0,
                                                 attention_distill_weight=0.0),
                      train_dataset=token_dataset(n=24), callbacks=[Probe()]).train()
    assert seen == [{0.0}, {0.578125}, {0.875}, {0.984375}, {1.0}, {1.0}]


def test_full_precision_parameters_train_at_their_own_learning_rate(tmp_path):
    """``full_precision_lr_ratio`` scales the learning rate of everything but the ternary latent weights, through
    the whole schedule; at 0 those parameters do not move while the latent weights do."""
    from transformers import TrainerCallback

    from bitnet_hf import BitLinear

    student = convert_to_bitnet(tiny_model("llama"))
    ternary = {id(m.weight) for m in student.modules() if isinstance(m, BitLinear)}
    ratios = []

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            lrs = {all(id(p) in ternary for p in g["params"]): g["lr"] for g in optimizer.param_groups}
            ratios.append((lrs[False] / lrs[True], lrs[True]))

    args = config(tmp_path, max_steps=4, full_precision_lr_ratio=0.25, logits_distill_weight=0.0,
                  attention_distill_weight=0.0, lr_scheduler_type="cosine", weight_decay=0.1)
    trainer = BitDistillTrainer(model=student, args=args, train_dataset=token_dataset(n=16), callbacks=[Probe()])
    trainer.train()
    groups = trainer.optimizer.param_groups
    params = [id(p) for g in groups for p in g["params"]]
    # decayed: ternary weights, embeddings; not decayed: norms
    assert sorted(params) == sorted(id(p) for p in student.parameters()) and len(groups) == 3
    assert [r for r, _ in ratios] == pytest.approx([0.25] * 4) and ratios[0][1] > ratios[-1][1]
    args = config(tmp_path, full_precision_lr_ratio=0.0, logits_distill_weight=0.0, attention_distill_weight=0.0)
    frozen = BitDistillTrainer(model=student, args=args, train_dataset=token_dataset())
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    frozen.train()
    moved = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n, p in student.named_parameters() if id(p) in ternary}
    refuses_a_full_precision_model(tmp_path, full_precision_lr_ratio=0.5)


def test_each_term_is_logged(tmp_path):
    student, teacher = pair()
    trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                                train_dataset=token_dataset())
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2
    for entry in logs:
        assert {"ce", "logits_kd", "attention_kd"} <= set(entry)
        assert entry["logits_kd_weighted"] == pytest.approx(10 * entry["logits_kd"])
        assert entry["attention_kd_weighted"] == pytest.approx(1e5 * entry["attention_kd"])
        assert entry["loss"] == pytest.approx(entry["ce"] + 10 * entry["logits_kd"] + 1e5 * entry["attention_kd"],
                                              rel=1e-3)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """Uneven lengths and padding: 2 micro-batches of 2 give the same loss and update as 1 batch of 4 (SGD, so
    that a wrong normalisation would show in the weights)."""
    results = []
    for batch, accumulation in ((4, 1), (2, 2)):
        student, teacher = pair()
        args = config(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      max_steps=1, optim="sgd", learning_rate=0.5, train_sampling_strategy="sequential",
                      max_grad_norm=0.0)
        trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=args,
                                    train_dataset=token_dataset(n=4, completion=True))
        trainer.train()
        results.append((trainer.state.log_history[0], {k: v.clone() for k, v in student.state_dict().items()}))
    (log_a, weights_a), (log_b, weights_b) = results
    for key in ("loss", "ce", "logits_kd", "attention_kd"):
        assert log_a[key] == pytest.approx(log_b[key], rel=1e-4), key
    changed = 0
    for name, value in weights_a.items():
        assert torch.allclose(value, weights_b[name], atol=1e-6), name
        changed += not torch.equal(value, pair()[0].state_dict()[name])
    assert changed > 0


def test_plain_fine_tuning_without_teacher_is_the_models_own_ce(tmp_path):
    student, _ = pair()
    trainer = BitDistillTrainer(model=student, args=config(tmp_path, logits_distill_weight=0.0,
                                                           attention_distill_weight=0.0),
                                train_dataset=token_dataset())
    assert trainer.teacher is None
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert trainer.args.loss_tokens == "all"
    ours = trainer.compute_loss(student, batch)
    theirs = student(**batch).loss  # transformers' causal-LM loss over the same labels
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    trainer.train()
    assert all(set(e) & {"logits_kd", "attention_kd"} == set() for e in trainer.state.log_history)


def test_same_loss_with_sdpa_and_eager(tmp_path):
    losses = {}
    for impl in ("sdpa", "eager"):
        student, teacher = pair("qwen3")
        for m in (student, teacher):
            m.set_attn_implementation(impl)
        trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                                    train_dataset=token_dataset())
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        losses[impl] = trainer.compute_loss(student.eval(), batch).item()
    assert losses["sdpa"] == pytest.approx(losses["eager"], rel=1e-4)


def test_left_padding_gives_the_same_loss(tmp_path):
    student, teacher = pair()
    losses = {}
    for side in ("right", "left"):
        trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                                    train_dataset=token_dataset(completion=True))
        trainer.data_collator.padding_side = side
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        if side == "left":  # positions count from the first real token, as generate() does
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        losses[side] = trainer.compute_loss(student.eval(), batch).item()
    assert losses["left"] == pytest.approx(losses["right"], rel=1e-4)


# ---- the teacher ----

def test_teacher_is_frozen_and_never_changes(tmp_path):
    student, teacher = pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path, max_steps=3),
                                train_dataset=token_dataset())
    trainer.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_wider_deeper_teacher_and_peft_teacher(tmp_path):
    student = convert_to_bitnet(tiny_model("qwen3"))
    wide = tiny_model("qwen3", seed=3, hidden_size=128, num_hidden_layers=4, num_attention_heads=8, head_dim=16,
                      intermediate_size=160)
    trainer = BitDistillTrainer(model=student, teacher_model=wide, args=config(tmp_path),
                                train_dataset=token_dataset())
    assert (trainer._captures[0].layer, trainer._captures[1].layer) == (1, 3)  # 80% of each model's depth
    trainer.train()
    assert trainer.state.log_history[-2]["attention_kd"] > 0

    lora_teacher = get_peft_model(tiny_model("qwen3", seed=4), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = BitDistillTrainer(model=convert_to_bitnet(tiny_model("qwen3")), teacher_model=lora_teacher,
                                args=config(tmp_path), train_dataset=token_dataset())
    trainer.train()
    assert not any(p.requires_grad for p in lora_teacher.parameters())


def test_teacher_from_a_path(tmp_path):
    student, teacher = pair()
    teacher.save_pretrained(tmp_path / "teacher")
    trainer = BitDistillTrainer(model=student, teacher_model=str(tmp_path / "teacher"), args=config(tmp_path),
                                train_dataset=token_dataset())
    assert torch.equal(trainer.teacher.lm_head.weight, teacher.lm_head.weight)
    # training on the CPU: eager attention (same math; the CPU flash-attention backward is slow for short sequences)
    assert trainer.teacher.config._attn_implementation == "eager"
    student.save_pretrained(tmp_path / "student")
    from_path = BitDistillTrainer(model=str(tmp_path / "student"), teacher_model=teacher, args=config(tmp_path),
                                  train_dataset=token_dataset())
    assert from_path.model.config._attn_implementation == "eager"
    assert from_path.model.model.layers[0].self_attn.o_proj.weight.dtype == torch.float32


# ---- bad input, caught before the first step ----

def test_bad_input_is_caught_before_training(tmp_path):
    student, teacher = pair()
    data = token_dataset()
    with pytest.raises(ValueError, match="vocabulary has 300 entries and the student's 256"):
        BitDistillTrainer(model=student, teacher_model=tiny_model("llama", vocab_size=300), args=config(tmp_path),
                          train_dataset=data)
    with pytest.raises(ValueError, match="the student: attention_distill_layer=3 is out of range"):
        BitDistillTrainer(model=student, teacher_model=tiny_model("llama", num_hidden_layers=4),
                          args=config(tmp_path, attention_distill_layer=3), train_dataset=data)
    with pytest.raises(ValueError, match="the teacher: attention_distill_layer=-3"):
        BitDistillTrainer(model=convert_to_bitnet(tiny_model("llama", num_hidden_layers=4)), teacher_model=teacher,
                          args=config(tmp_path, attention_distill_layer=-3), train_dataset=data)
    with pytest.raises(ValueError, match=r"relation_heads=3 does not divide the student's Q/K/V widths \(64, 32, 32\)"):
        BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path, relation_heads=3),
                          train_dataset=data)
    with pytest.raises(ValueError, match="need a teacher_model"):
        BitDistillTrainer(model=student, args=config(tmp_path), train_dataset=data)
    with pytest.raises(ValueError, match="train_dataset is empty"):
        BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                          train_dataset=data.select([]))
    with pytest.raises(ValueError, match="needs `input_ids` .* or `prompt` and `completion`"):
        BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path),
                          train_dataset=Dataset.from_list([{"text": "a"}]))
    with pytest.raises(TypeError, match="BitDistillConfig"):
        BitDistillTrainer(model=student, teacher_model=teacher, args=None, train_dataset=data)
    with pytest.warns(UserWarning, match="the teacher has ternary BitNet layers"):
        BitDistillTrainer(model=student, teacher_model=convert_to_bitnet(tiny_model("llama")), args=config(tmp_path),
                          train_dataset=data)


def test_nan_loss_stops_with_step_and_term(tmp_path):
    student, teacher = pair()
    with torch.no_grad():
        teacher.lm_head.weight[5, 0] = math.inf  # teacher logits become inf/nan: only the logits KD breaks
    trainer = BitDistillTrainer(model=student, teacher_model=teacher, args=config(tmp_path, max_steps=3),
                                train_dataset=token_dataset())
    with pytest.raises(FloatingPointError, match=r"step 1: the logits_kd term of the loss is nan"):
        trainer.train()


def test_completion_collator_counts_only_answers():
    collator = CompletionCollator(pad_token_id=0, completion_only=True)
    batch = collator([{"input_ids": [5, 6, 7], "completion_mask": [0, 1, 1]},
                      {"input_ids": [8, 9], "completion_mask": [0, 1]}])
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    left = CompletionCollator(pad_token_id=0, padding_side="left")([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]] and left["labels"][1, 0] == -100
    with pytest.raises(ValueError, match="completion_mask"):
        collator([{"input_ids": [1, 2]}])
