"""BitDistill's two distillation losses, usable without the Trainer.

Both return a *sum over tokens* divided by ``normalizer`` (default: the number of tokens that count), so that a
Trainer can divide by the token count of a whole accumulated, multi-device batch and get exactly the loss of one
big batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

RELATION_KINDS = ("scaled_dot", "cosine")

# Relation tensors are built for a few relation heads at a time, about this many fp32 elements per model.
_CHUNK_ELEMENTS = 1 << 22


def logits_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                        *, temperature: float = 5.0, normalizer: torch.Tensor | float | None = None) -> torch.Tensor:
    """``KL(softmax(z_t / T) || softmax(z_s / T)) * T^2`` per token, summed over tokens and divided by ``normalizer``.

    Args:
        student_logits, teacher_logits: ``(..., vocab)``, same shape (the vocabularies must match).
        mask: bool ``(...)``, the tokens that count (default: all).
        temperature: ``T``; the ``T^2`` factor keeps gradient sizes independent of it (Hinton et al.).
        normalizer: what the sum is divided by (default: the number of tokens that count).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; the vocabularies must match")
    if mask is not None:
        student_logits, teacher_logits = student_logits[mask], teacher_logits[mask]
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    total = (log_p_t.exp() * (log_p_t - log_p_s)).sum() * temperature**2
    count = student_logits.shape[:-1].numel() if normalizer is None else normalizer
    return total / count


