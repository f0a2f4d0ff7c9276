"""Label relaxation (Lienen and Huellermeier, AAAI 2021): no loss once p_y >= 1 - alpha."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import check_alpha
from softlabel.kernels.spec import LossSpec


def label_relaxation_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.1,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """Label relaxation: ``KL(p_r || p)`` where ``p_y < 1 - alpha``, else 0.

    p = softmax(s); p_r_y = 1 - alpha and p_r_k = alpha p_k / sum_{j != y} p_j (the closest
    distribution to p in the credal set {q: q_y >= 1 - alpha}), treated as a constant, so the
    gradient is p - p_r. Since p_r / p = alpha / (1 - p_y) off the target, the value is
    ``(1 - alpha) log((1 - alpha) / p_y) + alpha log(alpha / (1 - p_y))``. alpha = 0 gives the
    cross-entropy, alpha = 1 gives 0. Binary (one logit per position, 0/1 target): the same
    with the two classes, p_y = sigmoid(logit) for y = 1 and 1 - sigmoid(logit) for y = 0.
    Needs class indices (or 0/1 binary targets), not class probabilities (the credal set is
    built around the target class).
    """
    alpha = check_alpha(alpha)
    if target is None:
        raise ValueError("target is required for label_relaxation_loss, got target=None")
    return spec_loss(
        logits,
        target,
        LossSpec("relax", {"alpha": alpha}),
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=binary,
        name="label_relaxation_loss",
    )
