"""DIST (Huang et al., NeurIPS 2022): distillation by inter- and intra-class Pearson
correlation between student and teacher probabilities."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from softlabel.functional._engine import multiclass_per_position
from softlabel.functional._reduction import _reduce
from softlabel.kernels.checks import (
    check_alpha,
    check_finite_rows,
    check_loss_weight,
    check_number,
    check_reduction,
    check_target_needed,
    check_teacher,
    check_temperature,
    prepare,
)
from softlabel.kernels.spec import LossSpec, compute_dtype


def check_beta(beta: Any) -> float:
    """DIST's weight of the inter-class term: a finite number >= 0."""
    return check_loss_weight("beta", beta)


def check_gamma(gamma: Any) -> float:
    """DIST's weight of the intra-class term: a finite number >= 0."""
    return check_loss_weight("gamma", gamma)


def _check_eps(eps: Any) -> float:
    number = check_number("eps", eps)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return number


def pearson_rows(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (rows,):
    ``sum(a_c b_c) / (||a_c|| ||b_c|| + eps)`` with ``x_c = x - mean(x)`` over the row."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
    beta: float = 1.0,
    gamma: float = 1.0,
    *,
    eps: float = 1e-8,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """``(1 - alpha) * CE(s, y) + alpha * T^2 * (beta * L_inter + gamma * L_intra)``.

    With ``P = softmax(s/T)`` and ``Q = softmax(t/T)`` over the N positions that count (rows
    of the flattened ``(..., K)`` logits): ``L_inter = 1 - mean_i rho(P_i, Q_i)`` (per row,
    over classes) and ``L_intra = 1 - mean_k rho(P[:, k], Q[:, k])`` (per class, over the
    batch's rows), ``rho(a, b) = a_c . b_c / (||a_c|| ||b_c|| + eps)``, ``x_c = x - mean(x)``
    (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022; the
    ``eps`` is theirs). ``L_intra`` is one number for the whole batch: each counted position
    gets its own CE and ``1 - rho(P_i, Q_i)``, plus the same batch term, so ``mean`` is the
    formula above, ``sum`` is N times it and ``none`` holds the per-position values (each
    depends on every counted row through the batch term). ``weight[y_i]`` weights each
    position in the reduction (so the inter term's mean is weighted); the intra correlation
    itself is unweighted. ``target=None`` needs ``alpha=1``. Multiclass only.
    """
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    beta = check_beta(beta)
    gamma = check_gamma(gamma)
    eps = _check_eps(eps)
    check_target_needed(target, alpha)
    positions = prepare(
        student_logits,
        target,
        ignore_index=ignore_index,
        weight=weight,
        logits_name="student_logits",
        binary=False,
    )
    teacher = check_teacher(teacher_logits, student_logits)
    dtype = compute_dtype(student_logits)
    k = student_logits.shape[-1]
    mask = positions.mask.reshape(-1)
    rows = mask.nonzero().view(-1)
    student = student_logits.reshape(-1, k).index_select(0, rows).to(dtype)
    p = torch.softmax(student / temperature, dim=1)
    q = torch.softmax(teacher.reshape(-1, k).index_select(0, rows).to(dtype) / temperature, dim=1)
    scale = alpha * temperature * temperature
    inter = 1.0 - pearson_rows(p, q, eps)
    if rows.numel() > 0:
        intra = 1.0 - pearson_rows(p.t(), q.t(), eps).mean()
    else:
        intra = p.new_zeros(())
    soft_rows = scale * (beta * inter + gamma * intra)
    row_local = p.new_zeros(mask.shape).index_put((rows,), scale * beta * inter)
    per_position = p.new_zeros(mask.shape).index_put((rows,), soft_rows)
    per_position = per_position.view(positions.mask.shape)
    if alpha < 1.0:
        hard = multiclass_per_position(
            student_logits, positions, LossSpec("hard"), None, "student_logits", "dist_loss"
        ).to(dtype)
        per_position = (1.0 - alpha) * hard + per_position
        row_local = row_local + (1.0 - alpha) * hard.detach().reshape(-1)
    # teacher logits must be finite (one rule for every source): a -inf leaves the
    # correlation finite, so the rows are checked by their sums (one pass, O(N) on the error)
    finite = torch.isfinite(teacher.reshape(-1, k).sum(dim=1)) | ~mask
    row_local = torch.where(finite, row_local, torch.full_like(row_local, float("nan")))
    check_finite_rows(
        row_local.detach().view(positions.mask.shape),
        {"student_logits": student_logits, "teacher_logits": teacher},
    )
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
