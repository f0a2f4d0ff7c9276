"""Knowledge distillation (Hinton et al.): hard CE plus a T^2-scaled divergence to the
teacher (forward or reverse KL, generalized JSD, total variation), optionally on
standardized logits (Sun et al., CVPR 2024)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tf
from torch import Tensor

from softlabel.functional._fused import fused_per_position
from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import (
    Positions,
    check_alpha,
    check_beta,
    check_divergence,
    check_flag,
    check_reduction,
    check_teacher,
    check_temperature,
    prepare,
)
from softlabel.functional.cross_entropy import binary_cross_entropy_from_logits


def _bernoulli_kl_from_logs(log_a: tuple[Tensor, Tensor], log_b: tuple[Tensor, Tensor]) -> Tensor:
    """``KL(a || b)`` of two Bernoullis given as (log P(1), log P(0))."""
    return sum(la.exp() * (la - lb) for la, lb in zip(log_a, log_b))


def _bernoulli_divergence(
    teacher_logits: Tensor, student_logits: Tensor, divergence: str, beta: float
) -> Tensor:
    """D(Bern(sigmoid(t)), Bern(sigmoid(s))): a binary logit is a 2-class distribution."""
    teacher = (tf.logsigmoid(teacher_logits), tf.logsigmoid(-teacher_logits))
    student = (tf.logsigmoid(student_logits), tf.logsigmoid(-student_logits))
    if divergence == "jsd" and beta in (0.0, 1.0):
        divergence = "forward_kl" if beta == 0.0 else "reverse_kl"
    if divergence == "forward_kl":
        return _bernoulli_kl_from_logs(teacher, student)
    if divergence == "reverse_kl":
        return _bernoulli_kl_from_logs(student, teacher)
    if divergence == "tvd":  # 1/2 (|p_t - p_s| + |(1 - p_t) - (1 - p_s)|)
        return (teacher[0].exp() - student[0].exp()).abs()
    log_beta, log_rest = math.log(beta), math.log1p(-beta)
    mixture = tuple(torch.logaddexp(t + log_beta, s + log_rest) for t, s in zip(teacher, student))
    return beta * _bernoulli_kl_from_logs(teacher, mixture) + (
        1.0 - beta
    ) * _bernoulli_kl_from_logs(student, mixture)


def _per_position_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    positions: Positions,
    temperature: float,
    alpha: float,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    standardize: bool = False,
) -> Tensor:
    """Unreduced ``(1 - alpha) * CE(s, y) + alpha * T^2 * D(p_t^T, p_s^T)``.

    Multiclass through the fused kernel; binary with the Bernoulli forms below.
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
            divergence=divergence,
            beta=beta,
            standardize=standardize,
        )
    logits = positions.logits
    soft = (temperature * temperature) * _bernoulli_divergence(
        teacher_logits / temperature, logits / temperature, divergence, beta
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
    divergence: str = "forward_kl",
    beta: float = 0.5,
    standardize: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """``(1 - alpha) * CE(s, y) + alpha * T^2 * D(p_t^T, p_s^T)``, p^T = softmax(logits / T).

    ``divergence``: ``"forward_kl"`` KL(p_t^T || p_s^T) (Hinton et al., 2015);
    ``"reverse_kl"`` KL(p_s^T || p_t^T); ``"jsd"`` the generalized JSD of GKD (Agarwal et al.,
    ICLR 2024) as TRL computes it: beta KL(p_t^T || M) + (1 - beta) KL(p_s^T || M),
    M = beta p_t^T + (1 - beta) p_s^T, with beta = 0 giving KL(p_t^T || p_s^T) and beta = 1
    KL(p_s^T || p_t^T); ``"tvd"`` 1/2 sum_k |p_t^T - p_s^T|. Every divergence is multiplied by
    T^2. ``beta`` is only used by the JSD. ``standardize=True``: logit standardization (Sun et
    al., CVPR 2024), student and teacher logits z-scored per position, (z - mean) /
    (std + 1e-7) with Bessel's correction, before dividing by T; the CE stays on the raw
    logits; the student's z-scoring is differentiated through.

    The divergence is summed over classes per position, so ``mean`` is the batchmean over the
    positions that count. Binary (one logit per position): the Bernoulli forms of every
    divergence between ``sigmoid(t/T)`` and ``sigmoid(s/T)``, times T^2 (no standardization:
    one logit has no spread). Teacher logits get no gradient. ``target=None`` needs
    ``alpha=1`` (pure distillation); then every position counts. ``binary`` tells a binary
    task from a multiclass one (default: binary only for 1-D logits); ``target`` may also hold
    class probabilities ``(..., K)`` for the hard term.
    """
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    alpha = check_alpha(alpha)
    divergence = check_divergence(divergence)
    beta = check_beta(beta)
    standardize = check_flag("standardize", standardize)
    if divergence != "jsd" and beta != 0.5:
        raise ValueError(
            f"beta is only used by divergence='jsd', got beta={beta} with divergence={divergence!r}"
        )
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
    if standardize and positions.binary:
        raise ValueError(
            "standardize=True needs multiclass logits (..., K): a binary task has one logit "
            "per position, which has no per-position mean and std to standardize with"
        )
    teacher = check_teacher(teacher_logits, student_logits, positions.binary)
    per_position = _per_position_distillation(
        student_logits, teacher, positions, temperature, alpha, divergence, beta, standardize
    )
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
