"""Knowledge distillation source: the teacher's temperature-softened probabilities."""

from __future__ import annotations

from torch import Tensor

from softlabel.functional import distillation_loss
from softlabel.targets._base import HyperParameter, TargetSource


class Teacher(TargetSource):
    """``loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    ``reference`` is the teacher's logits, of the student's shape.
    """

    name = "kd"
    reference = "teacher_logits"

    def __init__(self, temperature: HyperParameter = 4.0, alpha: HyperParameter = 0.9) -> None:
        super().__init__(temperature=temperature, alpha=alpha)

    @property
    def temperature(self) -> float:
        return self._value("temperature")

    @property
    def alpha(self) -> float:
        return self._value("alpha")

    def loss(
        self,
        logits: Tensor,
        target: Tensor | None,
        reference: Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        weight: Tensor | None = None,
    ) -> Tensor:
        return distillation_loss(
            logits,
            self._require_reference(reference),
            target,
            self.temperature,
            self.alpha,
            ignore_index=ignore_index,
            reduction=reduction,
            weight=weight,
        )
