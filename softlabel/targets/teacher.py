"""Knowledge distillation source: the teacher's temperature-softened probabilities."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from softlabel.functional import distillation_loss
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


class Teacher(TargetSource):
    """``loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    ``reference`` is the teacher's logits, of the student's shape.
    """

    name = "kd"
    reference = "teacher_logits"
    temperature = hyper_parameter()
    alpha = hyper_parameter()

    def __init__(self, temperature: HyperParameter = 4.0, alpha: HyperParameter = 0.9) -> None:
        super().__init__(temperature=temperature, alpha=alpha)

    def _loss(
        self, logits: Tensor, target: Tensor | None, reference: Tensor, **options: Any
    ) -> Tensor:
        return distillation_loss(logits, reference, target, self.temperature, self.alpha, **options)
