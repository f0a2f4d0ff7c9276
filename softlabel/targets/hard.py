"""Hard labels: plain cross-entropy (w = 0)."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional import cross_entropy_loss
from softlabel.targets._base import TargetSource


class Hard(TargetSource):
    """One-hot targets: ``loss = CE(y, p)``."""

    name = "hard"
    reference = None

    def __init__(self) -> None:
        super().__init__()

    def loss(
        self,
        logits: Tensor,
        target: Tensor,
        reference: Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        weight: Tensor | None = None,
    ) -> Tensor:
        return cross_entropy_loss(
            logits, target, ignore_index=ignore_index, reduction=reduction, weight=weight
        )
