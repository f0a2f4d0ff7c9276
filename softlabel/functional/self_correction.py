"""ReLoop self-correction: hard CE plus a hinge that keeps the true-class probability from
dropping below the previous model's (Cai et al., SIGIR 2022)."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import check_alpha
from softlabel.kernels.spec import LossSpec


def self_correction_loss(
    logits: Tensor,
    target: Tensor,
    previous: Tensor,
    alpha: float = 0.5,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """ReLoop loss ``(1 - alpha) * CE + alpha * L_sc``.

    Multiclass: ``L_sc = max(0, p_prev[y] - p[y])``. Binary, p = sigmoid(logit):
    ``L_sc = y max(0, p_prev - p) + (1 - y) max(0, p - p_prev)``. ``previous`` holds the
    previous model's probabilities: ``(..., K)`` for multiclass (or ``p_prev[y]`` already
    gathered, of the target's shape), or ``(...)`` = P(y=1) for binary. They are constants
    (no gradient). With a probability target q (..., K) the hinge is
    ``sum_k q_k max(0, p_prev_k - p_k)``, the paper's ``max(0, p_prev[y] - p[y])`` when q is
    one-hot.
    """
    alpha = check_alpha(alpha)
    if target is None:
        raise ValueError("target is required for self_correction_loss, got target=None")
    return spec_loss(
        logits,
        target,
        LossSpec("reloop", {"alpha": alpha}),
        previous,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=binary,
        name="self_correction_loss",
    )
