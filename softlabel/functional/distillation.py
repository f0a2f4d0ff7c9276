"""Knowledge distillation (Hinton et al.): hard CE plus T^2-scaled KL to the teacher."""

from __future__ import annotations

import torch.nn.functional as tf
from torch import Tensor

from softlabel.functional._fused import fused_per_position
from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import (
    Positions,
    check_alpha,
    check_reduction,
    check_teacher,
    check_temperature,
    prepare,
)
from softlabel.functional.cross_entropy import binary_cross_entropy_from_logits


def _bernoulli_kl(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``KL(Bern(sigmoid(t)) || Bern(sigmoid(s)))`` from logits, via logsigmoid."""
    teacher_pos, teacher_neg = tf.logsigmoid(teacher_logits), tf.logsigmoid(-teacher_logits)
    student_pos, student_neg = tf.logsigmoid(student_logits), tf.logsigmoid(-student_logits)
    return teacher_pos.exp() * (teacher_pos - student_pos) + teacher_neg.exp() * (
        teacher_neg - student_neg
    )


def _per_position_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    positions: Positions,
    temperature: float,
    alpha: float,
) -> Tensor:
    """Unreduced ``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(p_t^T || p_s^T)``.

    Multiclass through the fused kernel; binary with the Bernoulli KL below.
    """
    if not positions.binary:
        return fused_per_position(
            student_logits,
            positions,
            "kd",
            logits_name="student_logits",
            teacher=teacher_logits,
            temperature=temperature,
            alpha=alpha,
        )
    logits = positions.logits
    soft = (temperature * temperature) * _bernoulli_kl(
        teacher_logits / temperature, logits / temperature
    )
    if alpha == 1.0:
        return soft
    hard = binary_cross_entropy_from_logits(logits, positions.binary_target)
    return (1 - alpha) * hard + alpha * soft


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    The KL is summed over classes per position, so ``mean`` is the batchmean over the
    positions that count. Binary (one logit per position): the Bernoulli KL between
    ``sigmoid(t/T)`` and ``sigmoid(s/T)``, times T^2. Teacher logits get no gradient.
    ``target=None`` needs ``alpha=1`` (pure distillation); then every position counts.
    ``binary`` tells a binary task from a multiclass one (default: binary only for 1-D logits);
    ``target`` may also hold class probabilities ``(..., K)`` for the hard term.
    """
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    if target is None and alpha < 1.0:
        raise ValueError(
            f"target=None is only allowed with alpha=1 (pure distillation), got alpha={alpha}; "
            "pass target for the hard cross-entropy term"
        )
    positions = prepare(
        student_logits,
        target,
        ignore_index=ignore_index,
        weight=weight,
        logits_name="student_logits",
        binary=binary,
    )
    teacher = check_teacher(teacher_logits, student_logits, positions.binary)
    per_position = _per_position_distillation(
        student_logits, teacher, positions, temperature, alpha
    )
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
