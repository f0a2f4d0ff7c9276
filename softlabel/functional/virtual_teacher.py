"""Teacher-free distillation against a hand-made virtual teacher (Yuan et al., CVPR 2020)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from softlabel.functional._validation import (
    _as_float,
    check_alpha,
    check_reduction,
    check_temperature,
    prepare,
)
from softlabel.functional.distillation import distillation_loss


def check_correct_prob(correct_prob: Any, num_classes: int | None = None) -> float:
    """``correct_prob`` in (1/K, 1), or in (0, 1) while K is not known yet."""
    value = _as_float("correct_prob", correct_prob)
    low = 0.0 if num_classes is None else 1.0 / num_classes
    if not low < value < 1.0:
        allowed = (
            "(0, 1)" if num_classes is None else f"(1/K, 1) = ({low:.6g}, 1) for K={num_classes}"
        )
        raise ValueError(f"correct_prob must be in {allowed}, got {correct_prob!r}")
    return value


def virtual_teacher_logits(
    target: Tensor, num_classes: int, correct_prob: float, like: Tensor
) -> Tensor:
    """Logits ``log q`` of the virtual teacher, ``q = a`` at the class ``target`` and
    ``(1 - a) / (K - 1)`` elsewhere: ``(..., K)`` in ``like``'s dtype and device.

    ``target`` holds valid class indices (ignored positions replaced by any class).
    """
    a = correct_prob
    other = math.log((1.0 - a) / (num_classes - 1))
    teacher = torch.full((*target.shape, num_classes), other, dtype=like.dtype, device=like.device)
    return teacher.scatter_(-1, target.unsqueeze(-1), math.log(a))


def virtual_teacher_loss(
    logits: Tensor,
    target: Tensor,
    correct_prob: float = 0.9,
    temperature: float = 20.0,
    alpha: float = 0.9,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """Tf-KD_reg: ``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(log q / T) || softmax(s / T))``.

    The virtual teacher q puts ``a = correct_prob`` on the true class and ``(1 - a)/(K - 1)``
    on each other class (Yuan et al., "Revisiting Knowledge Distillation via Label Smoothing
    Regularization", CVPR 2020); it is ``distillation_loss`` against the teacher logits
    ``log q``, so ``softmax(log q / T)`` puts ``a^(1/T) / Z`` on y and ``b^(1/T) / Z`` on the
    others (``b = (1 - a)/(K - 1)``, ``Z = a^(1/T) + (K - 1) b^(1/T)``). ``a`` must lie in
    (1/K, 1). Binary (one logit): teacher logit ``+-log(a / (1 - a))``, a in (1/2, 1).
    ``target`` holds class indices (the teacher is built from them). Memory: the teacher
    logits are one ``(..., K)`` tensor in the compute dtype, the size of a real teacher's.
    """
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    if target is None:
        raise ValueError("virtual_teacher_loss builds its teacher from target: got target=None")
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight, binary=binary)
    if positions.index is None:
        raise ValueError(
            "virtual_teacher_loss needs class indices as target (the virtual teacher is built "
            f"from them), got class probabilities of shape {tuple(target.shape)}"
        )
    num_classes = 2 if positions.binary else positions.num_classes
    a = check_correct_prob(correct_prob, num_classes)
    if positions.binary:
        sign = positions.index.to(positions.dtype) * 2 - 1
        teacher = sign * math.log(a / (1.0 - a))
    else:
        like = logits.new_empty((), dtype=positions.dtype)
        teacher = virtual_teacher_logits(positions.index, num_classes, a, like)
    return distillation_loss(
        logits,
        teacher,
        target,
        temperature,
        alpha,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=binary,
    )
