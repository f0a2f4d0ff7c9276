"""Hard-label cross-entropy (the ``F.cross_entropy`` equivalent), multiclass and binary."""

from __future__ import annotations

import torch.nn.functional as tf
from torch import Tensor

from softlabel.functional._fused import fused_per_position
from softlabel.functional._reduction import _reduce
from softlabel.functional._validation import Positions, check_reduction, prepare


def binary_cross_entropy_from_logits(logits: Tensor, soft_target: Tensor) -> Tensor:
    """``-(q log sigmoid(x) + (1 - q) log sigmoid(-x))``, stable for large ``|x|``."""
    return -(soft_target * tf.logsigmoid(logits) + (1 - soft_target) * tf.logsigmoid(-logits))


def _per_position_cross_entropy(logits: Tensor, positions: Positions) -> Tensor:
    """Unreduced hard cross-entropy: ``logsumexp(s) - s_y`` (fused kernel, multiclass) or
    binary BCE-with-logits."""
    if positions.binary:
        return binary_cross_entropy_from_logits(positions.logits, positions.binary_target)
    return fused_per_position(logits, positions, "hard")


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    weight: Tensor | None = None,
    binary: bool | None = None,
) -> Tensor:
    """Cross-entropy.

    Multiclass: logits ``(..., K)``, integer target ``(...)``, ``loss_i = -log softmax(s_i)[y_i]``,
    or probability target ``(..., K)``, ``loss_i = -sum_k q_ik log softmax(s_i)_k`` (as
    ``F.cross_entropy``). Binary (``binary=True``, or 1-D logits; target of the logits' shape):
    ``loss_i = BCE-with-logits(s_i, y_i)``. ``weight[y_i]`` multiplies sample i's loss; ``mean``
    divides by the sum of those weights.
    """
    check_reduction(reduction)
    positions = prepare(logits, target, ignore_index=ignore_index, weight=weight, binary=binary)
    per_position = _per_position_cross_entropy(logits, positions)
    return _reduce(per_position, positions.mask, positions.sample_weight, reduction)
