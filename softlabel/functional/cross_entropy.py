"""Hard-label cross-entropy (the ``F.cross_entropy`` equivalent), multiclass and binary."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.modes.smoothing import binary_cross_entropy
from softlabel.kernels.spec import LossSpec

#: ``-(q log sigmoid(x) + (1 - q) log sigmoid(-x))`` (the binary cross-entropy of mode ``hard``)
binary_cross_entropy_from_logits = binary_cross_entropy


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
    return spec_loss(
        logits,
        target,
        LossSpec("hard"),
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        binary=binary,
        name="cross_entropy_loss",
    )
