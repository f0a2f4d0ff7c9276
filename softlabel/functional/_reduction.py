"""The one reduction shared by every loss: weighted mean / sum / none over positions."""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def _reduce(
    per_position: Tensor,
    target_mask: Tensor,
    sample_weight: Tensor | None,
    reduction: str,
) -> Tensor:
    """Reduce an unreduced loss of the targets' shape.

    ``loss_i`` is zeroed where ``target_mask`` is False and multiplied by ``sample_weight``
    (``weight[y_i]``, 0 at ignored positions) when given. ``mean`` is
    ``sum_i w_i loss_i / sum_i w_i`` (``w_i = 1`` without weights); an empty denominator
    gives 0 (never NaN), still attached to the graph.
    """
    loss = torch.where(target_mask, per_position, torch.zeros_like(per_position))
    if sample_weight is not None:
        loss = loss * sample_weight
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if sample_weight is None:
        denominator = target_mask.sum().to(total.dtype)
    else:
        denominator = sample_weight.sum()
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return total / denominator
