"""ReLoop self-correction source: the previous model's probabilities."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional import self_correction_loss
from softlabel.targets._base import HyperParameter, TargetSource


class PreviousModel(TargetSource):
    """``loss = (1 - alpha) * CE + alpha * max(0, p_prev[y] - p[y])`` (binary: see functional).

    ``reference`` is the previous model's probabilities: ``(..., K)``, or ``(...)`` = P(y=1)
    for binary.
    """

    name = "reloop"
    reference = "previous_probs"

    def __init__(self, alpha: HyperParameter = 0.5) -> None:
        super().__init__(alpha=alpha)

    @property
    def alpha(self) -> float:
        return self._value("alpha")

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
        return self_correction_loss(
            logits,
            target,
            self._require_reference(reference),
            self.alpha,
            ignore_index=ignore_index,
            reduction=reduction,
            weight=weight,
        )
