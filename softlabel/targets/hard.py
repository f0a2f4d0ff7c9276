"""Hard labels: plain cross-entropy (w = 0)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.functional import cross_entropy_loss
from softlabel.targets._base import TargetSource


class Hard(TargetSource):
    """One-hot targets: ``loss = CE(y, p)``."""

    name = "hard"
    reference = None

    def __init__(self) -> None:
        super().__init__()

    def _loss(self, logits: Tensor, target: Tensor, reference: None, **options: Any) -> Tensor:
        return cross_entropy_loss(logits, target, **options)
