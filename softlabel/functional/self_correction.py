"""ReLoop self-correction: hard CE plus a hinge that keeps the true-class probability from
dropping below the previous model's."""

from __future__ import annotations

import torch
import torch.nn.functional as tf
from torch import Tensor

from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import check_alpha, check_previous, check_reduction, prepare
from softlabel.functional.cross_entropy import binary_cross_entropy_from_logits


def _per_position_self_correction(
    logits: Tensor, index: Tensor, previous: Tensor, alpha: float, binary: bool
) -> Tensor:
    """Unreduced ``(1 - alpha) * CE + alpha * L_sc``.

    Multiclass: ``L_sc = max(0, p_prev[y] - p[y])``. Binary, p = sigmoid(logit):
    ``L_sc = y max(0, p_prev - p) + (1 - y) max(0, p - p_prev)``.
    """
    if binary:
        label = index.to(logits.dtype)
        hard = binary_cross_entropy_from_logits(logits, label)
        gap = previous - torch.sigmoid(logits)
        correction = label * torch.relu(gap) + (1 - label) * torch.relu(-gap)
    else:
        log_prob_true = tf.log_softmax(logits, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        hard = -log_prob_true
        previous_true = previous.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        correction = torch.relu(previous_true - log_prob_true.exp())
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
) -> Tensor:
    """ReLoop loss ``(1 - alpha) * CE + alpha * L_sc`` (see ``_per_position_self_correction``).

    ``previous`` holds the previous model's probabilities: ``(..., K)`` for multiclass, or
    ``(...)`` = P(y=1) for binary. They are constants (no gradient).
    """
    check_reduction(reduction)
    alpha = check_alpha(alpha)
    if target is None:
        raise ValueError("target is required for self_correction_loss, got target=None")
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight)
    previous_probs = check_previous(previous, positions)
    per_position = _per_position_self_correction(
        positions.logits, positions.index, previous_probs, alpha, positions.binary
    )
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