def relation_log_probs(states: torch.Tensor, heads: int, kind: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log of the MiniLM-v2 self-relation of ``states`` ``(batch, T, width)``: ``(batch, heads, T, T)``.

    The width is split into ``heads`` relation heads of ``width / heads``; row ``i`` is a distribution over the
    positions ``j``: ``softmax_j(a_i . a_j / sqrt(d_r))`` for ``"scaled_dot"``, ``softmax_j(cos(a_i, a_j))`` for
    ``"cosine"`` (the authors' code, temperature 1). Padding columns (``mask`` False) get probability 0.
    """
    batch, length, width = states.shape
    if width % heads:
        raise ValueError(f"{heads} relation heads do not divide the width {width}")
    a = states.float().view(batch, length, heads, width // heads).transpose(1, 2)
    if kind == "scaled_dot":
        scores = a @ a.transpose(-1, -2) / math.sqrt(width // heads)
    elif kind == "cosine":
        a = F.normalize(a, dim=-1)
        scores = a @ a.transpose(-1, -2)
    else:
        raise ValueError(f"relation kind {kind!r} is not one of {RELATION_KINDS}")
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def _relation_kl_sum(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, kind: str,
                     heads: int) -> torch.Tensor:
    """Sum over the real rows of ``KL(teacher row || student row)``, summed over the given relation heads."""
    log_s = relation_log_probs(student, heads, kind, mask)
    with torch.no_grad():
        log_t = relation_log_probs(teacher, heads, kind, mask)
        p_t = log_t.exp()
    pair = mask[:, None, :, None] & mask[:, None, None, :]  # real row and real column
    return (p_t * (log_t - log_s)).masked_fill(~pair, 0.0).sum()


def attention_relation_distillation(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                                    mask: torch.Tensor | None = None, *, heads: int = 32, kind: str = "scaled_dot",
                                    weights: Sequence[float] = (1.0, 1.0, 1.0),
                                    normalizer: torch.Tensor | float | None = None) -> torch.Tensor:
    """MiniLM-v2 multi-head self-relation distillation over Q, K and V of one layer.

    For each state pair (student ``(batch, T, w_s)``, teacher ``(batch, T, w_t)``; the widths may differ, the
    re-split into ``heads`` relation heads makes them comparable) the loss is ``KL(teacher || student)`` of each
    relation row, averaged over relation heads, summed over the real rows (``mask``; padding is out of rows and
    columns) and divided by ``normalizer`` (default: the number of real rows); the Q, K, V terms are weighted by
    ``weights`` and added.

    Memory: the relation tensors are built a few relation heads at a time under activation checkpointing, so at
    most one chunk of ``(batch, heads', T, T)`` tensors is alive, in the forward and in the backward, instead of
    all three ``(batch, heads, T, T)`` relations of both models (see ``benchmarks/relation_memory.py``).
    """
    if not len(student_states) == len(teacher_states) == len(weights):
        raise ValueError(f"got {len(student_states)} student states, {len(teacher_states)} teacher states and "
                         f"{len(weights)} weights; they must be as many (Q, K, V: 3)")
    batch, length = student_states[0].shape[:2]
    if mask is None:
        mask = torch.ones(batch, length, dtype=torch.bool, device=student_states[0].device)
    mask = mask.bool()
    per_chunk = max(1, min(heads, _CHUNK_ELEMENTS // max(1, batch * length * length)))
    total = student_states[0].new_zeros((), dtype=torch.float32)
    for student, teacher, weight in zip(student_states, teacher_states, weights):
        if student.shape[:2] != (batch, length) or teacher.shape[:2] != (batch, length):
            raise ValueError(f"states must all be (batch={batch}, T={length}, width); got student "
                             f"{tuple(student.shape)}, teacher {tuple(teacher.shape)}")
        for name, width in (("student", student.shape[-1]), ("teacher", teacher.shape[-1])):
            if width % heads:
                raise ValueError(f"{heads} relation heads do not divide the {name}'s width {width}")
        if weight == 0:
            continue
        s_heads = student.view(batch, length, heads, -1)
        t_heads = teacher.view(batch, length, heads, -1)
        for start in range(0, heads, per_chunk):
            count = min(per_chunk, heads - start)
            s = s_heads[:, :, start:start + count].flatten(2)
            t = t_heads[:, :, start:start + count].flatten(2)
            if torch.is_grad_enabled() and s.requires_grad:
                part = checkpoint(_relation_kl_sum, s, t, mask, kind, count, use_reentrant=False)
            else:
                part = _relation_kl_sum(s, t, mask, kind, count)
            total = total + weight * part / heads
    rows = mask.sum() if normalizer is None else normalizer
    return total / rows


def hidden_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """For each student layer ``i`` (0-based), the teacher layer it learns from: the one at the same relative depth,
    ``round((i + 1) * teacher_layers / student_layers) - 1`` (the identity for equal depths; the last layers pair)."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got {student_layers} and {teacher_layers}")
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def hidden_state_distillation(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                              mask: torch.Tensor | None = None, *, eps: float = 1e-6,
                              normalizer: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-layer MSE between the student's and the teacher's hidden states, each first normalised by its own RMS
    over the hidden dimension (so layers of any scale, and tokens with massive activations, weigh alike).

    ``student_states[l]`` and ``teacher_states[l]`` are ``(batch, T, hidden)`` outputs of paired layers (see
    :func:`hidden_layer_map`). The loss is the mean over hidden channels of the squared difference, summed over the
    real tokens (``mask``) and layers, divided by the layer count and by ``normalizer`` (default: the real tokens).
    """
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(f"got {len(student_states)} student and {len(teacher_states)} teacher hidden states; "
                         "they must be as many, at least one")
    total = student_states[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_states, teacher_states):
        if student.shape != teacher.shape:
            raise ValueError(f"hidden states {tuple(student.shape)} (student) and {tuple(teacher.shape)} (teacher) "
                             "differ; hidden-state distillation needs the same hidden width")
        s = student.float()
        s = s * torch.rsqrt(s.square().mean(-1, keepdim=True) + eps)
        with torch.no_grad():
            t = teacher.float()
            t = t * torch.rsqrt(t.square().mean(-1, keepdim=True) + eps)
        per_token = (s - t).square().mean(-1)
        total = total + (per_token[mask.bool()] if mask is not None else per_token).sum()
    count = (mask.sum() if mask is not None else student_states[0].shape[:2].numel()) if normalizer is None \
        else normalizer
    return total / len(student_states) / count
