"""The distillation losses against references written straight from the formulas, one token and one row at a time."""

import math

import pytest
import torch

from bitnet_hf.distill import losses
from bitnet_hf.distill.losses import attention_relation_distillation, logits_distillation


def _kl(p_t: torch.Tensor, p_s: torch.Tensor) -> torch.Tensor:
    return (p_t * (p_t.log() - p_s.log())).sum()


def reference_logits_kd(s, t, mask, temperature):
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                p_t = torch.softmax(t[b, i].double() / temperature, -1)
                p_s = torch.softmax(s[b, i].double() / temperature, -1)
                total += _kl(p_t, p_s) * temperature**2
                count += 1
    return total / count


def reference_relation_kd(students, teachers, mask, heads, kind, weights):
    """Per sequence, keep only its real tokens (so padding is out of rows and columns), then per relation head
    build the T x T relation and average KL(teacher row || student row) over heads; mean over all real rows."""
    total, rows = 0.0, int(mask.sum())
    for s_all, t_all, w in zip(students, teachers, weights):
        for b in range(mask.shape[0]):
            idx = mask[b].nonzero().flatten()
            per_row = torch.zeros(len(idx), dtype=torch.float64)
            for r in range(heads):
                rel = {}
                for name, states in (("s", s_all), ("t", t_all)):
                    a = states[b, idx].double()
                    d = a.shape[-1] // heads
                    a = a[:, r * d:(r + 1) * d]
                    if kind == "scaled_dot":
                        scores = a @ a.T / math.sqrt(d)
                    else:
                        a = a / a.norm(dim=-1, keepdim=True)
                        scores = a @ a.T
                    rel[name] = torch.softmax(scores, -1)
                for i in range(len(idx)):
                    per_row[i] += _kl(rel["t"][i], rel["s"][i]) / heads
            total += w * per_row.sum()
    return total / rows


def _padded_mask(lengths, length, left=False):
    mask = torch.zeros(len(lengths), length, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if left:
            mask[b, length - n:] = True
        else:
            mask[b, :n] = True
    return mask


def test_logits_kd_matches_formula_on_padded_batch():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 50, generator=g) * 3, torch.randn(3, 7, 50, generator=g) * 3
    mask = _padded_mask([7, 4, 1], 7)
    for temperature in (1.0, 5.0):
        got = logits_distillation(s, t, mask, temperature=temperature)
        assert got.item() == pytest.approx(reference_logits_kd(s, t, mask, temperature).item(), rel=1e-5)
    assert logits_distillation(t, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    # The normalizer replaces the token count (a Trainer passes the count of the whole accumulated batch).
    assert logits_distillation(s, t, mask, normalizer=24).item() == pytest.approx(
        logits_distillation(s, t, mask).item() * 12 / 24, rel=1e-6)


def test_logits_kd_rejects_different_vocabularies():
    with pytest.raises(ValueError, match="vocabularies must match"):
        logits_distillation(torch.randn(2, 3, 10), torch.randn(2, 3, 11))


@pytest.mark.parametrize("kind", ["scaled_dot", "cosine"])
@pytest.mark.parametrize("left", [False, True])
def test_relation_kd_matches_formula_with_wider_teacher_and_padding(kind, left):
    g = torch.Generator().manual_seed(1)
    heads, lengths, length = 4, [6, 3, 5], 6
    # Student Q/K/V widths 32/16/16 (grouped-query), teacher twice as wide: the re-split makes them comparable.
    students = [torch.randn(3, length, w, generator=g) for w in (32, 16, 16)]
    teachers = [torch.randn(3, length, 2 * w, generator=g) for w in (32, 16, 16)]
    mask = _padded_mask(lengths, length, left)
    for states in students + teachers:  # garbage on padding positions must not matter
        states[~mask] = 1e4
    weights = (1.0, 0.5, 2.0)
    got = attention_relation_distillation(students, teachers, mask, heads=heads, kind=kind, weights=weights)
    want = reference_relation_kd(students, teachers, mask, heads, kind, weights)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_relation_kd_is_zero_for_identical_states_and_positive_otherwise():
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(2, 5, 16, generator=g) for _ in range(3)]
    assert attention_relation_distillation(s, s, heads=4).item() == pytest.approx(0.0, abs=1e-6)
    t = [torch.randn(2, 5, 16, generator=g) for _ in range(3)]
    assert attention_relation_distillation(s, t, heads=4).item() > 0.01


def test_relation_kd_chunks_and_checkpointing_change_nothing(monkeypatch):
    """Chunked over relation heads under activation checkpointing: same value, same gradient, no teacher grad."""
    mask = _padded_mask([8, 5], 8)

    def run():
        s = [torch.randn(2, 8, 24, generator=torch.Generator().manual_seed(i)).requires_grad_() for i in range(3)]
        t = [torch.randn(2, 8, 48, generator=torch.Generator().manual_seed(10 + i)).requires_grad_() for i in range(3)]
        loss = attention_relation_distillation(s, t, mask, heads=6)
        loss.backward()
        return loss.detach(), [x.grad for x in s], [x.grad for x in t]

    full, full_grads, teacher_grads = run()
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 2 * 8 * 8)  # one relation head per chunk
    chunked, chunked_grads, _ = run()
    assert torch.allclose(full, chunked, rtol=1e-6)
    for a, b in zip(full_grads, chunked_grads):
        assert a.abs().sum() > 0 and torch.allclose(a, b, rtol=1e-5, atol=1e-8)
    assert all(grad is None for grad in teacher_grads)


def test_relation_kd_rejects_heads_that_do_not_divide():
    s = [torch.randn(1, 4, 12)] * 3
    with pytest.raises(ValueError, match="5 relation heads do not divide the student's width 12"):
        attention_relation_distillation(s, s, heads=5)
    with pytest.raises(ValueError, match="relation kind 'dot'"):
        attention_relation_distillation(s, s, heads=4, kind="dot")
