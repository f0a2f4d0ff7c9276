"""Mode ``uld``: Universal Logit Distillation, for a teacher with another vocabulary.

Boizard, Haddad, Hudelot and Colombo, "Towards Cross-Tokenizer Distillation: the Universal
Logit Distillation Loss for LLMs", 2024: with p_s = softmax(s / T) and p_t = softmax(t / T)
over their own vocabularies, each sorted in decreasing order and the shorter padded with
zeros,

    loss = (1 - alpha) CE(s, y) + alpha sum_i |sort(p_s)_i - sort(p_t)_i|

(no T^2: an L1 distance between probability vectors, in [0, 2]). A top-k teacher reference
(k ids, their log-probabilities, the tail) gives the teacher's k largest probabilities and the
mass of the rest: the sorted distance is then taken on k + 1 buckets, the k largest and one
for the rest, ``sum_{i<k} |sort(p_s)_i - q_i| + |sum_{i>=k} sort(p_s)_i - q_tail|`` (a lower
bound of the full distance by the triangle inequality, exact when the k ids hold all the
teacher's mass), with the buckets softened at T as in the top-k KD.

Hybrid (GOLD, TRL's cross-tokenizer trainer): given ``matched`` (M, 2) pairs of a student and
a teacher id of the same token string, ``matched_weight * KL(q^ || p^) + unmatched_weight *
ULD_rest``: the exact KL on the M matched tokens plus one bucket for every other token (the
distributions coarsened to {each matched token, the rest}), and the sorted L1 distance on the
unmatched tokens' probabilities alone. GOLD uses a generalized JSD on the raw matched
probabilities and weights M / V_t and 1 - M / V_t, the defaults here when the weights are
None.

Sorting makes the loss O(V log V) per row and its gradient a permutation of signs. Past the
smaller vocabulary's width w the padded terms are the larger vector's own entries, so only its
w largest are sorted (``topk``) and the rest is summed: O(V log w), the same value and gradient
(with SmolLM2's 49,152 ids against a byte-level student's 258, w = 258). The chunk
differentiates the formula with autograd on its rows, so only chunk-sized temporaries exist.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from softlabel.kernels.checks import (
    check_alpha,
    check_loss_weight,
    check_temperature,
    check_vocabulary_map,
)
from softlabel.kernels.modes.base import Mode
from softlabel.kernels.modes.smoothing import cross_entropy_rows
from softlabel.kernels.references import LinearHead, TopKLogits


def _largest(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(values, rest)``: the ``k`` largest entries of each row in decreasing order and the
    sum of the others (a masked sum, so that a tiny rest is not lost to cancellation)."""
    if k >= x.shape[1]:
        return x.sort(dim=1, descending=True).values, x.new_zeros(x.shape[0])
    values, index = x.topk(k, dim=1)
    others = torch.ones_like(x, dtype=torch.bool).scatter_(1, index, False)
    return values, (x * others).sum(dim=1)


def _sorted_l1(p: Tensor, q: Tensor) -> Tensor:
    """sum_i |sort(p)_i - sort(q)_i| per row, each sorted decreasingly, the shorter padded
    with zeros. Past the shorter width w the terms are |0 - x_i| = x_i: only the w largest of
    the wider vector are sorted (``topk``, O(V log w) instead of a full O(V log V) sort) and
    the rest enters as its sum, the same value and gradient."""
    width = min(p.shape[1], q.shape[1])
    p_sorted, p_rest = _largest(p, width)
    q_sorted, q_rest = _largest(q, width)
    return (p_sorted - q_sorted).abs().sum(dim=1) + p_rest + q_rest


def _sorted_l1_buckets(p: Tensor, teacher: TopKLogits, temperature: float) -> Tensor:
    """The sorted distance against a top-k reference on k + 1 buckets (see the module)."""
    _, logprob, tail = teacher
    k = logprob.shape[1]
    buckets = torch.cat([logprob, tail.unsqueeze(1)], dim=1).to(p.dtype)
    q = torch.softmax(buckets / temperature, dim=1)
    q_kept = q[:, :k].sort(dim=1, descending=True).values
    p_kept, p_rest = _largest(p, k)  # the student's k largest, the rest summed
    if p_kept.shape[1] < k:  # a student vocabulary smaller than the buckets
        p_kept = F.pad(p_kept, (0, k - p_kept.shape[1]))
    head = (p_kept - q_kept).abs().sum(dim=1)
    return head + (p_rest - q[:, k]).abs()


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    a = log_a.exp()
    safe = torch.where(a > 0, log_a, torch.zeros_like(log_a))
    return (a * (safe - log_b)).sum(dim=1)


