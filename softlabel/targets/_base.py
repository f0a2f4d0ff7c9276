"""Base class of the target sources: a method's settings as schedules, and what it can do.

A target source is one soft-label method: it holds its hyper-parameters (numbers or
schedules of training progress, checked where they are set) and tells the loss modules and
the apps what they need, so that they dispatch without knowing the method:

- ``mode``: the engine mode computing its loss (``softlabel.kernels.modes``), or None with a
  ``fallback`` reason when the loss is not row-wise (then ``loss`` computes it on
  materialized logits);
- ``spec()``: the engine's ``LossSpec`` at the current progress;
- ``reference``: what it reads besides the target (None, "teacher_logits",
  "previous_probs"); ``accepts(kind)``: which teacher references ("logits", "head",
  "topk");
- ``binary``: whether it has a form for binary tasks (one logit per position);
- ``linear_head``: whether ``LinearSoftTargetLoss`` can run it from a linear head's hidden
  states without logits; ``observes``: whether it reads each training batch's logits
  (``on_train_batch_end``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import Tensor

from softlabel.functional._engine import spec_loss
from softlabel.kernels.checks import check_alpha, check_smoothing, check_temperature
from softlabel.kernels.modes import MODES
from softlabel.kernels.spec import LossSpec
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
    """One soft-label method: its hyper-parameters and capabilities (see the module).

    Hyper-parameters are numbers, schedules or ``{"kind": ...}`` mappings; their values are
    validated when read (and at construction, at progress 0 and 1).
    """

    name: ClassVar[str] = "source"
    reference: ClassVar[str | None] = None
    #: the engine mode of the loss (``softlabel.kernels.modes.MODES``), or None
    mode: ClassVar[str | None] = None
    #: why the method has no engine mode (its loss is not a sum of per-row terms); shown in
    #: the docs and in a one-time warning where a linear-head path falls back to logits
    fallback: ClassVar[str | None] = None
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

    # ----------------------------------------------------------------- capabilities
    @property
    def binary(self) -> bool:
        """Whether the method has a form for binary tasks (one logit per position)."""
        return self.mode is not None and MODES[self.mode].has_binary

    @property
    def linear_head(self) -> bool:
        """Whether ``LinearSoftTargetLoss`` runs this source from hidden states and a head
        (an engine mode, and no statistics of each batch's logits)."""
        return self.mode is not None and not self.observes

    @property
    def observes(self) -> bool:
        """Whether the source reads each training batch's logits (``on_train_batch_end``)."""
        return type(self).on_train_batch_end is not TargetSource.on_train_batch_end

    def accepts(self, kind: str) -> bool:
        """Whether the source reads a teacher reference of ``kind``: "logits" (dense),
        "head" (a live teacher's linear head) or "topk" (a ``TopKLogits``)."""
        if self.mode is None:
            return kind == "logits" and self.reference == "teacher_logits"
        return kind in MODES[self.mode].teacher

    def spec(self) -> LossSpec:
        """The engine's spec at the current progress (sources with a ``mode``)."""
        if self.mode is None:
            raise TypeError(
                f"{type(self).__name__} has no engine mode ({self.fallback}); compute its loss "
                "with loss(logits, target, reference)"
            )
        return LossSpec(self.mode, self._spec_params(), prior=self._spec_prior())

    def _spec_params(self) -> dict[str, Any]:
        """The mode's settings at the current progress (default: the hyper-parameters)."""
        return self.values()

    def _spec_prior(self) -> Tensor | None:
        return None

    # ----------------------------------------------------------------- progress
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

    # ----------------------------------------------------------------- loss
    def loss(
        self,
        logits: Tensor,
        target: Tensor | None,
        reference: Any = None,
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
        self, logits: Tensor, target: Tensor | None, reference: Any, **options: Any
    ) -> Tensor:
        """The engine's loss of ``spec()`` (sources without a mode override this)."""
        return spec_loss(
            logits,
            target,
            self.spec(),
            reference,
            logits_name="student_logits" if self.reference == "teacher_logits" else "logits",
            name=type(self).__name__,
            **options,
        )

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._schedules.items())
        return f"{type(self).__name__}({arguments})"
