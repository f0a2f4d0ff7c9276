"""Decoupled knowledge distillation source (DKD, Zhao et al., CVPR 2022)."""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

from softlabel.kernels.checks import check_loss_weight
from softlabel.schedules import Constant, Schedule, Step
from softlabel.targets._base import HyperParameter, TargetSource, hyper_parameter


def warmup_schedule(value: float, epochs: int, warmup_epochs: int = 20) -> Schedule:
    """``value * min(epoch / warmup_epochs, 1)`` in epoch e = 1..``epochs`` (mdistiller's DKD
    warm-up) as a step schedule of training progress: epoch e spans progress
    [(e - 1) / epochs, e / epochs), so the milestones are i / epochs, i = 1..min(epochs,
    warmup_epochs) - 1. In a config: ``{_target_: softlabel.targets.decoupled.warmup_schedule,
    value: 8.0, epochs: ${trainer.max_epochs}}``."""
    for name, number in (("epochs", epochs), ("warmup_epochs", warmup_epochs)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"{name} must be an int >= 1, got {number!r}")
    last = min(epochs, warmup_epochs)  # the epoch whose factor is the last one reached
    start, end = value / warmup_epochs, value * last / warmup_epochs
    if last == 1:
        return Constant(start)
    return Step(start, end, tuple(i / epochs for i in range(1, last)))


class DecoupledTeacher(TargetSource):
    """``loss = ce_weight * CE(s, y) + T^2 * (alpha * TCKD + beta * NCKD)``.

    See ``softlabel.functional.decoupled_distillation_loss``. ``alpha``, ``beta`` and
    ``ce_weight`` are weights >= 0 (alpha 1, beta 8 by default, as mdistiller's DKD config).
    mdistiller's warm-up multiplies alpha and beta by min(epoch / 20, 1), epochs counted from 1:
    give ``alpha=warmup_schedule(1.0, epochs=E)`` and ``beta=warmup_schedule(8.0, epochs=E)``.
    ``reference`` is the teacher's logits, of the student's shape (mode ``dkd``).
    """

    name = "dkd"
    reference = "teacher_logits"
    mode = "dkd"
    checks: ClassVar = {
        "alpha": partial(check_loss_weight, "alpha"),
        "beta": partial(check_loss_weight, "beta"),
        "ce_weight": partial(check_loss_weight, "ce_weight"),
    }
    temperature = hyper_parameter()
    alpha = hyper_parameter()
    beta = hyper_parameter()
    ce_weight = hyper_parameter()

    def __init__(
        self,
        temperature: HyperParameter = 4.0,
        alpha: HyperParameter = 1.0,
        beta: HyperParameter = 8.0,
        ce_weight: HyperParameter = 1.0,
    ) -> None:
        super().__init__(temperature=temperature, alpha=alpha, beta=beta, ce_weight=ce_weight)

    def _spec_params(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "tckd_weight": self.alpha,
            "nckd_weight": self.beta,
            "ce_weight": self.ce_weight,
        }
