"""Decoupled knowledge distillation (DKD, Zhao et al., CVPR 2022)."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._fused import fused_per_position
from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import (
    check_loss_weight,
    check_reduction,
    check_teacher,
    check_temperature,
    prepare,
)


def decoupled_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    ce_weight: float = 1.0,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """``ce_weight * CE(s, y) + T^2 * (alpha * TCKD + beta * NCKD)`` (DKD, Zhao et al., 2022).

    With p^T = softmax(logits / T): TCKD = KL(b_t || b_s), b = (p^T_y, 1 - p^T_y) the binary
    target/non-target masses; NCKD = KL(p^_t || p^_s), p^ = p^T renormalised over the classes
    k != y. Both KLs are T^2-scaled as in mdistiller's ``dkd_loss`` (alpha 1, beta 8 are its
    config's defaults); the non-target softmax excludes class y exactly (mdistiller subtracts
    1000 from its logit). mdistiller's warm-up, a factor min(epoch / 20, 1) on alpha and beta,
    is a schedule of ``DecoupledTeacher``'s alpha and beta. ``mean`` averages over the
    positions that count; ``weight[y_i]`` multiplies sample i's loss.

    Needs class indices ``(...)`` with logits ``(..., K)``. There is no binary form: with one
    logit per position the non-target part is a single class, so NCKD is 0 and TCKD is the
    Bernoulli KL of plain KD (use ``distillation_loss(binary=True)``).
    """
    check_reduction(reduction)
    temperature = check_temperature(temperature)
    alpha = check_loss_weight("alpha", alpha)
    beta = check_loss_weight("beta", beta)
    ce_weight = check_loss_weight("ce_weight", ce_weight)
    if target is None:
        raise ValueError(
            "target is required for decoupled_distillation_loss: TCKD and NCKD split the "
            "classes at the target class, got target=None"
        )
    positions = prepare(
        student_logits,
        target,
        ignore_index=ignore_index,
        weight=weight,
        logits_name="student_logits",
        binary=binary,
    )
    if positions.binary:
        raise ValueError(
            "decoupled_distillation_loss has no binary form: with one logit per position the "
            "non-target part is a single class, so NCKD is 0 and TCKD is plain KD's Bernoulli "
            "KL; use distillation_loss(binary=True)"
        )
    if positions.probs is not None:
        raise ValueError(
            "decoupled_distillation_loss needs class indices of shape "
            f"{tuple(student_logits.shape[:-1])}: TCKD and NCKD split the classes at the target "
            f"class, got class probabilities of shape {tuple(target.shape)}"
        )
    teacher = check_teacher(teacher_logits, student_logits)
    per_position = fused_per_position(
        student_logits,
        positions,
        "dkd",
        logits_name="student_logits",
        teacher=teacher,
        temperature=temperature,
        tckd_weight=alpha,
        nckd_weight=beta,
        ce_weight=ce_weight,
    )
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