def _hybrid(
    p: Tensor,
    q: Tensor,
    matched: Tensor,
    matched_weight: float | None,
    unmatched_weight: float | None,
) -> Tensor:
    """matched_weight KL on {matched tokens, the rest} + unmatched_weight sorted L1 on the
    unmatched tokens (see the module)."""
    matched = matched.to(p.device)
    student_ids, teacher_ids = matched[:, 0], matched[:, 1]
    student_rest = torch.ones(p.shape[1], dtype=torch.bool, device=p.device)
    student_rest[student_ids] = False
    teacher_rest = torch.ones(q.shape[1], dtype=torch.bool, device=q.device)
    teacher_rest[teacher_ids] = False
    p_rest, q_rest = p[:, student_rest], q[:, teacher_rest]
    p_buckets = torch.cat([p[:, student_ids], p_rest.sum(dim=1, keepdim=True)], dim=1)
    q_buckets = torch.cat([q[:, teacher_ids], q_rest.sum(dim=1, keepdim=True)], dim=1)
    kl = _kl(q_buckets.log(), p_buckets.log())
    if matched_weight is None:
        matched_weight = matched.shape[0] / q.shape[1]
    if unmatched_weight is None:
        unmatched_weight = 1.0 - matched_weight
    return matched_weight * kl + unmatched_weight * _sorted_l1(p_rest, q_rest)


def uld_reference(
    s: Tensor,
    labels: Tensor | None,
    soft_target: Tensor | None,
    teacher: Tensor | TopKLogits,
    temperature: float,
    alpha: float,
    matched: Tensor | None = None,
    matched_weight: float | None = None,
    unmatched_weight: float | None = None,
) -> Tensor:
    """The per-row loss (N,) of logits ``s`` (N, V_s) against ``teacher`` (dense (N, V_t)
    logits or a ``TopKLogits``), differentiable."""
    p = torch.softmax(s / temperature, dim=1)
    if isinstance(teacher, TopKLogits):
        soft = _sorted_l1_buckets(p, teacher, temperature)
    else:
        q = torch.softmax(teacher.to(s.dtype) / temperature, dim=1)
        if matched is None:
            soft = _sorted_l1(p, q)
        else:
            soft = _hybrid(p, q, matched, matched_weight, unmatched_weight)
    if alpha == 1.0:
        return alpha * soft
    hard = cross_entropy_rows(torch.log_softmax(s, dim=1), labels, soft_target)
    return (1.0 - alpha) * hard + alpha * soft


def _optional_weight(name: str):
    def check(value: Any) -> float | None:
        return None if value is None else check_loss_weight(name, value)

    return check


class UniversalLogitDistillation(Mode):
    """``uld``: params ``temperature``, ``alpha``, ``matched`` ((M, 2) student and teacher ids
    of the same token, or None), ``matched_weight`` and ``unmatched_weight`` (None: GOLD's
    M / V_t and 1 - M / V_t); a teacher of any vocabulary: dense logits, a live head or a
    top-k reference (not with ``matched``)."""

    name = "uld"
    defaults = {
        "temperature": 1.0,
        "alpha": 0.5,
        "matched": None,
        "matched_weight": None,
        "unmatched_weight": None,
    }
    checks = {
        "temperature": check_temperature,
        "alpha": check_alpha,
        "matched": lambda value: None if value is None else check_vocabulary_map(value),
        "matched_weight": _optional_weight("matched_weight"),
        "unmatched_weight": _optional_weight("unmatched_weight"),
    }
    teacher = frozenset({"logits", "head", "topk"})
    any_vocabulary = True

    def needs_labels(self, spec) -> bool:
        return spec.alpha < 1.0

    def temporaries(self, spec) -> int:
        return 10  # softmaxes, sorted values and their int64 indices, their gradients

    def check(self, spec, mask, num_classes) -> None:
        matched = spec.matched
        if matched is None:
            return
        if isinstance(spec.teacher, TopKLogits):
            raise ValueError(
                "the hybrid ULD (a vocabulary map) needs the teacher's probabilities of every "
                "matched token, but the reference is a top-k TopKLogits; use the plain ULD "
                "(no map) with a top-k cache, or a dense or live teacher"
            )
        teacher = spec.teacher
        teacher_vocab = (
            teacher.weight.shape[0] if isinstance(teacher, LinearHead) else teacher.shape[-1]
        )
        for column, (name, vocab) in enumerate(
            (("student", num_classes), ("teacher", teacher_vocab))
        ):
            high = int(matched[:, column].max()) if matched.numel() else -1
            if high >= vocab:
                raise ValueError(
                    f"the vocabulary map holds {name} id {high}, but the {name}'s vocabulary "
                    f"has {vocab} ids"
                )

    def chunk(self, s, y, q, g, t, prev, work, spec, state) -> Tensor:
        with torch.enable_grad():
            x = s.detach().to(g.dtype).requires_grad_()
            loss = uld_reference(
                x,
                None if y is None else y.view(-1),
                q,
                t,
                spec.temperature,
                spec.alpha,
                spec.matched,
                spec.matched_weight,
                spec.unmatched_weight,
            )
            (grad,) = torch.autograd.grad(loss.sum(), x)
        g.copy_(grad)
        return loss.detach()

    def reference(self, s, labels, spec, teacher=None) -> Tensor:
        return uld_reference(
            s,
            labels,
            spec.soft_target,
            teacher,
            spec.temperature,
            spec.alpha,
            spec.matched,
            spec.matched_weight,
            spec.unmatched_weight,
        )
