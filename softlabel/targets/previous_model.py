"""ReLoop self-correction source: the previous model's probabilities."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.functional import self_correction_loss
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class PreviousModel(TargetSource):
    """``loss = (1 - alpha) * CE + alpha * max(0, p_prev[y] - p[y])`` (binary: see functional).

    ``reference`` is the previous model's probabilities: ``(..., K)``, or ``(...)`` = P(y=1)
    for binary.
    """

    name = "reloop"
    reference = "previous_probs"
    alpha = hyper_parameter()

    def __init__(self, alpha: HyperParameter = 0.5) -> None:
        super().__init__(alpha=alpha)

    def _loss(self, logits: Tensor, target: Tensor, reference: Tensor, **options: Any) -> Tensor:
        return self_correction_loss(logits, target, reference, self.alpha, **options)
