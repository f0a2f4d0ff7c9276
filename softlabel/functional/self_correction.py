"""ReLoop self-correction: hard CE plus a hinge that keeps the true-class probability from
dropping below the previous model's."""

from __future__ import annotations

import torch
from torch import Tensor

from softlabel.functional._fused import fused_per_position
from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import (
    Positions,
    check_alpha,
    check_previous,
    check_reduction,
    prepare,
)
from softlabel.functional.cross_entropy import binary_cross_entropy_from_logits


def _per_position_self_correction(
    logits: Tensor, positions: Positions, previous: Tensor, alpha: float
) -> Tensor:
    """Unreduced ``(1 - alpha) * CE + alpha * L_sc``.

    Multiclass (fused kernel): ``L_sc = max(0, p_prev[y] - p[y])``. Binary, p = sigmoid(logit):
    ``L_sc = y max(0, p_prev - p) + (1 - y) max(0, p - p_prev)``.
    """
    if not positions.binary:
        return fused_per_position(logits, positions, "reloop", previous=previous, alpha=alpha)
    label = positions.binary_target
    hard = binary_cross_entropy_from_logits(positions.logits, label)
    gap = previous - torch.sigmoid(positions.logits)
    correction = label * torch.relu(gap) + (1 - label) * torch.relu(-gap)
    return (1 - alpha) * hard + alpha * correction


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
    """ReLoop loss ``(1 - alpha) * CE + alpha * L_sc`` (see ``_per_position_self_correction``).

    ``previous`` holds the previous model's probabilities: ``(..., K)`` for multiclass, or
    ``(...)`` = P(y=1) for binary. They are constants (no gradient). With a probability
    target q (..., K) the hinge is ``sum_k q_k max(0, p_prev_k - p_k)``, the paper's
    ``max(0, p_prev[y] - p[y])`` when q is one-hot.
    """
    check_reduction(reduction)
    alpha = check_alpha(alpha)
    if target is None:
        raise ValueError("target is required for self_correction_loss, got target=None")
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight, binary=binary)
    previous_probs = check_previous(previous, positions)
    per_position = _per_position_self_correction(logits, positions, previous_probs, alpha)
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
