"""Base class of the target sources: hyper-parameters as schedules of training progress."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import Tensor

from softlabel.functional._validation import check_alpha, check_smoothing, check_temperature
from softlabel.schedules import Schedule, as_schedule, check_progress

HyperParameter = float | Schedule | Mapping[str, Any]

_CHECKS: dict[str, Callable[[Any], float]] = {
    "smoothing": check_smoothing,
    "alpha": check_alpha,
    "temperature": check_temperature,
}


class hyper_parameter:  # noqa: N801 (used like @property)
    """Class attribute reading a hyper-parameter's value at the current progress."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, source: TargetSource | None, owner: type | None = None) -> Any:
        return self if source is None else source._value(self.name)


class TargetSource:
    """Defines ``w`` and ``soft_term`` in ``loss = (1 - w) * hard_CE + w * soft_term``.

    Hyper-parameters are numbers, schedules or ``{"kind": ...}`` mappings; their values are
    validated when read (and at construction, at progress 0 and 1).
    """

    name: ClassVar[str] = "source"
    reference: ClassVar[str | None] = None
    #: Checks of this source's own hyper-parameters (name -> check returning the float),
    #: consulted before the shared ones (smoothing, alpha, temperature).
    checks: ClassVar[Mapping[str, Callable[[Any], float]]] = {}

    def __init__(self, **hyper_parameters: HyperParameter) -> None:
        self._schedules: dict[str, Schedule] = {}
        for key, value in hyper_parameters.items():
            schedule = as_schedule(value, name=key)
            for progress in (0.0, 1.0):
                self._checked(key, schedule, progress)
            self._schedules[key] = schedule
        self._progress = 0.0

    @classmethod
    def _checked(cls, key: str, schedule: Schedule, progress: float) -> float:
        value = schedule(progress)
        check = cls.checks.get(key) or _CHECKS[key]
        try:
            return check(value)
        except ValueError as error:
            raise ValueError(f"{error} (from {schedule!r} at progress {progress})") from None

    def _value(self, key: str) -> float:
        return self._checked(key, self._schedules[key], self._progress)

    @property
    def progress(self) -> float:
        """Training progress in [0, 1] last given to ``set_progress``."""
        return self._progress

    @property
    def schedules(self) -> dict[str, Schedule]:
        return dict(self._schedules)

    def set_progress(self, progress: float) -> None:
        """Advance every schedule to ``progress`` in [0, 1]."""
        self._progress = check_progress(progress)

    def values(self) -> dict[str, float]:
        """The hyper-parameters in force, e.g. ``{"smoothing": 0.08}``."""
        return {key: self._value(key) for key in self._schedules}

    def on_train_batch_end(self, logits: Tensor, target: Tensor) -> None:
        """Hook called after each training step with the batch's detached logits and target
        (statistics a source keeps across steps); does nothing by default."""

    def on_train_epoch_end(self, reduce_sum: Callable[[Tensor], Tensor] | None = None) -> None:
        """Hook called once per training epoch, on every rank, after its last batch.
        ``reduce_sum(t)`` returns ``t`` summed over the ranks (None: one process, or
        ``torch.distributed`` when initialised). Does nothing by default."""

    def loss(
        self,
        logits: Tensor,
        target: Tensor | None,
        reference: Tensor | None = None,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        weight: Tensor | None = None,
        binary: bool | None = None,
    ) -> Tensor:
        """The loss of ``logits`` against ``target`` (and ``reference`` when the source needs
        one: see ``self.reference``), with the functional form's options."""
        if self.reference is not None and reference is None:
            raise ValueError(
                f"{type(self).__name__} needs reference={self.reference!r}, got reference=None"
            )
        return self._loss(
            logits,
            target,
            reference,
            ignore_index=ignore_index,
            reduction=reduction,
            weight=weight,
            binary=binary,
        )

    def _loss(
        self, logits: Tensor, target: Tensor | None, reference: Tensor | None, **options: Any
    ) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._schedules.items())
        return f"{type(self).__name__}({arguments})"
