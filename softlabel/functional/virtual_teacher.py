"""Teacher-free distillation against a hand-made virtual teacher (Yuan et al., CVPR 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import (
    check_alpha,
    check_correct_prob,
    check_number,
    check_temperature,
)
from softlabel.kernels.modes.virtual_teacher import virtual_teacher_logits_into
from softlabel.kernels.spec import LossSpec

__all__ = ["check_correct_prob", "virtual_teacher_logits", "virtual_teacher_loss"]


def virtual_teacher_logits(
    target: Tensor, num_classes: int, correct_prob: float, like: Tensor
) -> Tensor:
    """Logits ``log q`` of the virtual teacher, ``q = a`` at the class ``target`` and
    ``(1 - a) / (K - 1)`` elsewhere: ``(..., K)`` in ``like``'s dtype and device.

    ``target`` holds valid class indices (ignored positions replaced by any class).
    """
    out = torch.empty((*target.shape, num_classes), dtype=like.dtype, device=like.device)
    flat = out.view(-1, num_classes)
    virtual_teacher_logits_into(target.reshape(-1, 1), correct_prob, flat)
    return out


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
    ``target`` holds class indices (the teacher is built from them). Memory: the teacher's
    rows are made chunk by chunk (mode ``virtual_teacher``), never as an (..., K) tensor.
    """
    spec = LossSpec(
        "virtual_teacher",
        {
            "correct_prob": check_number("correct_prob", correct_prob),  # checked with K
            "temperature": check_temperature(temperature),
            "alpha": check_alpha(alpha),
        },
    )
    if target is None:
        raise ValueError("virtual_teacher_loss builds its teacher from target: got target=None")
    return spec_loss(
        logits,
        target,
        spec,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=binary,
        name="virtual_teacher_loss",
    )
