"""Decoupled knowledge distillation (DKD, Zhao et al., CVPR 2022)."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import check_loss_weight, check_temperature
from softlabel.kernels.spec import LossSpec


def decoupled_distillation_spec(temperature, alpha, beta, ce_weight) -> LossSpec:
    """The ``dkd`` spec of these settings, each checked by its rule."""
    return LossSpec(
        "dkd",
        {
            "temperature": check_temperature(temperature),
            "tckd_weight": check_loss_weight("alpha", alpha),
            "nckd_weight": check_loss_weight("beta", beta),
            "ce_weight": check_loss_weight("ce_weight", ce_weight),
        },
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
    spec = decoupled_distillation_spec(temperature, alpha, beta, ce_weight)
    if target is None:
        raise ValueError(
            "target is required for decoupled_distillation_loss: TCKD and NCKD split the "
            "classes at the target class, got target=None"
        )
    return spec_loss(
        student_logits,
        target,
        spec,
        teacher_logits,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=binary,
        logits_name="student_logits",
        name="decoupled_distillation_loss",
    )
